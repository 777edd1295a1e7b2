"""Connections of the PostgreSQL transport (see :mod:`asynctask.transports.pgsql`).

The statements of ``pgsql_queries.sql`` (:class:`Statement`: plain text, no PREPARE); :class:`Link`, the
statement connection a process shares per database and schema (reconnect with backoff, schema
creation and migration from ``pgsql_schema_<n>.sql``); :class:`Listener`, the listening connection
of a blocked consumer.  Forked children never use their parent's connections (:data:`fork_generation`).
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.extensions

from asynctask.errors import TransportError, TransportUnavailableError

# the transport's logger: records keep the name they had before this module was split off
logger = logging.getLogger("asynctask.transports.pgsql")

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor
LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: The schema version this module writes; ``pgsql_schema_<n>.sql`` for every n up to it must exist.
SCHEMA_VERSION = 4
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 5.0
_SAFE_TEXT_RE = re.compile(r"[A-Za-z0-9_.:,{}-]*\Z")
_STATEMENT_RE = re.compile(r"^-- name: (\w+) \(([^)]*)\)\n", re.MULTILINE)
fork_generation = 0  # raised in every forked child: a connection of an older generation is the parent's


def _after_fork() -> None:
    global fork_generation
    fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)


_PARAMETER_RE = re.compile(r"\$(\d+)")


def _literal(value: object) -> str | None:
    """``value`` as SQL text when that is cheap and safe (numbers, NULL, plain ASCII words), else None.

    Adapting numbers through psycopg2 costs microseconds each, a fair part of a one-row submit."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # always finite here: arguments are validated first
    if value is None:
        return "NULL"
    return f"'{value}'" if isinstance(value, str) and _SAFE_TEXT_RE.match(value) else None


class Statement:
    """One statement of ``pgsql_queries.sql``, sent as plain text: each ``$n`` becomes the n-th
    argument cast to its declared type, inlined when cheap and safe (:func:`_literal`), else a
    ``%s`` parameter psycopg2 quotes.  Nothing is PREPAREd: any server connection runs it."""

    __slots__ = ("casts", "copy", "name", "pieces", "positions", "text")

    def __init__(self, name: str, types: str, text: str) -> None:
        self.name, self.text, self.copy = name, text, types == "copy"
        if "%" in text:
            raise ValueError(f"statement {name}: no percent sign allowed (psycopg2 parameters)")
        declared = [t.strip() for t in types.split(",")] if types.strip() and not self.copy else []
        parts = _PARAMETER_RE.split(text)
        self.pieces = parts[0::2]
        self.positions = [int(n) - 1 for n in parts[1::2]]
        self.casts = [f")::{declared[n]}" for n in self.positions]

    def render(self, args: tuple[Any, ...]) -> tuple[str, list[Any] | None]:
        """The SQL text for ``args`` and its psycopg2 parameters (None: none)."""
        if not self.positions:
            return self.text, None
        out, params = [self.pieces[0]], []
        for n, cast, piece in zip(self.positions, self.casts, self.pieces[1:], strict=True):
            value = args[n]
            literal = _literal(value)
            if literal is None:
                params.append(value)
                literal = "%s"
            out += ("(", literal, cast, piece)
        return "".join(out), params or None


def _sql_file(name: str, schema: str) -> str:
    text = resources.files(__package__).joinpath(name).read_text("utf-8")
    return text.replace("@schema@", f'"{schema}"').replace("@schema_name@", schema)


