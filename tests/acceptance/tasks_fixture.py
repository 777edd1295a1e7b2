"""``@task`` functions the asynctask-workers acceptance tests of ``@task`` run (test_tasks_cli.py).

The worker children import this module with ``--require tasks_fixture`` (and no ``asynctask_workers``
setting, so they consume the queues below on their own); the test process imports it to submit.
"""

from __future__ import annotations

import time
from pathlib import Path

from asynctask import task

#: the queue of every function here but :func:`expiring`
QUEUE = "acc_tasks"
#: a queue of its own for the records that expire, so its state is that task's alone
EXPIRE_QUEUE = "acc_tasks_expire"
#: how long :func:`explode` stays ``failed`` between its two attempts (0.75 to 1.25 times this)
EXPLODE_RETRY_S = 1.0


@task(queue=QUEUE, result_ttl_s=60)
def add(a: int, b: int) -> int:
    return a + b


@task(queue=QUEUE, max_attempts=2, retry_delay_s=EXPLODE_RETRY_S, result_ttl_s=60)
def explode(message: str) -> None:
    raise ValueError(message)


@task(queue=QUEUE, result_ttl_s=60)
def touch(path: str) -> str:
    """The side effect a cancelled task must never have: a file at ``path``."""
    Path(path).write_text(str(time.time()), encoding="utf-8")
    return path


@task(queue=QUEUE, result_ttl_s=60)
def finish_time(sleep_s: float) -> float:
    """Sleep, then return the wall time it finished at (the last thing it does)."""
    time.sleep(sleep_s)
    return time.time()


@task(queue=EXPIRE_QUEUE, result_ttl_s=1)
def expiring(value: str) -> str:
    return value
