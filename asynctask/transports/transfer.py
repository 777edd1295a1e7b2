"""Moving stored tasks out of a store and into another: the part of the contract that ``asynctask
export``, ``import`` and ``migrate`` stand on, and that pages dead letters for the dashboard.

A :class:`TaskRecord` is a stored task with everything that makes it what it is: id, body (payload
and meta), priority, attempts, when it was enqueued, the delay it has left, and for a dead letter
the reason and time.  :class:`Transfer` (mixed into :class:`~asynctask.transports.base.Transport`)
adds five methods; each transport answers their hooks (``tests/transports/test_contract_transfer.py``
checks every one):

* :meth:`Transfer.peek_tasks` pages through the waiting tasks (ready and delayed; not those a worker
  holds) without changing anything: a snapshot for ``export``;
* :meth:`Transfer.take_tasks` reserves waiting tasks, delayed ones included, as ``get_tasks``
  reserves ready ones: the caller stores them elsewhere, then acks them (``ack_tasks``), so a task
  leaves this store only after the other one holds it (at least once).  A reservation whose lease
  runs out puts the task back, ready; the attempt counter is not raised by a take;
* :meth:`Transfer.put_tasks` stores records as waiting tasks, keeping id, priority, attempts, the
  time enqueued and the delay left; a record whose id the queue already holds (waiting, held or
  dead) is skipped, so an import or migrate run again stores nothing twice (AMQP cannot tell: it
  stores every record; its docstring says so);
* :meth:`Transfer.dead_page` pages through the dead letters, oldest first, from a cursor;
* :meth:`Transfer.put_dead` stores records as dead letters (skipping ids already dead).

Cursors are opaque strings: ``""`` asks for the first page, and a page returns the cursor of the
next one, ``""`` when there is none.  Records added while paging may or may not be seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asynctask.errors import PayloadError, TaskDecodeError, TransportError
from asynctask.message import (
    DeadTask,
    StoredBody,
    Task,
    decode_body,
    encode_body,
    validate_priority,
    validate_queue_name,
)

__all__ = ["MAX_PAGE", "TaskRecord", "Transfer", "UnsupportedOperationError"]

#: the largest page or batch any of these methods takes
MAX_PAGE = 10_000


class UnsupportedOperationError(TransportError):
    """This transport cannot do that operation (the message says which and what to use instead)."""


@dataclass(frozen=True)
class TaskRecord(StoredBody):
    """A stored task, as export writes it and import and migrate store it.

    ``body`` is the stored text (payload, and meta when there is any: :func:`encode_body`);
    ``attempts`` the deliveries so far that counted; ``delay_s`` the delay it had left when read
    (0: ready).  ``reason`` and ``dead_at`` are set for dead letters only.
    """

    id: str
    body: str
    priority: int = 0
    attempts: int = 0
    enqueued_at: float = 0.0
    delay_s: float = 0.0
    reason: str | None = None
    dead_at: float | None = None

    @classmethod
    def from_dead(cls, dead: DeadTask) -> TaskRecord:
        return cls(
            dead.id, dead.body, dead.priority, dead.attempts, dead.enqueued_at or dead.dead_at, 0.0, dead.reason,
            dead.dead_at,
        )  # fmt: skip

    def to_dead(self, queue: str) -> DeadTask:
        dead_at = self.dead_at if self.dead_at is not None else self.enqueued_at
        return DeadTask(
            self.id, queue, self.body, self.reason or "", self.attempts, dead_at, self.priority, self.enqueued_at
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``asynctask export``): payload and meta decoded, or the raw
        ``body`` when it does not decode; ``reason`` / ``dead_at`` only for dead letters."""
        out: dict[str, Any] = {"id": self.id}
        try:
            out["payload"], out["meta"] = decode_body(self.body)
        except TaskDecodeError:
            out["body"] = self.body
        out.update(priority=self.priority, attempts=self.attempts, enqueued_at=self.enqueued_at, delay_s=self.delay_s)
        if self.reason is not None or self.dead_at is not None:
            out.update(reason=self.reason, dead_at=self.dead_at)
        return out

    @classmethod
    def from_json(cls, data: object) -> TaskRecord:
        """The inverse of :meth:`to_json`.  Raises :class:`PayloadError` naming the bad field."""
        if not isinstance(data, dict):
            raise PayloadError(f"a task record must be a JSON object, not {type(data).__name__}")
        task_id = data.get("id")
        if not isinstance(task_id, str) or not 1 <= len(task_id) <= 200:
            raise PayloadError(f"task record id {task_id!r:.80}: a string of 1 to 200 characters is allowed")
        if "body" in data:
            body = data["body"]
            if not isinstance(body, str):
                raise PayloadError(f"task record {task_id}: body must be a string")
        else:
            body = encode_body(data.get("payload"), data.get("meta") or None)
        attempts = data.get("attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise PayloadError(f"task record {task_id}: attempts {attempts!r:.40}: an integer >= 0 is allowed")
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise PayloadError(f"task record {task_id}: reason must be a string or null")
        return cls(
            task_id,
            body,
            validate_priority(data.get("priority", 0)),
            attempts,
            _seconds(data.get("enqueued_at", 0.0), task_id, "enqueued_at"),
            _seconds(data.get("delay_s", 0.0), task_id, "delay_s"),
            reason,
            None if data.get("dead_at") is None else _seconds(data["dead_at"], task_id, "dead_at"),
        )


def _seconds(value: object, task_id: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PayloadError(f"task record {task_id}: {name} {value!r:.40}: a finite number >= 0 is allowed")
    return float(value)


def _page(limit: object, name: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"{name}={limit!r:.40}: an integer from 1 to {MAX_PAGE} is allowed")
    return limit


def _cursor(after: object) -> str:
    if not isinstance(after, str):
        raise ValueError(f"after={after!r:.40}: a cursor string ('' for the first page) is allowed")
    return after


def _records(records: Sequence[TaskRecord]) -> list[TaskRecord]:
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, TaskRecord) for r in records):
        raise TypeError("records must be a list or tuple of TaskRecord")
    if len(records) > MAX_PAGE:
        raise ValueError(f"{len(records)} records: at most {MAX_PAGE} a call is allowed")
    return list(records)


