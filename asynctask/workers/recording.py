"""What a runner writes for a worker that keeps results: each task's status with its result or error.

:class:`ResultRecording` is mixed into :class:`~asynctask.workers.runner.Runner` (and so into the
lane runners): it writes through the runner's transport calls that survive an outage, and only for
tasks whose worker keeps results (``result_ttl_s``, or the ``@task`` function's): a worker that
keeps none pays one attribute check per task.  The records are :mod:`asynctask.results`'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asynctask.message import Task
from asynctask.results import Results, encode_result
from asynctask.transports.base import Transport
from asynctask.workers.base import AsyncTaskWorker

__all__ = ["ResultRecording"]

T = TypeVar("T")


class ResultRecording:
    """Result and status writes of a runner (see the module docstring)."""

    worker: AsyncTaskWorker
    transport: Transport
    #: the worker keeps results for some tasks: look each task up
    keeps_results: bool

    def _retrying(self, what: str, call: Callable[[], T]) -> T | None:
        raise NotImplementedError

    def result_ttl(self, task: Task) -> float | None:
        """How long ``task``'s record is kept, None when it keeps none."""
        return self.worker.result_ttl_for(task) if self.keeps_results else None

    def result_text(self, task: Task, value: Any) -> str:
        """``value`` as JSON; raises PayloadError (a failed attempt) when it is not JSON."""
        return encode_result(value, self.worker.result_name(task))

    def record_running(self, task: Task, ttl_s: float) -> None:
        self._retrying("state_put", lambda: Results(self.transport).running(task, ttl_s))

    def record_done(self, task: Task, result_text: str, ttl_s: float) -> None:
        self._retrying("state_put", lambda: Results(self.transport).done(task, result_text, ttl_s))

    def record_failed(self, task: Task, reason: str, *, final: bool) -> None:
        ttl = self.result_ttl(task)
        if ttl is not None:
            text = reason or "Retry: retry requested"
            self._retrying("state_put", lambda: Results(self.transport).failed(task, text, ttl, final=final))
