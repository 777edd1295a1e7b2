"""Eager helpers for tests (rex.asynctask's): drain a queue synchronously in this process.

``process_queue(queue)`` runs the worker configured for ``queue``; ``run_worker(name)`` runs a worker
on the queue it is configured for.  Both go through the real runner (ack, retry, dead letters) on
the transport ``get_transport()`` resolves (pass ``transport=`` to choose), stop when nothing is
ready, and return how many tasks ran.  Retries with a delay stay in the store: set the worker's
``retry_delay_s = 0`` in a test to see them run in the same drain.  With a ``memory://`` transport
this is an eager mode that still encodes and decodes every payload.  A worker with ``concurrency``
above 1 (the class's), or an ``async def process``, runs as it would in a child (threads, or its
event loop); after a thread overran ``timeout_s`` a fresh runner goes on with the drain.  The
transport's middleware (``get_transport()`` loads ``asynctask_middleware``) runs ``before_process`` and
``after_process`` around each task, as in a worker child.
"""

from __future__ import annotations

from collections.abc import Callable

from asynctask.config import Settings, WorkerEntry, load_settings
from asynctask.errors import ConfigurationError
from asynctask.transports import get_transport
from asynctask.transports.base import Transport
from asynctask.workers.aio import WorkerLoop, make_runner
from asynctask.workers.base import get_worker
from asynctask.workers.lanes import TIMED_OUT
from asynctask.workers.runner import HALT_IDLE

__all__ = ["process_queue", "run_worker"]


def process_queue(
    queue: str,
    worker_name: str | None = None,
    *,
    transport: Transport | None = None,
    settings: Settings | None = None,
) -> int:
    """Process every ready task of ``queue`` with ``worker_name`` (default: the worker configured
    for the queue in ``asynctask_workers``); return how many tasks ran."""
    if worker_name is None:
        worker_name = _configured(
            settings, lambda entry: entry.queue == queue, f'Cannot identify worker for queue "{queue}"'
        ).worker
    return _drain(queue, worker_name, transport)


def run_worker(
    worker_name: str,
    queue: str | None = None,
    *,
    transport: Transport | None = None,
    settings: Settings | None = None,
) -> int:
    """Run ``worker_name`` on ``queue`` (default: the queue it is configured for) until nothing is
    ready; return how many tasks ran."""
    if queue is None:
        queue = _configured(
            settings, lambda entry: entry.worker == worker_name, f'Cannot identify queue for worker "{worker_name}"'
        ).queue
    return _drain(queue, worker_name, transport)


def _configured(settings: Settings | None, matches: Callable[[WorkerEntry], bool], error: str) -> WorkerEntry:
    """The first ``asynctask_workers`` entry that ``matches`` (rex.asynctask's error text otherwise)."""
    for entry in (settings or load_settings()).workers:
        if matches(entry):
            return entry
    raise ConfigurationError(error)


def _drain(queue: str, worker_name: str, transport: Transport | None) -> int:
    worker = get_worker(worker_name)()
    owned = transport is None
    store = get_transport() if transport is None else transport
    try:
        with WorkerLoop(worker) as loop:
            loop.call(worker.setup)
            try:
                processed = 0
                while True:
                    runner = make_runner(
                        store,
                        queue,
                        worker,
                        loop,
                        concurrency=worker.concurrency,
                        halt=HALT_IDLE,
                        max_batch=100,
                        middleware=store.middleware,  # the process hooks, as a worker child runs them
                    )
                    outcome = runner.run()
                    processed += runner.processed
                    if outcome != TIMED_OUT:  # a child would be replaced: so is the runner
                        return processed
            finally:
                loop.call(worker.teardown)
    finally:
        if owned:
            store.close()
