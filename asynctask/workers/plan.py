"""From the configuration to the children a supervisor runs.

:func:`import_requires` imports what the configuration requires and checks every worker name and
scheduled entry (a bad one stops every node at start); :func:`build_children` makes one
:class:`~asynctask.workers.state.ChildState` per process of every configured queue, plus one per
scheduled worker configured on no queue (:func:`scheduled_children`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from asynctask.config import Settings, WorkerEntry, check_worker_names
from asynctask.cron import scheduled_queues, validate_entries
from asynctask.errors import ConfigurationError
from asynctask.importing import import_modules
from asynctask.transports.state import KeyedState
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.base import get_worker, is_async_worker, registered_workers
from asynctask.workers.child import ChildSpec
from asynctask.workers.state import ChildState

__all__ = ["COMMAND_MODULE", "build_children", "check_state_store", "import_requires", "scheduled_children"]

#: The module of the built-in ``command`` worker, imported where scheduled entries are configured.
COMMAND_MODULE = "asynctask.workers.command"


def import_requires(settings: Settings) -> tuple[str, ...]:
    """Import ``settings.require`` (so workers register) and check every worker name.

    Scheduled entries are validated in full here (cron fields, dates, time zone), with or without
    ``--scheduler``, so a bad entry stops every node at start instead of only the scheduling ones.
    Returns the modules a child must import (:mod:`asynctask.workers.command` added when there are
    scheduled entries: it registers the built-in ``command`` worker, which ``worker: command`` may
    also name; a child never loads APScheduler).  Raises ConfigurationError with one line naming the
    problem.
    """
    modules = list(settings.require)
    if settings.scheduled_workers:
        modules.append(COMMAND_MODULE)
    import_modules(modules)
    known = registered_workers()
    check_worker_names(settings, known)
    for entry, where in zip(settings.scheduled_workers, settings.scheduled_sources, strict=True):
        validate_entries([entry], where, known_workers=known)
    return tuple(modules)


def scheduled_children(settings: Settings) -> dict[str, str]:
    """``{queue: worker}`` for the queues scheduled fires go to that ``asynctask_workers`` does not
    configure (``scheduled_<worker>``, or an entry's own ``queue``): every supervisor consumes them,
    with or without ``--scheduler``, so a fire runs wherever a supervisor runs."""
    from asynctask.schedules import decorated_schedules  # noqa: PLC0415 - tasks imports the workers

    entries = validate_entries(list(settings.scheduled_workers)) + decorated_schedules(settings.require)
    configured = {entry.queue for entry in settings.workers}
    return {q: w for q, w in scheduled_queues(entries, settings.worker_queues).items() if q not in configured}


def check_state_store(settings: Settings, transport: KeyedState) -> None:
    """ConfigurationError when a configured worker keeps results (``result_ttl_s``, or ``@task``
    functions that do) on a transport that keeps no state itself (AMQP) with no
    ``asynctask_state_store`` set: at start, not at the first result."""
    if transport.keeps_state or transport.state_store is not None:
        return
    for entry in settings.workers:
        if get_worker(entry.worker).keeps_results_on(entry.queue):
            raise ConfigurationError(
                f"{entry.source or 'asynctask_workers'}: queue {entry.queue!r}: worker {entry.worker!r} keeps results,"
                f" which {type(transport).__name__} cannot store itself: set asynctask_state_store (or"
                " $ASYNCTASK_STATE_STORE) to another transport URL, e.g. redis://... or filesys:/path"
            )


def build_children(
    settings: Settings, base: ChildSpec, shared_task: Callable[[int], P.CurrentTask]
) -> list[ChildState]:
    """One :class:`ChildState` per process of every configured queue, and one per scheduled-only
    worker (:func:`scheduled_children`); ``base`` carries what every child's spec shares, and
    ``shared_task(concurrency)`` makes each slot's :class:`~asynctask.workers.protocol.CurrentTask`."""
    entries = list(settings.workers)
    entries += [WorkerEntry(queue, worker) for queue, worker in scheduled_children(settings).items()]
    children = []
    for entry in entries:
        queue, worker, processes = entry.queue, entry.worker, entry.processes
        cls = get_worker(worker)
        concurrency = entry.concurrency or cls.queue_concurrency(queue)
        spec = dataclasses.replace(
            base,
            queue=queue,
            worker=worker,
            poll_interval_s=settings.poll_interval_ms / 1000,
            rate_max_calls=entry.rate_max_calls,
            # a queue's rate limit is shared by its processes: each gets the same count over a period
            # N times longer, so together they keep the configured average rate
            rate_period_s=entry.rate_period * processes,
            max_tasks=settings.max_tasks_per_child,
            max_memory_mb=settings.max_memory_mb,
            concurrency=concurrency,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            state_store_url=settings.state_store,
            middleware=settings.middleware,
        )
        children += [
            ChildState(
                spec,
                slot,
                cls.max_attempts,
                cls.timeout_s,
                entry.max_crashes or cls.queue_max_crashes(queue),
                current=shared_task(concurrency),
                async_lanes=is_async_worker(cls),
            )
            for slot in range(processes)
        ]
    return children
