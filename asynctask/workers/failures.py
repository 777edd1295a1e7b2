"""What a failed attempt becomes: given back to run again after a delay, or dead-lettered.

:func:`failure` is the runner's policy for an exception out of ``process`` (see
:mod:`asynctask.workers.runner`): ``Reject`` dead-letters at once; ``Retry`` gives the task back with
its own delay (else the worker's backoff) while attempts remain, and dead-letters it as "retries
exhausted" once they are spent; any other exception (a :class:`TaskTimeout` too) gives it back with
the worker's backoff while attempts remain, else dead-letters it with the exception type, message and
traceback.
"""

from __future__ import annotations

import logging
import traceback

from asynctask.message import Task
from asynctask.workers.base import AsyncTaskWorker, Reject, Retry, TaskTimeout

__all__ = ["Failure", "failure"]

#: (the delay before the next attempt, or None to dead-letter; the reason to keep)
Failure = tuple[float | None, str]

# the runner's logger: these lines are the runner's, wherever the policy is written
logger = logging.getLogger("asynctask.workers.runner")


def failure(worker: AsyncTaskWorker, task: Task, exc: BaseException) -> tuple[float | None, str]:
    """(the delay before the next attempt, or None to dead-letter; the reason to keep).

    Call it in the ``except`` block that caught ``exc`` (the reason carries its traceback).  Logs a
    retry; the caller logs a dead letter.
    """
    if isinstance(exc, Reject):
        return None, f"rejected: {exc.reason}"
    if isinstance(exc, Retry):
        if task.attempts >= worker.max_attempts_for(task):
            return None, (
                f"retries exhausted: Retry raised on attempt {task.attempts} of max_attempts="
                f"{worker.max_attempts_for(task)}" + (f": {exc.reason}" if exc.reason else "")
            )
        delay = exc.delay_s if exc.delay_s is not None else worker.retry_delay_for(task)
        logger.info(
            "task %s on %s: retry requested%s (attempt %d of %d), again in %.2f s",
            task.id,
            task.queue,
            f": {exc.reason}" if exc.reason else "",
            task.attempts,
            worker.max_attempts_for(task),
            delay,
        )
        return delay, ""
    if isinstance(exc, TaskTimeout):
        reason = f"TaskTimeout: the task ran longer than timeout_s={worker.timeout_for(task)}"
    else:
        reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    if task.attempts < worker.max_attempts_for(task):
        delay = worker.retry_delay_for(task)
        logger.warning(
            "task %s on %s failed (attempt %d of %d), retrying in %.2f s: %s",
            task.id,
            task.queue,
            task.attempts,
            worker.max_attempts_for(task),
            delay,
            reason.splitlines()[0],
        )
        return delay, reason
    return None, reason
