"""The PostgreSQL transport (psycopg2).

URLs: ``pgsql:dbname`` (libpq defaults and PGHOST, PGPORT, PGUSER... for the rest),
``pgsql://user:password@host:port/dbname``, and the same with ``postgresql://`` or ``postgres://``.
Options: ``schema`` (default ``asynctask``; 1-40 lowercase letters, digits, ``_``), ``lease_s`` (the
default lease), ``sslmode`` and ``connect_timeout`` (for libpq; default 5 s).

Storage: one schema, created on first use (in one transaction under ``pg_advisory_xact_lock``, so
processes starting together do not race) from ``pgsql_schema_<n>.sql`` beside this module:

* ``schema_version (version, applied_at)``: a row per applied version; later releases migrate forward
  by applying the missing ``pgsql_schema_<n>.sql`` files in order;
* ``queues (name)``: every queue that holds or held a task;
* ``tasks (rowid, id, receipt, visible_at, enqueued_at, attempts, priority, queue, body)``, index
  ``tasks_fetch_order (queue, priority DESC, visible_at, rowid)`` = the fetch's ORDER BY.  Ready:
  ``visible_at <= now()``; in flight: a ``receipt`` and a future ``visible_at`` (the lease end);
  delayed: no receipt, future ``visible_at``.  An expired lease is ready again with no write at all;
* ``dead (id, n, dead_at, attempts, priority, queue, reason, body)``, index ``dead_queue_order (queue, n)``;
* ``waiters (queue, pid, since)``, unlogged: consumers blocked in ``get_task``;
* ``claims (key, expires_at)``: ``claim_once`` (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``).

No functions or triggers.  The statements (``pgsql_queries.sql``) are PREPAREd once per connection.
A fetch is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)`` setting the lease and
a new receipt (``<rowid>.<random token>``); ack, nack, extend and dead check the receipt, so they
never touch a later delivery; ``ack_tasks`` is one ``DELETE``.  ``submit_tasks`` uses COPY.

Waiting: a blocked ``get_task`` registers in ``waiters`` and LISTENs (on a second connection, opened
when first needed) on ``asynctask_<md5(schema.queue)>``.  Submit, nack and replay ``pg_notify`` that
channel in the same statement, only when the queue has a waiter, so busy systems pay nothing for it.
The waiter wakes on a notification, at the next delayed or lease due time, or after a 2 s safety poll.

Connections: one persistent autocommit statement connection per process and database+schema,
shared by every instance opened on them (behind a lock, so threads can share it too; durable server
settings untouched), plus a listening one per blocked consumer instance.  A connection lost (server
restart) is reopened at once and the statement retried once; then calls raise
:class:`~asynctask.errors.TransportUnavailableError` (one line naming host, port and database, password
masked), reconnecting on the next call with backoff from 0.1 s to 5 s.  The loss is logged once (warning),
the recovery once (info).  A submit retried over a lost connection may, rarely, store a task twice
(delivery is at least once anyway).  Forked children never use their parent's connections.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import select
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.extensions

from asynctask import task as _task
from asynctask.errors import TaskDecodeError, TransportError, TransportUnavailableError, TransportURLError
from asynctask.task import DeadTask, QueueStats, Task
from asynctask.transports import base

logger = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor
_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: The schema version this module writes; ``pgsql_schema_<n>.sql`` for every n up to it must exist.
SCHEMA_VERSION = 1
#: Longest a blocked fetch sleeps without looking at the table again.
SAFETY_POLL_S = 2.0
#: The first wait after registering as a waiter is short: a submit whose statement began just before
#: the registration did not see it and sent no notification.
_FIRST_WAIT_S = 0.05
_RETRY_MIN_S, _RETRY_MAX_S = 0.1, 5.0
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")
_HEX_ID_RE = re.compile(r"[0-9a-f]{32}\Z")
_SAFE_TEXT_RE = re.compile(r"[A-Za-z0-9_.:,{}-]*\Z")
_STATEMENT_RE = re.compile(r"^-- name: (\w+) \(([^)]*)\)\n", re.MULTILINE)
_fork_generation = 0  # raised in every forked child: a connection of an older generation is the parent's


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


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


def _execute_text(execute: str, args: tuple[Any, ...]) -> tuple[str, list[Any] | None]:
    """``EXECUTE name (...)`` with cheap arguments inlined; the others as %s parameters."""
    if not args:
        return execute, None
    literals = [_literal(arg) for arg in args]
    params = [arg for arg, literal in zip(args, literals, strict=True) if literal is None]
    return f"{execute} ({', '.join('%s' if lit is None else lit for lit in literals)})", params or None


def _copy_escape(text: str) -> str:
    """``text`` as a field of COPY's text format."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text or "\r" in text or "\t" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text


