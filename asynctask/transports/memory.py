"""The in-process transport: ``memory://[name]`` (alias ``localmem://``).

For tests and eager runs.  Every memory transport opened with the same URL in one process shares
one store; the store lives as long as the process.  Options: ``lease_s`` (default lease).

Layout, per queue (all under one lock, so every operation is atomic):

* ``records``: task id -> record (body, priority, deliveries so far, current receipt, lease end);
* a ready heap ordered by (-priority, sequence), a delayed heap by due time and an in-flight heap by
  lease end, each cleaned lazily: an entry counts only while its record still carries the version it
  was pushed with;
* ``dead``: dead-letter entries in order of death.

A fetch first promotes due delayed tasks and expired leases, so no daemon is needed.  Waiting on an
empty queue blocks on a condition variable (woken by submit, nack and replay).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from asynctask.errors import TaskDecodeError
from asynctask.message import DeadTask, QueueStats, Task, decode_body, new_task_id
from asynctask.transports.base import (
    Transport,
    dead_reason_for_undecodable,
    option_positive_float,
    parse_url,
    take_options,
)
from asynctask.transports.memory_transfer import MemoryTransfer

Clock = Callable[[], float]

_READY, _DELAYED, _IN_FLIGHT = "ready", "delayed", "in_flight"


@dataclass
class _Record:
    id: str
    body: str
    priority: int
    enqueued_at: float
    deliveries: int = 0
    state: str = _READY
    version: int = 0
    receipt: str = ""
    lease_until: float = 0.0
    due_at: float = 0.0


@dataclass
class _Queue:
    records: dict[str, _Record] = field(default_factory=dict)
    ready: list[tuple[int, int, int, str]] = field(default_factory=list)
    delayed: list[tuple[float, int, int, str]] = field(default_factory=list)
    in_flight: list[tuple[float, int, str]] = field(default_factory=list)
    dead: dict[str, DeadTask] = field(default_factory=dict)
    dead_priority: dict[str, int] = field(default_factory=dict)  # a replay keeps the priority
    counts: dict[str, int] = field(default_factory=lambda: {_READY: 0, _DELAYED: 0, _IN_FLIGHT: 0})


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.queues: dict[str, _Queue] = {}
        self.claims: dict[str, float] = {}
        #: (queue, key) -> (value, expires at)
        self.state: dict[tuple[str, str], tuple[str, float]] = {}
        self.sequence = itertools.count()


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(key: str) -> _Store:
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _Store()
        return store


class MemoryTransport(MemoryTransfer, Transport):
    """All queues in this process's memory; thread-safe.  ``clock`` may be injected for tests."""

    schemes = ("memory", "localmem")

    def __init__(self, url: str = "memory://", *, clock: Clock = time.time) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        options = take_options(parsed, {"lease_s": option_positive_float})
        self.lease_s = options.get("lease_s", self.lease_s)
        self._store = _store_for((parsed.host or "") + parsed.path)
        self._clock = clock

    # -- helpers (caller holds the lock) -------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        queue = self._store.queues.get(name)
        if queue is None:
            queue = self._store.queues[name] = _Queue()
        return queue

    def _set_state(self, queue: _Queue, record: _Record, state: str | None) -> None:
        if record.state in queue.counts and record.id in queue.records:
            queue.counts[record.state] -= 1
        record.version += 1
        if state is None:
            del queue.records[record.id]
            return
        record.state = state
        queue.counts[state] += 1

    def _make_ready(self, queue: _Queue, record: _Record, now: float, delay_s: float) -> None:
        record.receipt = ""
        record.due_at = now + delay_s
        if delay_s > 0:
            self._set_state(queue, record, _DELAYED)
            heapq.heappush(queue.delayed, (record.due_at, next(self._store.sequence), record.version, record.id))
        else:
            self._set_state(queue, record, _READY)
            heapq.heappush(queue.ready, (-record.priority, next(self._store.sequence), record.version, record.id))

    def _promote(self, queue: _Queue, now: float) -> None:
        while queue.delayed and queue.delayed[0][0] <= now:
            _, _, version, task_id = heapq.heappop(queue.delayed)
            record = queue.records.get(task_id)
            if record is not None and record.version == version:
                self._make_ready(queue, record, now, 0)
        while queue.in_flight and queue.in_flight[0][0] <= now:
            _, version, task_id = heapq.heappop(queue.in_flight)
            record = queue.records.get(task_id)
            if record is not None and record.version == version and record.lease_until <= now:
                self._make_ready(queue, record, now, 0)

    def _current(self, task: Task) -> tuple[_Queue, _Record] | None:
        queue = self._store.queues.get(task.queue)
        record = queue.records.get(task.id) if queue else None
        if queue is None or record is None or record.state != _IN_FLIGHT or record.receipt != task.receipt:
            return None
        return queue, record

    def _bury(self, name: str, queue: _Queue, record: _Record, reason: str, now: float) -> None:
        self._set_state(queue, record, None)
        queue.dead[record.id] = DeadTask(
            record.id, name, record.body, reason, record.deliveries, now, record.priority, record.enqueued_at
        )
        queue.dead_priority[record.id] = record.priority

    # -- contract ----------------------------------------------------------------------------

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        ids = []
        with self._store.changed:
            now = self._clock()
            state = self._queue(queue)
            for body in bodies:
                record = _Record(new_task_id(), body, priority, now)
                state.records[record.id] = record
                record.state = ""
                self._make_ready(state, record, now, delay_s)
                ids.append(record.id)
            self._store.changed.notify_all()
        return ids

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        deadline = time.monotonic() + timeout_s
        with self._store.changed:
            while True:
                tasks = self._take(queue, max_count, lease_s)
                remaining = deadline - time.monotonic()
                if tasks or remaining <= 0:
                    return tasks
                state = self._store.queues.get(queue)
                if state is not None and (state.delayed or state.in_flight):
                    # Wake when the next delayed task or lease is due, whichever comes first.
                    due = min([entry[0] for entry in state.delayed[:1] + state.in_flight[:1]])
                    remaining = min(remaining, max(due - self._clock(), 0.001))
                self._store.changed.wait(remaining)

    def _take(self, name: str, max_count: int, lease_s: float) -> list[Task]:
        queue = self._store.queues.get(name)
        if queue is None:
            return []
        now = self._clock()
        self._promote(queue, now)
        tasks: list[Task] = []
        while queue.ready and len(tasks) < max_count:
            _, _, version, task_id = heapq.heappop(queue.ready)
            record = queue.records.get(task_id)
            if record is None or record.version != version:
                continue
            record.deliveries += 1
            try:
                payload, meta = decode_body(record.body)
            except TaskDecodeError as exc:
                self._bury(name, queue, record, dead_reason_for_undecodable(exc), now)
                continue
            self._set_state(queue, record, _IN_FLIGHT)
            record.receipt = uuid.uuid4().hex
            record.lease_until = now + lease_s
            heapq.heappush(queue.in_flight, (record.lease_until, record.version, record.id))
            tasks.append(
                Task(
                    record.id,
                    name,
                    payload,
                    record.deliveries,
                    record.enqueued_at,
                    record.priority,
                    record.receipt,
                    meta,
                )
            )
        return tasks

    def _ack(self, task: Task) -> None:
        with self._store.lock:
            current = self._current(task)
            if current is not None:
                self._set_state(current[0], current[1], None)

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        with self._store.changed:
            current = self._current(task)
            if current is None:
                return
            queue, record = current
            if not count_attempt:
                record.deliveries -= 1
            self._make_ready(queue, record, self._clock(), delay_s)
            self._store.changed.notify_all()

    def _extend(self, task: Task, lease_s: float) -> bool:
        with self._store.lock:
            current = self._current(task)
            if current is None:
                return False
            queue, record = current
            record.lease_until = self._clock() + lease_s
            heapq.heappush(queue.in_flight, (record.lease_until, record.version, record.id))
            return True

    def _dead(self, task: Task, reason: str) -> None:
        with self._store.lock:
            current = self._current(task)
            if current is not None:
                self._bury(task.queue, current[0], current[1], reason, self._clock())

    def _stats(self, queue: str) -> QueueStats:
        with self._store.lock:
            state = self._store.queues.get(queue)
            if state is None:
                return QueueStats()
            self._promote(state, self._clock())
            counts = state.counts
            now = self._clock()
            oldest = min((r.enqueued_at for r in state.records.values() if r.state == _READY), default=None)
            return QueueStats(
                counts[_READY],
                counts[_DELAYED],
                counts[_IN_FLIGHT],
                len(state.dead),
                None if oldest is None else max(now - oldest, 0.0),
            )

    def _queues(self) -> list[str]:
        with self._store.lock:
            return sorted(self._store.queues)

    def _purge(self, queue: str) -> int:
        with self._store.lock:
            state = self._store.queues.get(queue)
            if state is None:
                return 0
            doomed = [r for r in state.records.values() if r.state in (_READY, _DELAYED)]
            for record in doomed:
                self._set_state(state, record, None)
            state.ready.clear()
            state.delayed.clear()
            return len(doomed)

    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        with self._store.lock:
            state = self._store.queues.get(queue)
            return list(itertools.islice(state.dead.values(), limit)) if state else []

    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op(queue, ids, self._replay_one)

    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op(queue, ids, None)

    def _dead_op(self, name: str, ids: list[str] | None, replay: Callable[[_Queue, str, float], None] | None) -> int:
        """Take the chosen dead tasks out of the dead letters, replaying each when ``replay`` is given."""
        with self._store.changed:
            state = self._store.queues.get(name)
            if state is None:
                return 0
            chosen = list(state.dead) if ids is None else [i for i in ids if i in state.dead]
            now = self._clock()
            for task_id in chosen:
                if replay is not None:
                    replay(state, task_id, now)
                del state.dead[task_id]
                state.dead_priority.pop(task_id, None)
            if replay is not None and chosen:
                self._store.changed.notify_all()
            return len(chosen)

    def _replay_one(self, queue: _Queue, task_id: str, now: float) -> None:
        dead = queue.dead[task_id]
        record = _Record(dead.id, dead.body, queue.dead_priority.get(task_id, 0), now, state="")
        queue.records[record.id] = record
        self._make_ready(queue, record, now, 0)

    # -- keyed state -------------------------------------------------------------------------------

    def _live(self, queue: str, key: str, now: float) -> str | None:
        found = self._store.state.get((queue, key))
        if found is None:
            return None
        if found[1] <= now:
            del self._store.state[(queue, key)]
            return None
        return found[0]

    def _state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        with self._store.lock:
            self._store.state[(queue, key)] = (value, self._clock() + ttl_s)

    def _state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        with self._store.lock:
            now = self._clock()
            if self._live(queue, key, now) is not None:
                return False
            self._store.state[(queue, key)] = (value, now + ttl_s)
            return True

    def _state_get(self, queue: str, key: str) -> str | None:
        with self._store.lock:
            return self._live(queue, key, self._clock())

    def _state_delete(self, queue: str, key: str) -> bool:
        with self._store.lock:
            found = self._live(queue, key, self._clock()) is not None
            self._store.state.pop((queue, key), None)
            return found

    def _state_keys(self, queue: str, prefix: str) -> list[str]:
        with self._store.lock:
            now = self._clock()
            keys = [key for (name, key) in self._store.state if name == queue and key.startswith(prefix)]
            return [key for key in keys if self._live(queue, key, now) is not None]

    def _state_sweep(self) -> int:
        with self._store.lock:
            now = self._clock()
            expired = [where for where, (_, until) in self._store.state.items() if until <= now]
            for where in expired:
                del self._store.state[where]
            return len(expired)

    def _cancel(self, queue: str, task_id: str) -> bool:
        with self._store.lock:
            found = self._store.queues.get(queue)
            if found is not None:
                self._promote(found, self._clock())  # a lapsed lease counts as ready, as a fetch sees it
            record = found.records.get(task_id) if found else None
            if found is None or record is None or record.state == _IN_FLIGHT:
                return False
            self._set_state(found, record, None)  # its heap entries are skipped: the version moved
            return True

    def _claim_once(self, key: str, ttl: float) -> bool:
        with self._store.lock:
            now = self._clock()
            if self._store.claims.get(key, 0.0) > now:
                return False
            self._store.claims[key] = now + ttl
            return True
