"""Workers, a middleware and a ``@periodic_task`` for test_schedules_cli.py, imported by the
``asynctask-workers`` children (``asynctask_require: [schedules_fixture]``), by ``asynctask
schedules`` and by producers (``asynctask_middleware: [schedules_fixture.Recorder]``).

Each appends what it saw as one JSON line to a file: the workers to ``payload["out"]``, the
middleware to the file named by ``$SCHEDULES_FIXTURE_HOOKS`` (nothing when unset), the periodic
task to the file named by ``$SCHEDULES_FIXTURE_TICKS``.  The periodic task is only defined when that
variable is set, so that the other tests requiring this module schedule nothing of their own.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from asynctask import periodic_task
from asynctask.message import Task
from asynctask.workers import AsyncTaskWorker

HOOKS_ENV = "SCHEDULES_FIXTURE_HOOKS"
TICKS_ENV = "SCHEDULES_FIXTURE_TICKS"
#: the queue of the periodic task
TICKS_QUEUE = "sched_fx_ticks"
#: the meta key Recorder.before_submit adds in a producer
META_KEY = "mw_trace"


def append(path: str, **line: Any) -> None:
    """One JSON line, written with a single ``write`` (the processes share the file)."""
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps({"pid": os.getpid(), "at": time.time(), **line}) + "\n")


class Tick(AsyncTaskWorker):
    """The worker of the ``every_s`` entry: records each run (task id, wall time, pid)."""

    name = "sched_fx_tick"

    def process(self, payload: dict[str, Any]) -> None:
        assert self.task is not None
        append(payload["out"], id=self.task.id)


class Outcomes(AsyncTaskWorker):
    """``payload["kind"]``: ``ok`` succeeds, ``once`` fails its first attempt, ``always`` fails every
    attempt (two: dead-lettered); each run records its attempt and the task's meta."""

    name = "sched_fx_outcomes"
    max_attempts = 2
    retry_delay_s = 0.05

    def process(self, payload: dict[str, Any]) -> None:
        task = self.task
        assert task is not None
        kind = payload["kind"]
        append(payload["out"], id=task.id, kind=kind, attempt=task.attempts, meta=dict(task.meta))
        if kind == "always" or (kind == "once" and task.attempts == 1):
            raise RuntimeError(f"{kind}: failing attempt {task.attempts}")


class Recorder:
    """Every hook call, appended to ``$SCHEDULES_FIXTURE_HOOKS``; ``before_submit`` adds
    :data:`META_KEY` to the task's meta (a plain class: subclassing Middleware is optional)."""

    def _record(self, hook: str, **fields: Any) -> None:
        path = os.environ.get(HOOKS_ENV)
        if path:
            append(path, hook=hook, **fields)

    def on_worker_start(self, worker: Any) -> None:
        self._record("on_worker_start", worker=worker.name)

    def before_submit(self, queue: str, payload: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        meta[META_KEY] = f"added by pid {os.getpid()}"
        self._record("before_submit", queue=queue, kind=(payload or {}).get("kind"))

    def before_process(self, task: Task) -> None:
        self._record("before_process", id=task.id, attempt=task.attempts)

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        self._record(
            "after_process", id=task.id, attempt=task.attempts, outcome=outcome, error=repr(error) if error else None
        )

    def on_worker_stop(self, worker: Any) -> None:
        self._record("on_worker_stop", worker=worker.name)


if os.environ.get(TICKS_ENV):

    @periodic_task(every_s=1, queue=TICKS_QUEUE)
    def tick() -> None:
        """Fired every second by any ``--scheduler`` that requires this module."""
        append(os.environ[TICKS_ENV], what="tick")