def _sql_file(name: str, schema: str) -> str:
    text = resources.files(__package__).joinpath(name).read_text("utf-8")
    return text.replace("@schema@", f'"{schema}"').replace("@schema_name@", schema)


def _load_statements(schema: str) -> dict[str, tuple[str, str]]:
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
    options = base.take_options(parsed, {"schema": _option_schema, "lease_s": base.option_positive_float,
                                         "sslmode": lambda _, v: v, "connect_timeout": base.option_positive_float})
    pgsql_colon = parsed.host is None and not url.lower().startswith(f"{parsed.scheme}://")
    dbname = parsed.path if pgsql_colon else parsed.path.lstrip("/")
    if not dbname:
        raise TransportURLError(f"transport URL {parsed.masked!r} names no database")
    dsn: dict[str, Any] = {"dbname": dbname, "connect_timeout": max(1, round(options.get("connect_timeout", 5)))}
    given = {"host": parsed.host, "port": parsed.port, "user": parsed.username, "password": parsed.password,
             "sslmode": options.get("sslmode")}
    dsn.update({key: value for key, value in given.items() if value is not None})
    host = parsed.host or os.environ.get("PGHOST") or "local socket"
    port = parsed.port or os.environ.get("PGPORT") or 5432
    return dsn, options, f"PostgreSQL at {host}:{port}, database {dbname!r} ({parsed.masked})"


