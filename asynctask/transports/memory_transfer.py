"""The transfer hooks of the memory transport (:mod:`asynctask.transports.transfer`).

Waiting tasks page in id order (the cursor is the last id seen); dead letters in order of death
(the cursor is the position after the page: dead letters are only appended or removed, so a purge
while paging may skip some, which the contract allows).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from asynctask.errors import TaskDecodeError
from asynctask.message import DeadTask, Task, decode_body
from asynctask.transports.transfer import TaskRecord, Transfer

if TYPE_CHECKING:
    from asynctask.transports.memory import _Queue, _Record, _Store

__all__ = ["MemoryTransfer"]


class MemoryTransfer(Transfer):
    """Mixin of :class:`~asynctask.transports.memory.MemoryTransport` (listed before it)."""

    _store: _Store
    _clock: Callable[[], float]

    if TYPE_CHECKING:

        def _queue(self, name: str) -> _Queue: ...
        def _promote(self, queue: _Queue, now: float) -> None: ...
        def _set_state(self, queue: _Queue, record: _Record, state: str | None) -> None: ...
        def _make_ready(self, queue: _Queue, record: _Record, now: float, delay_s: float) -> None: ...

    def _waiting(self, queue: _Queue, now: float) -> list[_Record]:
        self._promote(queue, now)
        return [r for r in queue.records.values() if r.state in ("ready", "delayed")]

    @staticmethod
    def _record(record: _Record, now: float) -> TaskRecord:
        delay = max(record.due_at - now, 0.0) if record.state == "delayed" else 0.0
        return TaskRecord(record.id, record.body, record.priority, record.deliveries, record.enqueued_at, delay)

    def _peek_tasks(self, queue: str, after: str, limit: int) -> tuple[list[TaskRecord], str]:
        with self._store.lock:
            state = self._store.queues.get(queue)
            if state is None:
                return [], ""
            now = self._clock()
            waiting = sorted(self._waiting(state, now), key=lambda r: r.id)
            start = bisect.bisect_right([r.id for r in waiting], after) if after else 0
            page = waiting[start : start + limit]
            more = start + limit < len(waiting)
            return [self._record(r, now) for r in page], page[-1].id if more and page else ""

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        with self._store.lock:
            state = self._store.queues.get(queue)
            if state is None:
                return []
            now = self._clock()
            taken = []
            for record in itertools.islice(self._waiting(state, now), max_count):
                stored = self._record(record, now)
                try:
                    payload, meta = decode_body(record.body)
                except TaskDecodeError:
                    payload, meta = {}, {}
                self._set_state(state, record, "in_flight")
                record.receipt = uuid.uuid4().hex
                record.lease_until = now + lease_s
                heapq.heappush(state.in_flight, (record.lease_until, record.version, record.id))
                task = Task(
                    record.id, queue, payload, record.deliveries, record.enqueued_at, record.priority, record.receipt,
                    meta,
                )  # fmt: skip
                taken.append((stored, task))
            return taken

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        from asynctask.transports.memory import _Record  # noqa: PLC0415 - memory imports this module

        stored = []
        with self._store.changed:
            state = self._queue(queue)
            now = self._clock()
            for item in records:
                if item.id in state.records or item.id in state.dead:
                    stored.append(False)
                    continue
                record = _Record(item.id, item.body, item.priority, item.enqueued_at, item.attempts, state="")
                state.records[record.id] = record
                self._make_ready(state, record, now, item.delay_s)
                stored.append(True)
            self._store.changed.notify_all()
        return stored

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        with self._store.lock:
            state = self._store.queues.get(queue)
            if state is None:
                return [], ""
            start = int(after) if after.isdigit() else 0
            page = list(itertools.islice(state.dead.values(), start, start + limit))
            more = start + limit < len(state.dead)
            return page, str(start + limit) if more else ""

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        stored = []
        with self._store.lock:
            state = self._queue(queue)
            for item in records:
                if item.id in state.dead or item.id in state.records:
                    stored.append(False)
                    continue
                state.dead[item.id] = item.to_dead(queue)
                state.dead_priority[item.id] = item.priority
                stored.append(True)
        return stored