def load_statements(schema: str) -> dict[str, Statement]:
    """name -> :class:`Statement`, from pgsql_queries.sql."""
    parts = _STATEMENT_RE.split(_sql_file("pgsql_queries.sql", schema))
    statements = {}
    for name, types, raw in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        text = re.sub(r"^--.*$", "", raw, flags=re.MULTILINE).strip().rstrip(";")
        statements[name] = Statement(name, types, text)
    return statements


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Link:
    """The statement connection of one process to one database and schema, shared by every
    transport instance opened on them (a lock serialises its users)."""

    def __init__(self, dsn: dict[str, Any], schema: str, where: str) -> None:
        self.dsn, self.schema, self.where = dsn, schema, where
        self.generation = fork_generation
        self.lock = threading.RLock()
        self.conn: Connection | None = None
        self.cursor: Cursor | None = None
        self.registered: set[str] = set()  # queues known to be in the queues table
        self.retry_at = self.retry_delay = 0.0
        self.lost = False
        self.users = 0

    def unavailable(self, exc: BaseException) -> TransportUnavailableError:
        return TransportUnavailableError(f"{self.where} cannot be reached: {_one_line(exc)}")

    def error(self, exc: BaseException) -> TransportError:
        return TransportError(f"{self.where}: {_one_line(exc)}")

    def connect(self) -> Connection:
        """A new autocommit connection, with backoff between failed attempts (caller holds lock)."""
        if (wait := self.retry_at - time.monotonic()) > 0:
            time.sleep(wait)
        try:
            conn: Connection = psycopg2.connect(**{"application_name": "asynctask", **self.dsn})
            conn.autocommit = True
            self._ensure_schema(conn)
        except psycopg2.Error as exc:
            self.retry_delay = min(max(self.retry_delay * 2, _RETRY_MIN_S), _RETRY_MAX_S)
            self.retry_at = time.monotonic() + self.retry_delay
            logger.debug("cannot connect to %s: %s", self.where, _one_line(exc))
            raise (self.unavailable(exc) if isinstance(exc, LOST) else self.error(exc)) from None
        if self.lost:
            logger.info("reconnected to %s", self.where)
        self.lost, self.retry_delay, self.retry_at = False, 0.0, 0.0
        return conn

    def _ensure_schema(self, conn: Connection) -> None:
        """Create or migrate the schema (in one transaction, under an advisory lock) unless current."""
        with conn.cursor() as cur:
            current = self._version(cur)
            if current > SCHEMA_VERSION:
                raise TransportError(
                    f"{self.where}: schema {self.schema!r} has version {current}, newer than"
                    f" this asynctask understands ({SCHEMA_VERSION}); upgrade asynctask"
                )
            if current == SCHEMA_VERSION:
                return
            conn.autocommit = False
            with conn:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"asynctask schema {self.schema}",))
                for version in range(self._version(cur) + 1, SCHEMA_VERSION + 1):
                    logger.info("creating schema %s version %d in %s", self.schema, version, self.where)
                    cur.execute(_sql_file(f"pgsql_schema_{version}.sql", self.schema))
                    cur.execute(
                        f'INSERT INTO "{self.schema}".schema_version (version) VALUES (%s) ON CONFLICT DO NOTHING',
                        (version,),
                    )
            conn.autocommit = True

    def _version(self, cur: Cursor) -> int:
        """The schema's version, 0 when absent.  Reads pg_tables (a fresh MVCC snapshot, unlike
        to_regclass's catalog cache, which may not yet see a schema another session just made)."""
        cur.execute(
            "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version')",
            (self.schema,),
        )
        if not (row := cur.fetchone()) or not row[0]:
            return 0
        cur.execute(f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version')
        return int(row[0]) if (row := cur.fetchone()) else 0

    def drop(self, exc: BaseException | None) -> None:
        """Forget the connection (lost: ``exc`` says why; None: closed on purpose)."""
        if exc is not None and not self.lost:
            logger.warning("lost the connection to %s (%s); reconnecting with backoff", self.where, _one_line(exc))
            self.lost = True
        if self.conn is not None and self.generation == fork_generation:
            self.conn.close()
        self.conn = self.cursor = None


def pooler_version(dsn: dict[str, Any], host: str, port: int | str) -> str:
    """PgBouncer's version from its admin console (database ``pgbouncer`` at ``host``:``port``, the
    one a host list led to; it answers PgBouncer's admin and stats users), else ``unknown pooler``."""
    given = {key: value for key, value in dsn.items() if key not in ("target_session_attrs", "load_balance_hosts")}
    try:
        conn = psycopg2.connect(**{**given, "host": host, "port": port, "dbname": "pgbouncer", "connect_timeout": 2})
    except psycopg2.Error:
        return "unknown pooler"
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW VERSION")
            row = cur.fetchone()
        return str(row[0]) if row else "unknown pooler"
    except psycopg2.Error:
        return "unknown pooler"
    finally:
        conn.close()


_links: dict[tuple[Any, ...], Link] = {}
_links_lock = threading.Lock()


def take_link(dsn: dict[str, Any], schema: str, where: str) -> Link:
    key = (fork_generation, schema, *sorted(dsn.items()))
    with _links_lock:
        link = _links.get(key)
        if link is None:
            link = _links[key] = Link(dsn, schema, where)
        link.users += 1
        return link


def release_link(link: Link) -> None:
    with _links_lock:
        link.users -= 1
        if link.users > 0:
            return
        key = (link.generation, link.schema, *sorted(link.dsn.items()))
        if _links.get(key) is link:
            del _links[key]
    with link.lock:
        link.drop(None)


class Listener:
    """The listening connection of one transport instance, opened when first needed: LISTEN, the
    ``waiters`` rows of the queues it waits on, waiting for a notification.  It connects through
    ``listen_link`` (the ``listen_url`` option) when given, else through the transport's link.
    ``lock`` guards the connection and the sets; every method but :meth:`close` expects it held.

    ``notify_works`` is the result of the transport's check that a NOTIFY reaches this listener
    (None: not checked yet); it outlives reconnections."""

    def __init__(self, statements: dict[str, Statement], link: Link, listen_link: Link | None = None) -> None:
        self.lock = threading.Lock()
        self.conn: Connection | None = None
        self.generation = fork_generation
        self.listening: set[str] = set()
        self.waiting: set[str] = set()
        self.notify_works: bool | None = None
        #: The transport's current link (it sets a new one here when it takes one): connects and
        #: words errors, unless ``listen_link`` is given.
        self.link = link
        self.listen_link = listen_link
        self._statements = statements

    @property
    def connector(self) -> Link:
        return self.listen_link or self.link

    def connection(self) -> Connection:
        """The listening connection, opened when missing (a new one listens to nothing yet and has
        no ``waiters`` rows: callers LISTEN and register again)."""
        if self.conn is None or self.conn.closed or self.generation != fork_generation:
            link = self.connector
            with link.lock:
                self.conn, self.generation = link.connect(), fork_generation
            self.listening.clear()
            self.waiting.clear()
            self.run("forget_waiters")
        return self.conn

    def run(self, name: str, *args: Any) -> None:
        """Run statement ``name`` (``listen``/``unlisten``: LISTEN/UNLISTEN) on the listening connection."""
        try:
            with self.connection().cursor() as cur:
                if name in ("listen", "unlisten"):
                    cur.execute(f'{name.upper()} "{args[0]}"')
                    return
                cur.execute(*self._statements[name].render(args))
        except LOST as exc:
            self.conn = None
            raise self.connector.unavailable(exc) from None
        except psycopg2.Error as exc:
            raise self.connector.error(exc) from None

    def listen(self, channel: str) -> None:
        """LISTEN on ``channel`` (once per connection); drop notifications that came before."""
        conn = self.connection()  # reopened when lost: then it listens to nothing yet
        if channel not in self.listening:
            self.run("listen", channel)
            self.listening.add(channel)
        try:
            conn.poll()
        except psycopg2.Error as exc:
            self.conn = None
            raise self.connector.unavailable(exc) from None
        conn.notifies.clear()

    def unlisten(self, channel: str) -> None:
        if channel in self.listening:
            self.listening.discard(channel)
            self.run("unlisten", channel)

    def wait(self, channel: str, timeout_s: float) -> bool:
        """Block until a notification on ``channel`` (True) or ``timeout_s`` (False)."""
        conn = self.conn
        assert conn is not None
        deadline = time.monotonic() + timeout_s
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if select.select([conn], [], [], remaining)[0]:
                    conn.poll()
                    mine = any(note.channel == channel for note in conn.notifies)
                    conn.notifies.clear()
                    if mine:
                        return True
        except (*LOST, OSError, ValueError):
            self.conn = None  # reopened by the next listen; the fetch reports a lost server
        return False

    def close_connection(self) -> None:
        """Close the listening connection (a forked child's copy is only forgotten); lock held."""
        if self.conn is not None and self.generation == fork_generation:
            self.conn.close()
        self.conn = None
        self.listening.clear()
        self.waiting.clear()

    def close(self) -> None:
        with self.lock:
            self.close_connection()
