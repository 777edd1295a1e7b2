"""Example workers for ``make demo`` (``examples/demo.py``); import with ``--require demo_workers``.

* ``greet``: prints nothing, just logs a greeting every 50 tasks (a no-op-ish fast worker);
* ``thumbnail``: pretends to resize an image (a few milliseconds of sleep);
* ``flaky``: fails about one time in five, retried up to 4 attempts with a short backoff; a payload
  with ``"poison": true`` always fails and ends in the dead-letter store with its traceback;
* ``crawl``: follows links by calling ``self.requeue`` for each child page, up to a depth.
"""

from __future__ import annotations

import random
import time
from typing import Any

from asynctask.workers import AsyncTaskWorker


class Greet(AsyncTaskWorker):
    name = "greet"

    def process(self, payload: dict[str, Any]) -> None:
        if payload.get("n", 0) % 50 == 0:
            self.logger.info("hello, %s (task %s)", payload.get("who", "world"), payload.get("n"))


class Thumbnail(AsyncTaskWorker):
    name = "thumbnail"
    timeout_s = 5

    def process(self, payload: dict[str, Any]) -> None:
        time.sleep(random.uniform(0.002, 0.01))


class Flaky(AsyncTaskWorker):
    name = "flaky"
    max_attempts = 4
    retry_delay_s = 0.2

    def process(self, payload: dict[str, Any]) -> None:
        if payload.get("poison"):
            raise ValueError(f"cannot handle poison payload {payload}")
        if random.random() < 0.2:
            raise ConnectionError(f"flaky upstream (attempt {self.task.attempts if self.task else '?'})")


class Crawl(AsyncTaskWorker):
    name = "crawl"

    def process(self, payload: dict[str, Any]) -> None:
        depth = int(payload.get("depth", 0))
        if depth < 3:
            for child in range(2):
                self.requeue({"url": f"{payload.get('url', '/')}{child}/", "depth": depth + 1})
