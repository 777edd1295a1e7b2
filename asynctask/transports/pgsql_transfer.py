"""The transfer hooks of the PostgreSQL transport (:mod:`asynctask.transports.transfer`).

Each hook is one statement of ``pgsql_queries.sql`` (schema version 3, ``pgsql_schema_3.sql``), so a
batch of 1,000 costs one round trip (plus one ``register`` the first time a process puts to a queue):

* ``peek``: waiting rows (no receipt, or a lease that ran out) in ``rowid`` order after the cursor
  (the last ``rowid`` seen; rowids never change, so the order is stable);
* ``take``: as the fetch, one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``
  setting a lease and a receipt, delayed rows included and ``attempts`` untouched.  The record
  carries the delay the row had left; a lease that runs out leaves the row ready with no write, as an
  expired delivery does.  ``ack_tasks`` of the taken tasks is one ``DELETE``;
* ``put_tasks``: ``INSERT ... SELECT FROM json_to_recordset(one JSON parameter)``, skipping ids the
  queue holds (a row in ``tasks``, whatever its state, or in ``dead``), ``RETURNING`` the ids stored.
  ``tasks.id`` has no unique index (COPY is faster without one), so the statement runs after
  ``pg_advisory_xact_lock`` of the queue in the same implicit transaction (one round trip): two puts of
  one id at once do not both store it.  ``enqueued_at`` is kept (``stats`` reports the oldest-ready
  age from it; 0 means unknown: now), as are priority, attempts and the delay;
* ``dead_page``: keyset paging on ``dead_queue_order (queue, dead_at, n)``: one index range per
  page whatever the number of dead letters; the cursor is ``<dead_at in microseconds>:<n>``;
* ``put_dead``: ``INSERT ... ON CONFLICT (queue, id) DO NOTHING RETURNING`` (also skipping ids the
  queue holds as tasks, as the memory transport does).

Schema version 3 (``pgsql_schema_3.sql``, applied on connect like version 2) adds what this needs to
``dead``: a nullable ``enqueued_at`` (kept by ``bury`` and ``put_dead``; 0 for letters of older
releases), the primary key ``(queue, id)`` instead of ``id`` (a task id may be dead in two queues:
``put_dead`` copies letters between queues), and ``dead_queue_order`` redefined as ``(queue, dead_at,
n)``, so ``dead_page`` and ``dead_tasks`` list oldest first from an index.  Processes of the previous
release still connected keep working except for ``dead()`` (their ``ON CONFLICT (id)`` no longer has a
key to name): it fails until they restart, and the task comes back when its lease runs out.

Ids are stored as ``uuid``: records whose id is not 32 lowercase hex digits (as asynctask makes them)
are refused with :class:`~asynctask.errors.PayloadError` before anything is stored, as are bodies
holding NUL characters (PostgreSQL text cannot).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from asynctask.errors import PayloadError, TaskDecodeError
from asynctask.message import DeadTask, Task, decode_body
from asynctask.transports.pgsql_state import HEX_ID_RE, MAX_TTL_S
from asynctask.transports.transfer import TaskRecord, Transfer

if TYPE_CHECKING:
    from asynctask.transports.pgsql_connection import Link, Statement

__all__ = ["PgsqlTransfer"]

_MAX_ATTEMPTS = 2**31 - 2  # attempts is an int4, and a delivery adds one
_FIRST_DEAD = (-1, 0)  # a cursor before every dead letter (dead_at >= the epoch)


def _when(seconds: float) -> float | None:
    """An epoch time for the statements: None (unknown) for 0; far futures cut to what fits."""
    return min(seconds, MAX_TTL_S) if seconds > 0 else None


def _distinct(records: list[TaskRecord]) -> tuple[list[TaskRecord], set[int]]:
    """The records to send (checked; the first of each id) and the positions of repeated ids."""
    seen: set[str] = set()
    first, repeated = [], set()
    for n, record in enumerate(records):
        if not HEX_ID_RE.match(record.id):
            raise PayloadError(
                f"task record id {record.id!r:.80}: the PostgreSQL transport stores ids of 32 lowercase hex"
                " digits (as asynctask makes them)"
            )
        if "\x00" in record.body:
            raise PayloadError(f"task record {record.id}: PostgreSQL text cannot hold NUL characters (\\x00)")
        if record.id in seen:
            repeated.add(n)
        else:
            seen.add(record.id)
            first.append(record)
    return first, repeated


class PgsqlTransfer(Transfer):
    """Mixin of :class:`~asynctask.transports.pgsql.PgsqlTransport` (listed before it)."""

    if TYPE_CHECKING:
        _link: Link
        _statements: dict[str, Statement]
        schema: str

        def _run(self, name: str, *args: Any, rows: bool = False) -> Any: ...
        def _call(
            self, name: str, execute: str, params: list[Any] | None, rows: bool = False, copy_data: str | None = None
        ) -> Any: ...

    def _peek_tasks(self, queue: str, after: str, limit: int) -> tuple[list[TaskRecord], str]:
        start = self._parse_cursor(after, 1)[0] if after else 0
        rows = self._run("peek", queue, start, limit + 1, rows=True)
        records = [
            TaskRecord(task_id, body, priority, attempts, enqueued_at, max(delay, 0.0))
            for _, task_id, body, attempts, enqueued_at, priority, delay in rows[:limit]
        ]
        return records, str(rows[limit - 1][0]) if len(rows) > limit else ""

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        token = int.from_bytes(os.urandom(8), "big") >> 1
        rows = self._run("take", queue, max_count, token, min(lease_s, MAX_TTL_S), rows=True)
        taken = []
        for rowid, task_id, body, attempts, enqueued_at, priority, delay in rows:
            try:
                payload, meta = decode_body(body)
            except TaskDecodeError:  # moved as it is: the target's worker buries it
                payload, meta = {}, {}
            record = TaskRecord(task_id, body, priority, attempts, enqueued_at, max(delay, 0.0))
            task = Task(task_id, queue, payload, attempts, enqueued_at, priority, f"{rowid}.{token}", meta)
            taken.append((record, task))
        return taken

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        first, repeated = _distinct(records)
        doc = [
            {
                "i": r.id,
                "p": r.priority,
                "a": min(r.attempts, _MAX_ATTEMPTS),
                "e": _when(r.enqueued_at),
                "d": min(r.delay_s, MAX_TTL_S),
                "b": r.body,
            }
            for r in first
        ]
        self._register(queue)
        text, params = self._statements["put_tasks"].render((queue, json.dumps(doc, ensure_ascii=False)))
        execute = f"SELECT pg_advisory_xact_lock(hashtext(%s)); {text}"
        key = f"asynctask put {self.schema}.{queue}"
        rows = self._call("put_tasks", execute, [key, *(params or [])], rows=True)
        return self._stored(records, repeated, rows)

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        dead_us, n = self._parse_cursor(after, 2) if after else _FIRST_DEAD
        rows = self._run("dead_page", queue, dead_us, n, limit + 1, rows=True)
        page = [DeadTask(*row[:8]) for row in rows[:limit]]
        return page, "{}:{}".format(*rows[limit - 1][8:]) if len(rows) > limit else ""

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        first, repeated = _distinct(records)
        doc = [
            {
                "i": r.id,
                "p": r.priority,
                "a": min(r.attempts, _MAX_ATTEMPTS),
                "e": _when(r.enqueued_at),
                "t": _when(r.dead_at if r.dead_at is not None else r.enqueued_at),
                "w": r.reason or "",
                "b": r.body,
            }
            for r in first
        ]
        self._register(queue)
        rows = self._run("put_dead", queue, json.dumps(doc, ensure_ascii=False), rows=True)
        return self._stored(records, repeated, rows)

    # -- helpers -----------------------------------------------------------------------------

    def _register(self, queue: str) -> None:
        """List ``queue`` in ``queues`` (once per connection and queue, as a submit does)."""
        if queue not in self._link.registered:
            self._run("register", queue)
            self._link.registered.add(queue)

    @staticmethod
    def _stored(records: list[TaskRecord], repeated: set[int], rows: list[tuple[Any, ...]]) -> list[bool]:
        stored = {row[0] for row in rows}
        return [n not in repeated and r.id in stored for n, r in enumerate(records)]

    @staticmethod
    def _parse_cursor(after: str, parts: int) -> tuple[int, ...]:
        """The integers of a cursor this transport made (``parts`` of them, ``:``-separated)."""
        fields = after.split(":")
        if len(fields) == parts and all(f.isdigit() and len(f) <= 19 for f in fields):
            numbers = tuple(map(int, fields))
            if max(numbers) < 2**63:  # bigint
                return numbers
        raise ValueError(f"after={after!r:.40}: a cursor a previous page of this queue returned is allowed")
