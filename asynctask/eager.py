"""Eager mode (``asynctask_eager: true`` or ``ASYNCTASK_EAGER=1``): tasks run when submitted.

django-ztask's ``ZTASKD_ALWAYS_EAGER``, Celery's ``task_always_eager``: for tests and scripts.
``get_transport()`` returns an :class:`EagerTransport`, and ``@task`` submits go to it: each submit
stores the task in this process's memory (so payload and meta make the JSON round trip a worker's
would: a non-JSON argument fails as in production), then runs the worker of its queue through the
real runner until nothing is left, retries and delays included (their delays are skipped, on the
queue's own clock: results age on the real one).  The handle of a ``@task`` submit then holds its
result (for ``result_ttl_s``, an hour when the function keeps none).

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
        name = f"asynctask-eager-{os.getpid()}-{next(_stores)}"
        super().__init__(f"memory://{name}", clock=self._now)
        # records on the real clock: skipping a delay must not age the results of earlier tasks
        self.state_store = MemoryTransport(f"memory://{name}-state")
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

    def _next_due(self, queue: str) -> float | None:
        """When the next delayed task of ``queue`` is due (this store's clock), or None."""
        with self._store.lock:
            found = self._store.queues.get(queue)
            return found.delayed[0][0] if found is not None and found.delayed else None

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
                due = self._next_due(queue)
                if due is None:
                    return
                self._skew_s += max(due - self._now(), 0.0) + 0.001  # skip the delay: retries run at once
        finally:
            self._draining.discard(queue)
