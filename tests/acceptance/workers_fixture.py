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
