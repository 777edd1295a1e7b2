"""Task status and results: one record per task in the keyed state, and the handle that reads it.

A task's record lives under ``(queue, "r." + task_id)`` (:mod:`asynctask.transports.state`) as one
JSON object, so a status is always written together with its result or error (never apart):

=============  ============================================================  ===========================
``status``     meaning                                                       kept for
=============  ============================================================  ===========================
``queued``     submitted by a ``@task`` function that keeps results          max(result_ttl_s, 7 days)
``running``    a worker started it                                           max(result_ttl_s, 7 days)
``done``       it returned; ``result`` is the value (JSON)                   result_ttl_s
``failed``     an attempt raised and it will run again; ``error``            max(result_ttl_s, 7 days)
``dead``       it raised on its last attempt (or was rejected); ``error``    max(result_ttl_s, 7 days)
``cancelled``  :meth:`TaskHandle.cancel` removed it before it started        max(result_ttl_s, 7 days)
``unknown``    no record: it keeps no results, expired, or was never known   -
=============  ============================================================  ===========================

``error`` is ``{"type": ..., "message": ..., "detail": ...}`` (the exception type, its message, and
the reason the runner keeps: the traceback); every record has ``attempts``, and ``started_at``
while running or ``finished_at`` once finished (wall time).
"""

from __future__ import annotations

import json
import time
from typing import Any

from asynctask.errors import PayloadError, ResultUnavailableError, TaskCancelledError, TaskFailedError
from asynctask.message import Task
from asynctask.transports.state import KeyedState

__all__ = [
    "CANCELLED",
    "DEAD",
    "DONE",
    "ERROR_KEEP_S",
    "FAILED",
    "FINAL",
    "QUEUED",
    "RUNNING",
    "UNKNOWN",
    "Results",
    "TaskHandle",
    "encode_result",
    "record_key",
]

QUEUED, RUNNING, DONE, FAILED, DEAD, CANCELLED, UNKNOWN = (
    "queued",
    "running",
    "done",
    "failed",
    "dead",
    "cancelled",
    "unknown",
)
#: the statuses after which nothing more happens to the task
FINAL = frozenset({DONE, DEAD, CANCELLED})
#: how long failures, cancels and unfinished tasks are remembered at least
ERROR_KEEP_S = 7 * 24 * 3600.0
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


#: the reasons the runner gives for the worker's own signals -> the exception type they stand for
_SIGNAL_TYPES = {"rejected": "Reject", "retries exhausted": "Retry"}


def record_key(task_id: str) -> str:
    return "r." + task_id


