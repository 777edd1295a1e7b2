"""Connections of the PostgreSQL transport (see :mod:`asynctask.transports.pgsql`).

URL parsing (:func:`parse_pgsql_url`); the statements of ``pgsql_queries.sql``; :class:`Link`, the
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

from asynctask.errors import TransportError, TransportUnavailableError, TransportURLError
from asynctask.transports import base

# the transport's logger: records keep the name they had before this module was split off
logger = logging.getLogger("asynctask.transports.pgsql")

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor
LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: The schema version this module writes; ``pgsql_schema_<n>.sql`` for every n up to it must exist.
SCHEMA_VERSION = 3
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 5.0
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")
_SAFE_TEXT_RE = re.compile(r"[A-Za-z0-9_.:,{}-]*\Z")
_STATEMENT_RE = re.compile(r"^-- name: (\w+) \(([^)]*)\)\n", re.MULTILINE)
fork_generation = 0  # raised in every forked child: a connection of an older generation is the parent's


def _after_fork() -> None:
    global fork_generation
    fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)


def _option_schema(name: str, value: str) -> str:
    if not _SCHEMA_RE.match(value):
        raise TransportURLError(f"option {name}={value!r}: 1 to 40 lowercase letters, digits and _, no digit first")
    return value


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


def execute_text(execute: str, args: tuple[Any, ...]) -> tuple[str, list[Any] | None]:
    """``EXECUTE name (...)`` with cheap arguments inlined; the others as %s parameters."""
    if not args:
        return execute, None
    literals = [_literal(arg) for arg in args]
    params = [arg for arg, literal in zip(args, literals, strict=True) if literal is None]
    return f"{execute} ({', '.join('%s' if lit is None else lit for lit in literals)})", params or None


def _sql_file(name: str, schema: str) -> str:
    text = resources.files(__package__).joinpath(name).read_text("utf-8")
    return text.replace("@schema@", f'"{schema}"').replace("@schema_name@", schema)


def load_statements(schema: str) -> dict[str, tuple[str, str]]:
    """name -> (PREPARE statement, "EXECUTE name"), from pgsql_queries.sql; COPY is run as it is."""
    parts = _STATEMENT_RE.split(_sql_file("pgsql_queries.sql", schema))
    statements = {}
    for name, types, raw in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        text = re.sub(r"^--.*$", "", raw, flags=re.MULTILINE).strip().rstrip(";")
        signature = f"asynctask_{name} ({types})" if types.strip() else f"asynctask_{name}"
        prepared = (f"PREPARE {signature} AS {text}", f"EXECUTE asynctask_{name}")
        statements[name] = ("", text) if types == "copy" else prepared
    return statements


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def parse_pgsql_url(url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Split a pgsql URL into psycopg2.connect keywords, its options and a description naming host,
    port and database (password masked) for messages."""
    parsed = base.parse_url(url)
    options = base.take_options(
        parsed,
        {
            "schema": _option_schema,
            "lease_s": base.option_positive_float,
            "sslmode": lambda _, v: v,
            "connect_timeout": base.option_positive_float,
        },
    )
    pgsql_colon = parsed.host is None and not url.lower().startswith(f"{parsed.scheme}://")
    dbname = parsed.path if pgsql_colon else parsed.path.lstrip("/")
    if not dbname:
        raise TransportURLError(f"transport URL {parsed.masked!r} names no database")
    dsn: dict[str, Any] = {"dbname": dbname, "connect_timeout": max(1, round(options.get("connect_timeout", 5)))}
    given = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "sslmode": options.get("sslmode"),
    }
    dsn.update({key: value for key, value in given.items() if value is not None})
    host = parsed.host or os.environ.get("PGHOST") or "local socket"
    port = parsed.port or os.environ.get("PGPORT") or 5432
    return dsn, options, f"PostgreSQL at {host}:{port}, database {dbname!r} ({parsed.masked})"


class Link:
    """The statement connection of one process to one database and schema, shared by every
    transport instance opened on them (a lock serialises its users)."""

    def __init__(self, dsn: dict[str, Any], schema: str, where: str) -> None:
        self.dsn, self.schema, self.where = dsn, schema, where
        self.generation = fork_generation
        self.lock = threading.RLock()
        self.conn: Connection | None = None
        self.cursor: Cursor | None = None
        self.prepared: set[str] = set()
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
            conn: Connection = psycopg2.connect(application_name="asynctask", **self.dsn)
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
        self.prepared.clear()


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
    ``waiters`` rows of the queues it waits on, waiting for a notification.  ``lock`` guards the
    connection and the sets; every method but :meth:`close` expects it held."""

    def __init__(self, statements: dict[str, tuple[str, str]], link: Link) -> None:
        self.lock = threading.Lock()
        self.conn: Connection | None = None
        self.generation = fork_generation
        self.listening: set[str] = set()
        self.waiting: set[str] = set()
        self.prepared: set[str] = set()
        #: The transport's current link (it sets a new one here when it takes one): connects and
        #: words errors.
        self.link = link
        self._statements = statements

    def connection(self) -> Connection:
        """The listening connection, opened when missing."""
        if self.conn is None or self.conn.closed or self.generation != fork_generation:
            link = self.link
            with link.lock:
                self.conn, self.generation = link.connect(), fork_generation
            self.listening.clear()
            self.waiting.clear()
            self.prepared.clear()
            self.run("forget_waiters")
        return self.conn

    def run(self, name: str, *args: Any) -> None:
        """Run statement ``name`` (``listen``: LISTEN) on the listening connection."""
        try:
            with self.connection().cursor() as cur:
                if name == "listen":
                    cur.execute(f'LISTEN "{args[0]}"')
                    return
                if name not in self.prepared:
                    cur.execute(self._statements[name][0])
                    self.prepared.add(name)
                cur.execute(*execute_text(self._statements[name][1], args))
        except LOST as exc:
            self.conn = None
            raise self.link.unavailable(exc) from None
        except psycopg2.Error as exc:
            raise self.link.error(exc) from None

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
            raise self.link.unavailable(exc) from None
        conn.notifies.clear()

    def wait(self, channel: str, timeout_s: float) -> None:
        """Block until a notification on ``channel`` or ``timeout_s``."""
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
                        return
        except (*LOST, OSError, ValueError):
            self.conn = None  # reopened by the next listen; the fetch reports a lost server

    def close(self) -> None:
        """Close the listening connection (a forked child's copy is only forgotten)."""
        with self.lock:
            if self.conn is not None and self.generation == fork_generation:
                self.conn.close()
            self.conn = None
            self.listening.clear()
            self.waiting.clear()
