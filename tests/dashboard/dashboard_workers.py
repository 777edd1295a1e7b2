"""Workers the dashboard's browser test runs through ``asynctask-workers`` (``--require``).

``dash_ok`` keeps its results (the Task page shows them) and records each task in ``payload["out"]``;
``dash_flaky`` raises until the file ``payload["flag"]`` exists, with one attempt, so its tasks go
to the dead letters; replayed once the flag exists, they go through.
"""

from __future__ import annotations

import json
import os
from typing import Any

from asynctask.workers import AsyncTaskWorker


def _record(worker: AsyncTaskWorker, payload: dict[str, Any]) -> None:
    task = worker.task
    with open(payload["out"], "a", encoding="utf-8") as stream:
        stream.write(json.dumps({"id": task.id if task else None, "queue": task.queue if task else None}) + "\n")


class DashOk(AsyncTaskWorker):
    name = "dash_ok"
    result_ttl_s = 600

    def process(self, payload: dict[str, Any]) -> dict[str, Any]:
        _record(self, payload)
        return {"greeting": f"hello {payload.get('n')}"}


class DashFlaky(AsyncTaskWorker):
    name = "dash_flaky"
    max_attempts = 1

    def process(self, payload: dict[str, Any]) -> None:
        if not os.path.exists(payload["flag"]):
            raise ValueError(f"flaky task {payload.get('n')}: the flag file is not there yet")
        _record(self, payload)