class Transfer:
    """The transfer methods of a transport.  Public methods check their arguments (ValueError,
    QueueNameError, TypeError) and call the ``_transfer_*`` hooks; a transport that cannot do one
    leaves its hook raising :class:`UnsupportedOperationError`."""

    def peek_tasks(self, queue: str, *, after: str = "", limit: int = 1000) -> tuple[list[TaskRecord], str]:
        """A page of the waiting tasks (ready and delayed) in a stable order, and the next cursor."""
        return self._peek_tasks(validate_queue_name(queue), _cursor(after), _page(limit))

    def take_tasks(self, queue: str, max_count: int, *, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        """Reserve up to ``max_count`` waiting tasks, delayed ones included, for ``lease_s`` seconds,
        without waiting.  Each comes as its record and the :class:`Task` to ack once stored elsewhere."""
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s < math.inf:
            raise ValueError(f"lease_s={lease_s!r:.40}: a finite number of seconds > 0 is allowed")
        return self._take_tasks(validate_queue_name(queue), _page(max_count, "max_count"), float(lease_s))

    def put_tasks(self, queue: str, records: Sequence[TaskRecord]) -> list[bool]:
        """Store records as waiting tasks; True for each stored, False for each skipped (its id is
        in the queue already)."""
        checked = _records(records)
        return self._put_tasks(validate_queue_name(queue), checked) if checked else []

    def dead_page(self, queue: str, *, after: str = "", limit: int = 100) -> tuple[list[DeadTask], str]:
        """A page of the dead letters, oldest first, and the next cursor (``""`` at the end)."""
        return self._dead_page(validate_queue_name(queue), _cursor(after), _page(limit))

    def put_dead(self, queue: str, records: Sequence[TaskRecord]) -> list[bool]:
        """Store records as dead letters; True for each stored, False for each whose id is dead already."""
        checked = _records(records)
        return self._put_dead(validate_queue_name(queue), checked) if checked else []

    # -- hooks ---------------------------------------------------------------------------------

    def _unsupported_transfer(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{type(self).__name__} cannot {what}")

    def _peek_tasks(self, queue: str, after: str, limit: int) -> tuple[list[TaskRecord], str]:
        raise self._unsupported_transfer("list waiting tasks without taking them (use migrate)")

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        raise self._unsupported_transfer("take waiting tasks")

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        raise self._unsupported_transfer("store task records")

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        raise self._unsupported_transfer("page through dead letters")

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        raise self._unsupported_transfer("store dead letters")
