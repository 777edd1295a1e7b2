"""Workers the asynctask-workers acceptance tests run (imported by the children with --require).

Each records what it saw as one JSON line in the file named by ``payload["out"]``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from asynctask.workers import AsyncTaskWorker


def record(worker: AsyncTaskWorker, payload: dict[str, Any], **extra: Any) -> None:
    task = worker.task
    line = {
        "id": task.id if task else None,
        "attempts": task.attempts if task else None,
        "pid": os.getpid(),
        "payload": payload,
        **extra,
    }
    with open(payload["out"], "a", encoding="utf-8") as stream:
        stream.write(json.dumps(line) + "\n")


class Noop(AsyncTaskWorker):
    name = "acc_noop"

    def process(self, payload: dict[str, Any]) -> None:
        pass


class Record(AsyncTaskWorker):
    name = "acc_record"

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)


class Requeue(AsyncTaskWorker):
    name = "acc_requeue"

    def process(self, payload: dict[str, Any]) -> None:
        if payload.get("first"):
            self.requeue({"out": payload["out"], "second": True})
        record(self, payload)


class FailFirst(AsyncTaskWorker):
    name = "acc_fail"

    def process(self, payload: dict[str, Any]) -> None:
        if payload.get("fail"):
            raise ValueError(f"boom in task {payload.get('n')}")
        record(self, payload)


class FailTwice(AsyncTaskWorker):
    name = "acc_fail_twice"
    max_attempts = 3
    retry_delay_s = 0.05

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)
        if self.task is not None and self.task.attempts < 3:
            raise RuntimeError(f"failing attempt {self.task.attempts}")


class ExitMidTask(AsyncTaskWorker):
    """The first run of a task with ``payload["marker"]`` kills its own process with os._exit(1)
    (it creates the marker file first, so the next run goes through)."""

    name = "acc_exit"

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)
        marker = payload.get("marker")
        if marker and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)


class Poison(AsyncTaskWorker):
    """A task with ``payload["poison"]`` kills its child with SIGKILL every time it runs."""

    name = "acc_poison"

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)
        if payload.get("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)


class Slow(AsyncTaskWorker):
    """Writes ``payload["started"]`` (its pid) then sleeps ``payload["sleep_s"]``, then records."""

    name = "acc_slow"
    max_attempts = 3

    def process(self, payload: dict[str, Any]) -> None:
        if self.task is not None and self.task.attempts == 1 and payload.get("started"):
            Path(payload["started"]).write_text(str(os.getpid()))
        time.sleep(payload.get("sleep_s", 1.0))
        record(self, payload)


class Sleep(Slow):
    """``acc_slow`` at the defaults a user gets (``max_attempts`` 1)."""

    name = "acc_sleep"
    max_attempts = 1


class SleepPastTimeout(AsyncTaskWorker):
    name = "acc_timeout_sleep"
    timeout_s = 0.5
    max_attempts = 2
    retry_delay_s = 0.05

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)
        time.sleep(30)


class BusyPastTimeout(AsyncTaskWorker):
    """Stuck in one C call (no signal handler can run): only the supervisor can stop it."""

    name = "acc_timeout_busy"
    timeout_s = 0.5
    max_attempts = 1

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload)
        sum(range(10**11))


def _concurrent_record(worker: AsyncTaskWorker, payload: dict[str, Any]) -> None:
    """Record, with whether ``self.task`` still named this payload after the wait (a context variable)."""
    task = worker.task
    record(worker, payload, task_matches=task is not None and task.payload == payload, running=_RUNNING[0])


_RUNNING = [0]


class Threads8(AsyncTaskWorker):
    """``def process`` on 8 threads: writes ``payload["started"]`` (its pid) when given, sleeps
    ``payload["sleep_s"]`` (default 0.02), records."""

    name = "acc_threads8"
    concurrency = 8

    def process(self, payload: dict[str, Any]) -> None:
        if payload.get("started"):
            Path(payload["started"]).write_text(str(os.getpid()))
        _RUNNING[0] += 1
        try:
            time.sleep(payload.get("sleep_s", 0.02))
        finally:
            _RUNNING[0] -= 1
        _concurrent_record(self, payload)


class Async50(AsyncTaskWorker):
    """``async def process`` as 50 coroutines: as ``acc_threads8`` with ``await asyncio.sleep``."""

    name = "acc_async50"
    concurrency = 50

    async def setup(self) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()

    async def process(self, payload: dict[str, Any]) -> None:
        import asyncio

        assert asyncio.get_running_loop() is self.loop  # setup and tasks share the child's loop
        if payload.get("started"):
            Path(payload["started"]).write_text(str(os.getpid()))
        _RUNNING[0] += 1
        try:
            await asyncio.sleep(payload.get("sleep_s", 0.02))
        finally:
            _RUNNING[0] -= 1
        _concurrent_record(self, payload)


class ThreadsPastTimeout(AsyncTaskWorker):
    """4 threads, ``timeout_s`` 0.5: ``payload["overrun"]`` sleeps 30 s, the others ``sleep_s``."""

    name = "acc_threads_timeout"
    concurrency = 4
    timeout_s = 0.5
    max_attempts = 2
    retry_delay_s = 0.05

    def process(self, payload: dict[str, Any]) -> None:
        record(self, payload, started=True)
        time.sleep(
            30 if payload.get("overrun") and self.task and self.task.attempts == 1 else payload.get("sleep_s", 0.2)
        )
        record(self, payload)


class AsyncPastTimeout(AsyncTaskWorker):
    """As ``acc_threads_timeout`` with coroutines: the overrunning one is cancelled at 0.5 s."""

    name = "acc_async_timeout"
    concurrency = 4
    timeout_s = 0.5
    max_attempts = 2
    retry_delay_s = 0.05

    async def process(self, payload: dict[str, Any]) -> None:
        import asyncio

        record(self, payload, started=True)
        overrun = payload.get("overrun") and self.task and self.task.attempts == 1
        await asyncio.sleep(30 if overrun else payload.get("sleep_s", 0.2))
        record(self, payload)