def encode_result(value: Any, where: str) -> str:
    """``value`` as JSON text; PayloadError naming ``where`` (the function) when it is not JSON."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"the return value of {where} is not JSON ({exc}): {value!r:.80}") from None


class Results:
    """Writes the records of the tasks a worker runs (the runners call it for workers that keep
    results).  Each write is one ``state_put``: status and result or error together."""

    def __init__(self, transport: KeyedState) -> None:
        self.transport = transport

    def _put(self, task: Task, ttl_s: float, fields: dict[str, Any]) -> None:
        record = {"id": task.id, "attempts": task.attempts, **fields}
        self.transport.state_put(task.queue, record_key(task.id), _ENCODER.encode(record), ttl_s)

    def running(self, task: Task, ttl_s: float) -> None:
        self._put(task, max(ttl_s, ERROR_KEEP_S), {"status": RUNNING, "started_at": time.time()})

    def done(self, task: Task, result_text: str, ttl_s: float) -> None:
        """``result_text`` is the JSON of the value (:func:`encode_result`)."""
        record = {"id": task.id, "attempts": task.attempts, "status": DONE, "finished_at": time.time()}
        text = _ENCODER.encode(record)[:-1] + f',"result":{result_text}}}'
        self.transport.state_put(task.queue, record_key(task.id), text, ttl_s)

    def failed(self, task: Task, reason: str, ttl_s: float, *, final: bool) -> None:
        """An attempt raised: ``failed`` (it runs again) or ``dead``; ``reason`` as the runner keeps it
        (``Type: message`` then the traceback)."""
        head = reason.splitlines()[0] if reason else ""
        error_type, _, message = head.partition(": ")
        error_type = _SIGNAL_TYPES.get(error_type, error_type)
        error = {"type": error_type, "message": message, "detail": reason}
        fields = {"status": DEAD if final else FAILED, "error": error, "finished_at": time.time()}
        self._put(task, max(ttl_s, ERROR_KEEP_S), fields)


class TaskHandle:
    """What a producer holds of a submitted task: its id and queue, and the way to its record.

    ``transport`` is the one the task was submitted to (its state store keeps the record); a handle
    made from an id alone (:meth:`~asynctask.transports.base.Transport.handle`) works as well.  An
    eager handle (``asynctask_eager``) holds its result already.
    """

    def __init__(self, task_id: str, queue: str, transport: Any, *, result_ttl_s: float | None = None) -> None:
        self.id, self.queue, self.transport = task_id, queue, transport
        self.result_ttl_s = result_ttl_s

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} on {self.queue}>"

    def record(self) -> dict[str, Any] | None:
        """The task's record (see the module docstring), or None."""
        text = self.transport.state_get(self.queue, record_key(self.id))
        return json.loads(text) if text is not None else None

    def status(self) -> str:
        """``queued``, ``running``, ``done``, ``failed``, ``dead``, ``cancelled`` or ``unknown``."""
        found = self.record()
        return str(found["status"]) if found else UNKNOWN

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once the task is done, dead or cancelled; False when ``timeout_s`` passed first
        (None: wait as long as it takes).  Reads the record again within 50 ms of each change."""
        return self._final(timeout_s) is not None

    def _final(self, timeout_s: float | None) -> dict[str, Any] | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        step = 0.001
        while True:
            found = self.record()
            if found is not None and found.get("status") in FINAL:
                return found
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(step, remaining))
            step = min(step * 2, 0.05)

    def result(self, timeout_s: float | None = None) -> Any:
        """The value the task returned, once it is done, waiting up to ``timeout_s`` (None: as long as
        it takes; 0: no wait).

        Raises :class:`TaskFailedError` (the remote error's type and message) when it ended dead,
        :class:`TaskCancelledError` when cancelled, :class:`ResultUnavailableError` when nothing is
        stored for it (at once: a task keeps a record from its submit when its function keeps
        results), and the builtin :class:`TimeoutError` when it is still queued or running (or
        failed, retrying) after ``timeout_s``.
        """
        if self.record() is None:
            raise ResultUnavailableError(
                f"no result is stored for task {self.id} on {self.queue}: it keeps none (result_ttl_s),"
                " its result expired, or the id is unknown"
            )
        found = self._final(timeout_s)
        if found is None:
            current = self.record() or {"status": UNKNOWN}
            raise TimeoutError(f"task {self.id} on {self.queue} is still {current['status']} after {timeout_s} s")
        if found["status"] == DONE:
            return found.get("result")
        if found["status"] == CANCELLED:
            raise TaskCancelledError(f"task {self.id} on {self.queue} was cancelled before it ran")
        error = found.get("error") or {}
        raise TaskFailedError(
            f"task {self.id} on {self.queue} failed after {found.get('attempts')} attempt(s):"
            f" {error.get('type', '?')}: {error.get('message', '')}",
            error_type=str(error.get("type", "")),
            error_message=str(error.get("message", "")),
        )

    def cancel(self) -> bool:
        """Cancel the task if no worker has taken it: True, and it never runs (status ``cancelled``);
        False when it is running, finished, cancelled already or unknown."""
        if not self.transport.cancel(self.queue, self.id):
            return False
        record = {"id": self.id, "status": CANCELLED, "finished_at": time.time()}
        ttl = max(self.result_ttl_s or 0.0, ERROR_KEEP_S)
        self.transport.state_put(self.queue, record_key(self.id), _ENCODER.encode(record), ttl)
        return True
