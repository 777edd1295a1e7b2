"""The PostgreSQL transport (psycopg2).

URLs (:mod:`asynctask.transports.pgsql_url`): ``pgsql:dbname`` (libpq defaults and PGHOST, PGPORT,
PGUSER... for the rest), ``pgsql://user:password@host:port/dbname``, and the same with
``postgresql://`` or ``postgres://``; host lists (``h1:5432,h2:5432``, libpq's failover, with
``target_session_attrs``) and socket directories (``?host=/path``).  Options: ``schema`` (default
``asynctask``; 1-40 lowercase letters, digits, ``_``), ``lease_s`` (the default lease),
``connect_timeout`` (default 5 s), ``listen_url`` (below), and every libpq connection keyword.

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
  (version 3) column ``enqueued_at``, primary key ``(queue, id)``, ``dead_queue_order (queue, dead_at, n)``;
* ``waiters (queue, pid, since)``, unlogged: consumers blocked in ``get_task``;
* ``claims (key, expires_at)``: ``claim_once`` (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``);
* (version 2) ``state (queue, key, expires_at, value)``, index ``state_expiry (expires_at)``: the keyed
  state; hash index ``tasks_id (id)``: ``cancel``, one ``DELETE`` of a row with no live lease
  (:mod:`asynctask.transports.pgsql_state`);
* (version 4) PL/pgSQL functions ``fetch_tasks``, ``submit_one``, ``ack_task``, ``ack_tasks``,
  ``nack_task``, ``extend_task``: the hot statements, whose plans the server keeps per connection.

Export, import and migrate: :mod:`asynctask.transports.pgsql_transfer` (one statement a batch).

No session state (so PgBouncer in transaction mode, or any pooler, may hand each transaction to
another server connection): no PREPARE, no session advisory lock (only ``pg_advisory_xact_lock``),
no SET.  The statements (``pgsql_queries.sql``) go as plain text; the hot one-row ones (submit, ack,
nack, extend, a fetch of a few tasks) call the functions above, as fast as the PREPAREd statements
they replace; a batch fetch or ack pays its planning (about 0.1 ms) once for the batch.  Measured
with ``python -m bench workers`` (no-op drain through the supervisor) against the release before.
A fetch is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)`` setting the lease and
a new receipt (``<rowid>.<random token>``); ack, nack, extend and dead check the receipt, so they
never touch a later delivery; ``ack_tasks`` is one ``DELETE``.  ``submit_tasks`` uses COPY.

Waiting: a blocked ``get_task`` registers in ``waiters`` and LISTENs (on a second connection, opened
when first needed) on ``asynctask_<md5(schema.queue)>``.  Submit, nack and replay ``pg_notify`` that
channel in the same statement, only when the queue has a waiter, so busy systems pay nothing for it.
The waiter wakes on a notification, at the next delayed or lease due time, or after a 2 s safety poll.
LISTEN through a pooler in transaction mode is lost (the server connection that ran it goes back to
the pool): option ``listen_url`` names a direct URL for the listening connection (and the waiters
rows, whose pid must be the listener's).  The first time an instance waits it checks that a NOTIFY
sent through the statement connection reaches its listener within 0.5 s; when it does not, it logs
one warning per process and URL naming ``listen_url``, and its waits fetch every 0.1 s instead (no
LISTEN, no waiters row).  A listening connection lost (a restart, a failover) is reopened by the
next wait, which LISTENs and registers again.  :meth:`PgsqlTransport.topology` shows the server,
the pooler (PgBouncer detected) and whether LISTEN works.

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
import time
from collections.abc import Sequence
from typing import Any

import psycopg2

from asynctask import message as _message
from asynctask.errors import TaskDecodeError
from asynctask.message import DeadTask, QueueStats, Task
from asynctask.transports import base, pgsql_connection
from asynctask.transports.pgsql_connection import (
    LOST,
    SCHEMA_VERSION,
    Link,
    Listener,
    load_statements,
    pooler_version,
    release_link,
    take_link,
)
from asynctask.transports.pgsql_state import HEX_ID_RE, PgsqlState
from asynctask.transports.pgsql_transfer import PgsqlTransfer
from asynctask.transports.pgsql_url import parse_pgsql_url

__all__ = ["SCHEMA_VERSION", "PgsqlTransport", "parse_pgsql_url"]

logger = logging.getLogger(__name__)

#: Longest a blocked fetch sleeps without looking at the table again.
SAFETY_POLL_S = 2.0
#: Fetches of at most this many tasks call the PL/pgSQL function (its plan kept by the server); larger
#: ones send the statement, planned at each call: about 0.1 ms, nothing per task for a batch, and it
#: spares the function's copy of the rows (measured with bench/workers.py and a statement-level A/B).
FEW_ROWS = 8
#: How often a blocked fetch looks at the table when LISTEN does not reach it (no ``listen_url``
#: through a pooler in transaction mode).
POLL_S = 0.1
#: How long the check waits for its own NOTIFY before it concludes that LISTEN does not work.
PROBE_TIMEOUT_S = 0.5
_warned: set[str] = set()  # the URLs (as described) whose LISTEN check failed, warned about once
#: The first wait after registering as a waiter is short: a submit whose statement began just before
#: the registration did not see it and sent no notification.
_FIRST_WAIT_S = 0.05


def _copy_escape(text: str) -> str:
    """``text`` as a field of COPY's text format."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text or "\r" in text or "\t" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text


