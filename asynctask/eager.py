"""Eager mode (``asynctask_eager: true`` or ``ASYNCTASK_EAGER=1``): tasks run when submitted.

django-ztask's ``ZTASKD_ALWAYS_EAGER``, Celery's ``task_always_eager``: for tests and scripts.
``get_transport()`` returns an :class:`EagerTransport`, and ``@task`` submits go to it: each submit
stores the task in this process's memory (so payload and meta make the JSON round trip a worker's
would: a non-JSON argument fails as in production), then runs the worker of its queue through the
real runner until nothing is left, retries and delays included (their delays are skipped).  The
handle of a ``@task`` submit then holds its result (kept an hour, whatever ``result_ttl_s``).

The worker of a queue: the built-in ``tasks`` worker for ``@task`` tasks, else the one the queue's
``asynctask_workers`` entry names (ConfigurationError when there is none).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from asynctask.config import Settings
from asynctask.errors import ConfigurationError
from asynctask.importing import import_modules
from asynctask.transports.memory import MemoryTransport

__all__ = ["EagerTransport"]

#: how often a submit drains again after skipping the delays it met (a task that retries forever)
MAX_ROUNDS = 100
_stores = itertools.count()


class EagerTransport(MemoryTransport):
    """A memory transport that runs each submitted task at once (see the module docstring)."""

    #: read by the ``tasks`` worker and ``@task`` submits: results are kept, no ``queued`` record
    eager = True

    def __init__(self, settings: Settings) -> None:
        self._skew_s = 0.0
        super().__init__(f"memory://asynctask-eager-{os.getpid()}-{next(_stores)}", clock=self._now)
        self.settings = settings
        self._draining: set[str] = set()
        import_modules(list(settings.require))

    def _now(self) -> float:
        return time.time() + self._skew_s

    def submit_task(self, queue: str, payload: dict[str, Any] | None = None, **options: Any) -> str:
        task_id = super().submit_task(queue, payload, **options)
        self.run_queue(queue, bool(options.get("meta")))
        return task_id

    def submit_tasks(self, queue: str, payloads: Any, **options: Any) -> list[str]:
        ids = super().submit_tasks(queue, payloads, **options)
        self.run_queue(queue, bool(options.get("meta")))
        return ids

    def worker_for(self, queue: str, tasks_worker: bool) -> str:
        if tasks_worker:
            return "tasks"
        for entry in self.settings.workers:
            if entry.queue == queue:
                return entry.worker
        raise ConfigurationError(
            f"eager mode: no worker for queue {queue!r}: name one in asynctask_workers, or submit @task functions"
        )

    def run_queue(self, queue: str, tasks_worker: bool) -> None:
        """Run the queue's worker until nothing is ready or delayed (a submit from a running task
        is run by the drain already under way)."""
        from asynctask.testing import process_queue  # noqa: PLC0415 - testing imports the workers

        if queue in self._draining:
            return
        worker = self.worker_for(queue, tasks_worker)
        self._draining.add(queue)
        try:
            for _ in range(MAX_ROUNDS):
                process_queue(queue, worker, transport=self)
                stats = self.stats(queue)
                if not stats.delayed:
                    return
                self._skew_s += 3600.0  # skip the delays: retries run at once
        finally:
            self._draining.discard(queue)