class _Link:
    """The statement connection of one process to one database and schema, shared by every
    transport instance opened on them (a lock serialises its users)."""

    def __init__(self, dsn: dict[str, Any], schema: str, where: str) -> None:
        self.dsn, self.schema, self.where = dsn, schema, where
        self.generation = _fork_generation
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
            raise (self.unavailable(exc) if isinstance(exc, _LOST) else self.error(exc)) from None
        if self.lost:
            logger.info("reconnected to %s", self.where)
        self.lost, self.retry_delay, self.retry_at = False, 0.0, 0.0
        return conn

    def _ensure_schema(self, conn: Connection) -> None:
        """Create or migrate the schema (in one transaction, under an advisory lock) unless current."""
        with conn.cursor() as cur:
            current = self._version(cur)
            if current > SCHEMA_VERSION:
                raise TransportError(f"{self.where}: schema {self.schema!r} has version {current}, newer than"
                                     f" this asynctask understands ({SCHEMA_VERSION}); upgrade asynctask")
            if current == SCHEMA_VERSION:
                return
            conn.autocommit = False
            with conn:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"asynctask schema {self.schema}",))
                for version in range(self._version(cur) + 1, SCHEMA_VERSION + 1):
                    logger.info("creating schema %s version %d in %s", self.schema, version, self.where)
                    cur.execute(_sql_file(f"pgsql_schema_{version}.sql", self.schema))
                    cur.execute(f'INSERT INTO "{self.schema}".schema_version (version) VALUES (%s)'
                                " ON CONFLICT DO NOTHING", (version,))
            conn.autocommit = True

    def _version(self, cur: Cursor) -> int:
        """The schema's version, 0 when absent.  Reads pg_tables (a fresh MVCC snapshot, unlike
        to_regclass's catalog cache, which may not yet see a schema another session just made)."""
        cur.execute("SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version')",
                    (self.schema,))
        if not (row := cur.fetchone()) or not row[0]:
            return 0
        cur.execute(f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version')
        return int(row[0]) if (row := cur.fetchone()) else 0

    def drop(self, exc: BaseException | None) -> None:
        """Forget the connection (lost: ``exc`` says why; None: closed on purpose)."""
        if exc is not None and not self.lost:
            logger.warning("lost the connection to %s (%s); reconnecting with backoff", self.where, _one_line(exc))
            self.lost = True
        if self.conn is not None and self.generation == _fork_generation:
            self.conn.close()
        self.conn = self.cursor = None
        self.prepared.clear()


_links: dict[tuple[Any, ...], _Link] = {}
_links_lock = threading.Lock()


def _take_link(dsn: dict[str, Any], schema: str, where: str) -> _Link:
    key = (_fork_generation, schema, *sorted(dsn.items()))
    with _links_lock:
        link = _links.get(key)
        if link is None:
            link = _links[key] = _Link(dsn, schema, where)
        link.users += 1
        return link


def _release_link(link: _Link) -> None:
    with _links_lock:
        link.users -= 1
        if link.users > 0:
            return
        key = (link.generation, link.schema, *sorted(link.dsn.items()))
        if _links.get(key) is link:
            del _links[key]
    with link.lock:
        link.drop(None)


class PgsqlTransport(base.Transport):
    """Tasks in PostgreSQL tables; thread-safe.  Instances of one process on the same database and
    schema share one statement connection (behind a lock); a consumer that blocks opens its own
    listening connection."""

    schemes = ("pgsql", "postgresql", "postgres")

    def __init__(self, url: str = "pgsql:asynctask") -> None:
        super().__init__(url)
        self._dsn, options, self.where = parse_pgsql_url(url)
        self.lease_s = options.get("lease_s", self.lease_s)
        self.schema: str = options.get("schema", "asynctask")
        self._statements = _load_statements(self.schema)
        self._link = _take_link(self._dsn, self.schema, self.where)
        self._closed = False
        self._channels: dict[str, str] = {}
        self._claims = 0
        self._listen_lock = threading.Lock()  # guards the listening connection and the sets below
        self._listener: Connection | None = None
        self._listener_generation = _fork_generation
        self._listening: set[str] = set()
        self._waiting: set[str] = set()
        self._listener_prepared: set[str] = set()

    # -- connections -----------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> TransportUnavailableError:
        return self._link.unavailable(exc)

    def _error(self, exc: BaseException) -> TransportError:
        return self._link.error(exc)

    def _current_link(self) -> _Link:
        """This process's link (a forked child or a closed instance takes a new one)."""
        if self._closed or self._link.generation != _fork_generation:
            self._link, self._closed = _take_link(self._dsn, self.schema, self.where), False
        return self._link

    def _run(self, name: str, *args: Any, rows: bool = False) -> Any:
        """Execute the prepared statement ``name``; return its rows (``rows=True``) or its rowcount."""
        return self._call(name, *_execute_text(self._statements[name][1], args), rows)

    def _call(self, name: str, execute: str, params: list[Any] | None, rows: bool = False,
              copy_data: str | None = None) -> Any:
        """Run ``execute`` (statement ``name``, PREPAREd first on a new connection; or a COPY fed
        ``copy_data``).  A connection that worked before and turns out lost is reopened and the
        statement retried once, at once."""
        link = self._current_link()
        with link.lock:
            fresh = False
            while True:
                cur = link.cursor
                if cur is None:
                    link.conn = link.connect()
                    cur = link.cursor = link.conn.cursor()
                    fresh = True
                try:
                    if copy_data is not None:
                        cur.copy_expert(execute, io.StringIO(copy_data))
                        return cur.rowcount
                    if name not in link.prepared:
                        cur.execute(self._statements[name][0])
                        link.prepared.add(name)
                    cur.execute(execute, params)
                    return cur.fetchall() if rows else cur.rowcount
                except _LOST as exc:
                    if not cur.connection.closed:  # e.g. a deadlock or a cancelled statement
                        raise link.error(exc) from None
                    link.drop(exc)
                    if fresh:
                        raise link.unavailable(exc) from None
                except psycopg2.Error as exc:
                    raise link.error(exc) from None

    def close(self) -> None:
        """Close the listening connection, and the statement connection when no other instance uses it."""
        with self._listen_lock:
            if self._listener is not None and self._listener_generation == _fork_generation:
                self._listener.close()
            self._listener = None
            self._listening.clear()
            self._waiting.clear()
        if not self._closed:
            self._closed = True
            if self._link.generation == _fork_generation:
                _release_link(self._link)

    # -- producing -------------------------------------------------------------------------

    def submit_task(
        self, queue: str, payload: dict[str, Any] | None = None, *, delay_s: float = 0, priority: int = 0
    ) -> str:
        """As :meth:`Transport.submit_task`, in one round trip (the common path, kept lean)."""
        _task.validate_queue_name(queue)
        delay = _task.validate_delay(delay_s)
        _task.validate_priority(priority)
        body = _task.encode_payload(payload)
        if queue not in self._link.registered:
            return self._submit(queue, [body], delay, priority)[0]
        task_id = os.urandom(16).hex()
        execute = f"EXECUTE asynctask_submit_one ('{task_id}', '{queue}', {priority}, {delay!r}, %s)"
        self._call("submit_one", execute, [body])
        return task_id

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        if queue not in self._link.registered:
            self._run("register", queue)
            self._link.registered.add(queue)
        ids = [os.urandom(16).hex() for _ in bodies]
        if len(bodies) == 1:
            self._run("submit_one", ids[0], queue, priority, delay_s, bodies[0])
        elif delay_s == 0:  # COPY: the fastest way in; then wake waiting consumers, if any
            prefix = f"\t{queue}\t{priority}\t"
            rows = "".join(f"{i}{prefix}{_copy_escape(body)}\n" for i, body in zip(ids, bodies, strict=True))
            self._call("copy_tasks", self._statements["copy_tasks"][1], None, copy_data=rows)
            self._run("notify", queue)
        else:
            ids_array, bodies_json = "{" + ",".join(ids) + "}", json.dumps(bodies, ensure_ascii=False)
            self._run("submit_many", ids_array, queue, priority, delay_s, bodies_json)
        return ids

    # -- consuming -------------------------------------------------------------------------

    def _fetch(self, queue: str, max_count: int, lease_s: float) -> list[Task]:
        """One fetch statement; again for the missing part when undecodable rows were buried."""
        tasks: list[Task] = []
        while True:
            want = max_count - len(tasks)
            token = int.from_bytes(os.urandom(8), "big") >> 1
            rows = self._run("fetch", queue, want, token, lease_s, rows=True)
            buried = 0
            for rowid, task_id, body, attempts, enqueued_at, priority in rows:
                try:
                    payload = _task.decode_payload(body)
                except TaskDecodeError as exc:
                    logger.warning("task %s on queue %s does not decode; moved to dead letters", task_id, queue)
                    self._run("bury", rowid, token, base.dead_reason_for_undecodable(exc))
                    buried += 1
                    continue
                tasks.append(Task(task_id, queue, payload, attempts, enqueued_at, priority, f"{rowid}.{token}"))
            if not buried or len(rows) < want:
                return tasks

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        tasks = self._fetch(queue, max_count, lease_s)
        if tasks:
            if queue in self._waiting and self._listen_lock.acquire(blocking=False):
                try:  # busy again: producers need not notify this process any more
                    self._listener_run("unwait", queue)
                    self._waiting.discard(queue)
                finally:
                    self._listen_lock.release()
            return tasks
        if timeout_s <= 0:
            return tasks
        deadline = time.monotonic() + timeout_s
        if not self._listen_lock.acquire(timeout=timeout_s):  # another thread of this instance waits
            return self._fetch(queue, max_count, lease_s)
        try:
            channel = self._channel(queue)
            first_wait = SAFETY_POLL_S
            while True:
                self._listen(channel)
                if queue not in self._waiting:  # (again, after the listening connection was reopened)
                    self._listener_run("wait", queue)  # from now on submits to this queue notify
                    self._waiting.add(queue)
                    first_wait = _FIRST_WAIT_S
                tasks = self._fetch(queue, max_count, lease_s)
                remaining = deadline - time.monotonic()
                if tasks or remaining <= 0:
                    return tasks  # still registered: the next call that finds tasks at once unregisters
                due = self._run("next_due", queue, rows=True)[0][0]
                self._wait(channel, min(remaining, first_wait, SAFETY_POLL_S if due is None else max(due, 0.001)))
                first_wait = SAFETY_POLL_S
        finally:
            self._listen_lock.release()

    def _channel(self, queue: str) -> str:
        if (channel := self._channels.get(queue)) is None:
            digest = hashlib.md5(f"{self.schema}.{queue}".encode(), usedforsecurity=False).hexdigest()
            channel = self._channels[queue] = "asynctask_" + digest
        return channel

    def _listener_connection(self) -> Connection:
        """The listening connection, opened when missing (listen lock held)."""
        if self._listener is None or self._listener.closed or self._listener_generation != _fork_generation:
            link = self._current_link()
            with link.lock:
                self._listener, self._listener_generation = link.connect(), _fork_generation
            self._listening.clear()
            self._waiting.clear()
            self._listener_prepared.clear()
            self._listener_run("forget_waiters")
        return self._listener

    def _listener_run(self, name: str, *args: Any) -> None:
        """Run statement ``name`` (``listen``: LISTEN) on the listening connection (listen lock held)."""
        try:
            with self._listener_connection().cursor() as cur:
                if name == "listen":
                    cur.execute(f'LISTEN "{args[0]}"')
                    return
                if name not in self._listener_prepared:
                    cur.execute(self._statements[name][0])
                    self._listener_prepared.add(name)
                cur.execute(*_execute_text(self._statements[name][1], args))
        except _LOST as exc:
            self._listener = None
            raise self._unavailable(exc) from None
        except psycopg2.Error as exc:
            raise self._error(exc) from None

    def _listen(self, channel: str) -> None:
        """LISTEN on ``channel`` (once per connection); drop notifications that came before."""
        listener = self._listener_connection()  # reopened when lost: then it listens to nothing yet
        if channel not in self._listening:
            self._listener_run("listen", channel)
            self._listening.add(channel)
        try:
            listener.poll()
        except psycopg2.Error as exc:
            self._listener = None
            raise self._unavailable(exc) from None
        listener.notifies.clear()

    def _wait(self, channel: str, timeout_s: float) -> None:
        """Block until a notification on ``channel`` or ``timeout_s`` (listen lock held)."""
        listener = self._listener
        assert listener is not None
        deadline = time.monotonic() + timeout_s
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if select.select([listener], [], [], remaining)[0]:
                    listener.poll()
                    mine = any(note.channel == channel for note in listener.notifies)
                    listener.notifies.clear()
                    if mine:
                        return
        except (*_LOST, OSError, ValueError):
            self._listener = None  # reopened by the next _listen; the fetch reports a lost server

    @staticmethod
    def _receipt(task: Task) -> tuple[int, int] | None:
        rowid, _, token = task.receipt.partition(".")
        try:
            pair = int(rowid), int(token)
        except ValueError:
            return None
        return pair if min(pair) >= 0 and max(pair) < 1 << 63 else None

    def ack(self, task: Task) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("ack", *receipt)

    def ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack many tasks in one statement."""
        receipts = [r for r in map(self._receipt, tasks) if r is not None]
        if len(receipts) == 1:
            self._run("ack", *receipts[0])
        elif receipts:
            rowids, tokens = (",".join(str(r[i]) for r in receipts) for i in (0, 1))
            self._run("ack_many", f"{{{rowids}}}", f"{{{tokens}}}")

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("nack", *receipt, _task.validate_delay(delay_s), 0 if count_attempt else 1)

    def extend(self, task: Task, lease_s: float) -> bool:
        receipt = self._receipt(task)
        return receipt is not None and self._run("extend", *receipt, _task.validate_delay(lease_s)) == 1

    def dead(self, task: Task, reason: str) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("bury", *receipt, str(reason))

    # -- inspecting and administering --------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        _task.validate_queue_name(queue)
        ready, delayed, in_flight, dead, age = self._run("stats", queue, rows=True)[0]
        return QueueStats(ready, delayed, in_flight, dead, None if age is None else max(age, 0.0))

    def queues(self) -> list[str]:
        return [row[0] for row in self._run("queues", rows=True)]

    def purge(self, queue: str) -> int:
        _task.validate_queue_name(queue)
        return int(self._run("purge", queue))

    def dead_tasks(self, queue: str, limit: int = 100) -> list[DeadTask]:
        _task.validate_queue_name(queue)
        limit = max(0, min(int(limit), 2**31 - 1))
        return [DeadTask(*row) for row in self._run("dead_tasks", queue, limit, rows=True)]

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        _task.validate_queue_name(queue)
        chosen = None if ids is None else [i for i in ids if isinstance(i, str) and _HEX_ID_RE.match(i)]
        if chosen is not None and not chosen:
            return 0
        return int(self._run("replay", queue, chosen, rows=True)[0][0])

    def claim_once(self, key: str, ttl_s: float) -> bool:
        key, ttl = base.validate_claim(key, ttl_s)
        claimed = bool(self._run("claim", key, ttl, rows=True))
        self._claims += 1
        if self._claims % 100 == 0:  # expired claims are claimable anyway: keep the table small
            self._run("forget_claims")
        return claimed