class PgsqlTransport(PgsqlTransfer, PgsqlState, base.Transport):
    """Tasks in PostgreSQL tables; thread-safe.  Instances of one process on the same database and
    schema share one statement connection (behind a lock); a consumer that blocks opens its own
    listening connection."""

    schemes = ("pgsql", "postgresql", "postgres")

    def __init__(self, url: str = "pgsql:asynctask") -> None:
        super().__init__(url)
        self._dsn, options, self.where = parse_pgsql_url(url)
        self.lease_s = options.get("lease_s", self.lease_s)
        self.schema: str = options.get("schema", "asynctask")
        self._statements = load_statements(self.schema)
        self._link = take_link(self._dsn, self.schema, self.where)
        self._closed = False
        self._channels: dict[str, str] = {}
        self._claims = 0
        listen_link = None
        if (listen_url := options.get("listen_url")) is not None:
            listen_dsn, _, listen_where = parse_pgsql_url(listen_url)
            listen_link = Link(listen_dsn, self.schema, listen_where)
        self._listener = Listener(self._statements, self._link, listen_link)

    # -- connections -----------------------------------------------------------------------

    def _current_link(self) -> Link:
        """This process's link (a forked child or a closed instance takes a new one)."""
        if self._closed or self._link.generation != pgsql_connection.fork_generation:
            self._link, self._closed = take_link(self._dsn, self.schema, self.where), False
            self._listener.link = self._link
        return self._link

    def _run(self, name: str, *args: Any, rows: bool = False) -> Any:
        """Execute statement ``name``; return its rows (``rows=True``) or its rowcount."""
        return self._call(name, *self._statements[name].render(args), rows)

    def _call(
        self, name: str, execute: str, params: list[Any] | None, rows: bool = False, copy_data: str | None = None
    ) -> Any:
        """Run ``execute`` (the text of statement ``name``; or a COPY fed ``copy_data``).  A connection
        that worked before and turns out lost is reopened and the statement retried once, at once."""
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
                    cur.execute(execute, params)
                    return cur.fetchall() if rows else cur.rowcount
                except LOST as exc:
                    if not cur.connection.closed:  # e.g. a deadlock or a cancelled statement
                        raise link.error(exc) from None
                    link.drop(exc)
                    if fresh:
                        raise link.unavailable(exc) from None
                except psycopg2.Error as exc:
                    raise link.error(exc) from None

    def close(self) -> None:
        """Close the listening connection, and the statement connection when no other instance uses it."""
        self._listener.close()
        if not self._closed:
            self._closed = True
            if self._link.generation == pgsql_connection.fork_generation:
                release_link(self._link)

    # -- producing -------------------------------------------------------------------------

    def submit_task(
        self,
        queue: str,
        payload: dict[str, Any] | None = None,
        *,
        delay_s: float = 0,
        priority: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """As :meth:`Transport.submit_task`, in one round trip (the common path, kept lean)."""
        body, delay = self.prepare_one(queue, payload, delay_s, priority, meta)
        if queue not in self._link.registered:
            return self._submit(queue, [body], delay, priority)[0]
        task_id = _message.new_task_id()
        self._run("submit_one", task_id, queue, priority, delay, body)
        return task_id

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        if queue not in self._link.registered:
            self._run("register", queue)
            self._link.registered.add(queue)
        ids = _message.new_task_ids(len(bodies))
        if len(bodies) == 1:
            self._run("submit_one", ids[0], queue, priority, delay_s, bodies[0])
        elif delay_s == 0:  # COPY: the fastest way in; then wake waiting consumers, if any
            prefix = f"\t{queue}\t{priority}\t"
            rows = "".join(f"{i}{prefix}{_copy_escape(body)}\n" for i, body in zip(ids, bodies, strict=True))
            self._call("copy_tasks", self._statements["copy_tasks"].text, None, copy_data=rows)
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
            statement = "fetch_few" if want <= FEW_ROWS else "fetch"
            rows = self._run(statement, queue, want, token, lease_s, rows=True)
            buried = 0
            for rowid, task_id, body, attempts, enqueued_at, priority in rows:
                try:
                    payload, meta = _message.decode_body(body)
                except TaskDecodeError as exc:
                    logger.warning("task %s on queue %s does not decode; moved to dead letters", task_id, queue)
                    self._run("bury", rowid, token, base.dead_reason_for_undecodable(exc))
                    buried += 1
                    continue
                tasks.append(Task(task_id, queue, payload, attempts, enqueued_at, priority, f"{rowid}.{token}", meta))
            if not buried or len(rows) < want:
                return tasks

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        tasks = self._fetch(queue, max_count, lease_s)
        listener = self._listener
        if tasks:
            if queue in listener.waiting and listener.lock.acquire(blocking=False):
                try:  # busy again: producers need not notify this process any more
                    listener.run("unwait", queue)
                    listener.waiting.discard(queue)
                finally:
                    listener.lock.release()
            return tasks
        if timeout_s <= 0:
            return tasks
        deadline = time.monotonic() + timeout_s
        if listener.notify_works is False:
            return self._poll(queue, max_count, lease_s, deadline)
        if not listener.lock.acquire(timeout=timeout_s):  # another thread of this instance waits
            return self._fetch(queue, max_count, lease_s)
        try:
            if not self._check_notify():
                return self._poll(queue, max_count, lease_s, deadline)
            channel = self._channel(queue)
            first_wait = SAFETY_POLL_S
            while True:
                listener.listen(channel)
                if queue not in listener.waiting:  # (again, after the listening connection was reopened)
                    listener.run("wait", queue)  # from now on submits to this queue notify
                    listener.waiting.add(queue)
                    first_wait = _FIRST_WAIT_S
                tasks = self._fetch(queue, max_count, lease_s)
                remaining = deadline - time.monotonic()
                if tasks or remaining <= 0:
                    return tasks  # still registered: the next call that finds tasks at once unregisters
                due = self._run("next_due", queue, rows=True)[0][0]
                listener.wait(channel, min(remaining, first_wait, SAFETY_POLL_S if due is None else max(due, 0.001)))
                first_wait = SAFETY_POLL_S
        finally:
            listener.lock.release()

    def _poll(self, queue: str, max_count: int, lease_s: float, deadline: float) -> list[Task]:
        """Wait without LISTEN (it does not reach this process): a fetch every :data:`POLL_S`."""
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_S, remaining))
            if tasks := self._fetch(queue, max_count, lease_s):
                return tasks
        return []

    def _check_notify(self) -> bool:
        """Whether a NOTIFY sent through the statement connection reaches the listener (checked once
        per instance, listener lock held).  When it does not (LISTEN through a pooler in transaction
        mode), log one warning per process and URL naming ``listen_url``, and close the listener."""
        listener = self._listener
        if listener.notify_works is None:
            probe = "asynctask_probe_" + os.urandom(8).hex()
            listener.listen(probe)
            self._run("probe", probe)
            listener.notify_works = works = listener.wait(probe, PROBE_TIMEOUT_S)
            if works:
                listener.unlisten(probe)
            else:
                listener.close_connection()
                if self.where not in _warned:
                    _warned.add(self.where)
                    logger.warning(
                        "a NOTIFY sent to %s did not reach its LISTEN within %.1f s (a pooler such as PgBouncer"
                        " in transaction mode drops it): waiting consumers poll every %.1f s instead; give the"
                        " URL option listen_url=<a direct URL to the server> to wake them at once",
                        self.where,
                        PROBE_TIMEOUT_S,
                        POLL_S,
                    )
        return bool(listener.notify_works)

    def _channel(self, queue: str) -> str:
        if (channel := self._channels.get(queue)) is None:
            digest = hashlib.md5(f"{self.schema}.{queue}".encode(), usedforsecurity=False).hexdigest()
            channel = self._channels[queue] = "asynctask_" + digest
        return channel

    @staticmethod
    def _receipt(task: Task) -> tuple[int, int] | None:
        rowid, _, token = task.receipt.partition(".")
        try:
            pair = int(rowid), int(token)
        except ValueError:
            return None
        return pair if min(pair) >= 0 and max(pair) < 1 << 63 else None

    def _ack(self, task: Task) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("ack", *receipt)

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack many tasks in one statement."""
        receipts = [r for r in map(self._receipt, tasks) if r is not None]
        if len(receipts) == 1:
            self._run("ack", *receipts[0])
        elif receipts:
            rowids, tokens = (",".join(str(r[i]) for r in receipts) for i in (0, 1))
            self._run("ack_many", f"{{{rowids}}}", f"{{{tokens}}}")

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("nack", *receipt, delay_s, 0 if count_attempt else 1)

    def _extend(self, task: Task, lease_s: float) -> bool:
        receipt = self._receipt(task)
        return receipt is not None and self._run("extend", *receipt, lease_s, rows=True)[0][0] == 1

    def _dead(self, task: Task, reason: str) -> None:
        if (receipt := self._receipt(task)) is not None:
            self._run("bury", *receipt, reason)

    # -- inspecting and administering --------------------------------------------------------

    def _stats(self, queue: str) -> QueueStats:
        ready, delayed, in_flight, dead, age = self._run("stats", queue, rows=True)[0]
        return QueueStats(ready, delayed, in_flight, dead, None if age is None else max(age, 0.0))

    def _queues(self) -> list[str]:
        return [row[0] for row in self._run("queues", rows=True)]

    def _purge(self, queue: str) -> int:
        return int(self._run("purge", queue))

    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        limit = min(limit, 2**31 - 1)  # the LIMIT parameter is an int4
        return [DeadTask(*row) for row in self._run("dead_tasks", queue, limit, rows=True)]

    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op("replay", queue, ids)

    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op("purge_dead", queue, ids)

    def _dead_op(self, statement: str, queue: str, ids: list[str] | None) -> int:
        """Run ``replay`` or ``purge_dead`` on all dead tasks of ``queue`` (None) or those of ``ids``."""
        # Only ids as new_task_id() makes them can name a row: the rest would fail the cast to uuid.
        chosen = None if ids is None else [i for i in ids if HEX_ID_RE.match(i)]
        if chosen == []:
            return 0
        return int(self._run(statement, queue, chosen, rows=True)[0][0])

    def topology(self) -> dict[str, Any]:
        """What the statement connection reached: ``server`` (address and port as the server sees
        them; ``local socket`` for a unix socket), its version and ``role`` (primary or standby);
        ``connected_to``, the host and port libpq chose (of a host list); ``pooler``: null when the
        connection goes straight to PostgreSQL, else PgBouncer's version when its admin console
        answers this URL's user (else ``unknown pooler``).  A pooler is seen by the backend pid:
        libpq keeps the one the server sent at connect, which PgBouncer makes up, so it differs from
        ``pg_backend_pid()``.  ``listen``: whether a NOTIFY reaches the listener (checked now if not yet)
        and through what (``listen_url`` or the main URL)."""
        addr, port, pid, version, standby = self._run("topology", rows=True)[0]
        link = self._current_link()
        with link.lock:
            info = link.conn.info if link.conn is not None else None
        report: dict[str, Any] = {
            "server": "local socket" if addr is None else f"{addr}:{port}",
            "server_version": version,
            "role": "standby" if standby else "primary",
        }
        if info is not None:
            report["connected_to"] = f"{info.host}:{info.port}"
            report["pooler"] = None if info.backend_pid == pid else pooler_version(self._dsn, info.host, info.port)
        with self._listener.lock:
            works = self._check_notify()
        report["listen"] = {
            "via": "listen_url" if self._listener.listen_link is not None else "main URL",
            "notify_reaches_listener": works,
            "waiting": "woken by NOTIFY" if works else f"polling every {POLL_S} s",
        }
        return report

    def _claim_once(self, key: str, ttl: float) -> bool:
        claimed = bool(self._run("claim", key, ttl, rows=True))
        self._claims += 1
        if self._claims % 100 == 0:  # expired claims are claimable anyway: keep the table small
            self._run("forget_claims")
        return claimed
