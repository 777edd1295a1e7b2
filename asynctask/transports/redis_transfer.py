"""The transfer hooks of the Redis transport (:mod:`asynctask.transports.transfer`).

Each hook is a Lua script beside this module (``redis_take.lua``, ``redis_put.lua``,
``redis_put_dead.lua``, ``redis_peek.lua``, ``redis_dead_page.lua``, each after
``redis_common.lua``) that touches the keys of one queue only, all under its hash tag, so a Redis
Cluster runs them too.  Scripts handle at most :data:`CHUNK` tasks a call (Lua's ``unpack`` has a
limit); the calls of one take or put go in one pipeline: a take, put or ack (``ack_tasks``) of 1,000
tasks is one round trip each, of 10,000 still one.

* **take** pops entries from the ready lists (highest priority first), then from the delayed set
  (soonest due first; the record carries the delay it had left), and leases them in ``Q leased``
  under a receipt ``<seq>:<entry>`` whose entry is unchanged: the attempt counter is not raised,
  an expired lease puts the entry back ready as a delivery's would, and ``ack_tasks`` deletes them.
  Due delayed tasks and expired leases are moved to ready first (as a fetch moves them); tasks in
  the leased set (held by a worker or taken already) are left alone.
* **put** stores each record with ``SET NX`` of its body: a body lives from submit until ack or
  purge, dead letters included, so an id the queue holds (waiting, held or dead) is skipped.  Its
  entry keeps attempts, priority and enqueued time (0, unknown, becomes now); it joins the back of
  its ready list, or the delayed set for the delay left.  The oldest-ready age (read at the front
  of each list) reflects the kept times when records come in the order they were enqueued, as a
  migrate takes them; records put behind younger tasks are not looked for.
* **peek** pages through the ready lists, then the delayed set, taking nothing; its cursor names
  the last task seen and where (``r<p>:<n>:<entry>``, ``d:<due_us>:<entry>``).
* **dead_page** pages through the dead set (oldest death first) from the cursor
  ``<dead_at_us>:<id>``: a rank lookup and a range, O(log N + page), never a scan.
* **put_dead** stores dead letters as a dead delivery leaves them (reason, attempts, priority,
  enqueued and death times), skipping ids the queue holds.

Puts are not sent again on a connection that broke after sending (their "skipped" would lie): that
raises TransportUnavailableError, and a put run again skips what the first one stored.  A take is
sent again (what the lost reply held comes back ready when its lease runs out).  Ids must be
letters, digits, ``_`` and ``-`` (entries are ``:``-separated; every transport makes 32 hex digits):
a put of another id raises PayloadError before anything is stored.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from asynctask.errors import PayloadError, TaskDecodeError
from asynctask.message import DeadTask, Task, decode_body, validate_priority
from asynctask.transports.redis_connection import RedisConnection, load_script
from asynctask.transports.transfer import TaskRecord, Transfer

__all__ = ["CHUNK", "RedisTransfer"]

#: Tasks a transfer script handles per call.
CHUNK = 1000
#: Most delayed tasks and expired leases a take or peek first moves to ready (as a fetch does).
PROMOTE_BOUND = 1000

_ID = re.compile(r"[A-Za-z0-9_-]{1,200}\Z")
_ENTRY = r"\d+:\d:\d+:[A-Za-z0-9_-]+"
_PEEK_CURSOR = re.compile(rf"(?:r\d:\d+|d:[0-9.e+]+):{_ENTRY}\Z")
_DEAD_CURSOR = re.compile(r"[0-9.e+]+:[A-Za-z0-9_-]+\Z")


def _text(data: bytes) -> str:
    # surrogateescape: a body that is not UTF-8 goes back to Redis byte for byte (_bytes)
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _head(record: TaskRecord, when: float) -> bytes:
    """The line ``<id> <attempts> <priority> <enqueued_us> <when_us>`` of a put script, after
    checking the record's fields (PayloadError naming the bad one)."""
    if _ID.match(record.id) is None:
        raise PayloadError(
            f"task record id {record.id!r:.80}: Redis stores ids of 1 to 200 letters, digits, '_' or '-'"
        )
    validate_priority(record.priority)
    attempts = record.attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise PayloadError(f"task record {record.id}: attempts {attempts!r:.40}: an integer >= 0 is allowed")
    for name, value in (("enqueued_at", record.enqueued_at), ("time", when)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise PayloadError(f"task record {record.id}: {name} {value!r:.40}: a finite number >= 0 is allowed")
    return b"%s %d %d %d %d\n" % (record.id.encode(), attempts, record.priority, _us(record.enqueued_at), _us(when))


def _records(blob: bytes) -> list[tuple[str, TaskRecord]]:
    """(receipt or entry, record) of each task framed ``<entry> <delay_us> <length>\\n<body>``."""
    out = []
    pos, end = 0, len(blob)
    while pos < end:
        newline = blob.index(b"\n", pos)
        place, delay, size = blob[pos:newline].split(b" ")
        pos = newline + 1 + int(size)
        name = place.decode()
        attempts, priority, enqueued, task_id = name.split(":")[-4:]
        body = _text(blob[newline + 1 : pos])
        out.append(
            (name, TaskRecord(task_id, body, int(priority), int(attempts), int(enqueued) / 1e6, int(delay) / 1e6))
        )
    return out


class RedisTransfer(Transfer):
    """Mixin of :class:`~asynctask.transports.redis.RedisTransport` (listed before it), which
    provides ``_conn``, ``_base`` and ``_register``."""

    _conn: RedisConnection

    if TYPE_CHECKING:

        def _base(self, queue: str) -> bytes: ...
        def _register(self, queue: str) -> None: ...

    def _peek_tasks(self, queue: str, after: str, limit: int) -> tuple[list[TaskRecord], str]:
        if after and _PEEK_CURSOR.match(after) is None:
            raise ValueError(f"after={after!r:.80}: a cursor a page of this transport returned ('' for the first page)")
        blob, cursor = self._conn.eval(load_script("peek"), self._base(queue), after, limit, PROMOTE_BOUND)
        return [record for _, record in _records(blob)], cursor.decode()

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        script, base, lease_us = load_script("take"), self._base(queue), max(_us(lease_s), 1)
        calls = [
            (script, base, (min(CHUNK, max_count - i), lease_us, PROMOTE_BOUND)) for i in range(0, max_count, CHUNK)
        ]
        taken = []
        for blob in self._conn.evals(calls):
            for receipt, record in _records(blob):
                try:
                    payload, meta = decode_body(record.body)
                except TaskDecodeError:
                    payload, meta = {}, {}
                task = Task(
                    record.id, queue, payload, record.attempts, record.enqueued_at, record.priority, receipt, meta
                )
                taken.append((record, task))
        return taken

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        heads = [_head(record, record.delay_s) for record in records]
        return self._put("put", queue, [(heads[i], (_bytes(r.body),)) for i, r in enumerate(records)])

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        heads = [_head(r, r.enqueued_at if r.dead_at is None else r.dead_at) for r in records]
        return self._put(
            "put_dead", queue, [(heads[i], (_bytes(r.body), _bytes(r.reason or ""))) for i, r in enumerate(records)]
        )

    def _put(self, name: str, queue: str, rows: list[tuple[bytes, tuple[bytes, ...]]]) -> list[bool]:
        base = self._base(queue)
        self._register(queue)
        script = load_script(name)
        calls = []
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            calls.append((script, base, (b"".join(head for head, _ in chunk), *(x for _, row in chunk for x in row))))
        return [flag == ord("1") for reply in self._conn.evals(calls, repeat=False) for flag in reply]

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        if after and _DEAD_CURSOR.match(after) is None:
            raise ValueError(f"after={after!r:.80}: a cursor a page of this transport returned ('' for the first page)")
        blob, cursor = self._conn.eval(load_script("dead_page"), self._base(queue), after, limit)
        page = []
        pos, end = 0, len(blob)
        while pos < end:
            newline = blob.index(b"\n", pos)
            task_id, dead_us, info_size, body_size = blob[pos:newline].split(b" ")
            info_end = newline + 1 + int(info_size)
            info = blob[newline + 1 : info_end].decode("utf-8", "replace")
            pos = info_end + int(body_size)
            fields = info.split(":", 3)
            if len(fields) < 4 or not all(field.isdigit() for field in fields[:3]):
                fields = ["0", "0", "0", info]
            body = blob[info_end:pos].decode("utf-8", "replace")
            attempts, priority, enqueued = int(fields[0]), int(fields[1]), int(fields[2]) / 1e6
            page.append(
                DeadTask(task_id.decode(), queue, body, fields[3], attempts, float(dead_us) / 1e6, priority, enqueued)
            )
        return page, cursor.decode()
