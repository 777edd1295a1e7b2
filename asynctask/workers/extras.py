"""The optional parts a supervisor runs beside its children, each imported only when asked for.

* ``--scheduler``: :class:`asynctask.scheduler.Scheduler`, run in a thread of the supervisor with
  ``Scheduler(entries=..., transport_url=..., worker_queues=...).run(stop_event)``;
* ``--metrics-port``: :class:`asynctask.metrics.WorkerMetrics`, a listener of every child message
  and of the supervisor's :class:`~asynctask.workers.protocol.ChildStarted` /
  :class:`~asynctask.workers.protocol.ChildExited`, served over HTTP.

* always: the sweeper of expired task results and status records (:func:`sweep_state`), a thread
  with a transport of its own (a PostgreSQL or filesystem store does not expire them by itself);
* always, when given the supervisor's children: its heartbeat in the worker registry
  (:class:`asynctask.registry.Heartbeat`, every ``settings.heartbeat_s``), a thread with a transport
  of its own; it asks the children for their task outcomes (a listener that does nothing: the
  supervisor's ``ChildState.counts`` count them), and deletes the record when the supervisor exits
  (:meth:`Extras.finish`).

They are built before any child starts (:func:`build_extras`), so their configuration errors stop
the command at once; the supervisor starts them (:attr:`Extras.starters`) when it runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asynctask.config import Settings
from asynctask.cron import scheduled_queue_name
from asynctask.errors import AsyncTaskError
from asynctask.transports import attach_state_store, get_transport
from asynctask.workers import protocol as P  # noqa: N812

if TYPE_CHECKING:  # imported when asked for (a child process loads none of them)
    from asynctask.metrics import WorkerMetrics
    from asynctask.scheduler import Scheduler
    from asynctask.workers.state import ChildState

logger = logging.getLogger(__name__)

__all__ = ["Extras", "Listener", "build_extras", "build_metrics", "build_scheduler"]

#: how often the supervisor's sweeper removes expired task results (:mod:`asynctask.transports.state`)
STATE_SWEEP_S = 60.0
#: a sweep that removed this many may have left more: the sweeper goes on at once
SWEEP_FULL_BATCH = 1000

#: Called with every child message (after the supervisor's own bookkeeping) and the supervisor's events.
Listener = Callable[["ChildState", P.Event], None]
#: Started once the supervisor runs, with the event set when it stops.
Starter = Callable[[threading.Event], object]


@dataclass(frozen=True)
class ExtrasWanted:
    """What runs beside the children when asked for: the scheduler, the metrics server."""

    scheduler: bool = False
    #: serve metrics on this port (None: no metrics) and address
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"


@dataclass
class Extras:
    """What the supervisor adds to its listeners, and what it starts when it runs."""

    listeners: list[Listener] = field(default_factory=list)
    starters: list[Starter] = field(default_factory=list)
    #: called once the supervisor's children have stopped, just before it exits
    finishers: list[Callable[[], None]] = field(default_factory=list)

    def finish(self) -> None:
        for finisher in self.finishers:
            finisher()


def build_extras(
    settings: Settings,
    transport_url: str,
    queues: Iterable[str],
    wanted: ExtrasWanted,
    children: Callable[[], Sequence[ChildState]] | None = None,
) -> Extras:
    """The scheduler when ``wanted.scheduler``, the metrics when ``wanted.metrics_port`` is not None;
    the registry's heartbeat when ``children`` (the supervisor's, read on the heartbeat's thread)."""
    queues = list(queues)
    extras = Extras()
    if children is not None:
        from asynctask.registry import Heartbeat  # noqa: PLC0415 - a child process never needs it

        heartbeat = Heartbeat(
            transport_url, children, queues, settings.heartbeat_s, state_store_url=settings.state_store
        )
        extras.listeners.append(lambda child, event: None)  # children send their outcomes: counts are kept
        extras.starters.append(heartbeat.start)
        extras.finishers.append(heartbeat.finish)

    def start_sweeper(stop: threading.Event) -> None:
        args = (transport_url, settings.state_store, stop)
        threading.Thread(target=sweep_state, args=args, name="asynctask-sweeper", daemon=True).start()

    extras.starters.append(start_sweeper)
    metrics_port, metrics_bind = wanted.metrics_port, wanted.metrics_bind
    found = build_scheduler(settings, transport_url) if wanted.scheduler else None
    if found is not None:

        def start_scheduler(stop: threading.Event) -> None:
            threading.Thread(target=found.run, args=(stop,), name="asynctask-scheduler", daemon=True).start()

        extras.starters.append(start_scheduler)
    metrics = build_metrics(queues, transport_url) if metrics_port is not None else None
    if metrics is not None and metrics_port is not None:
        extras.listeners.append(metrics.listen)
        extras.starters.append(lambda stop: metrics.serve(metrics_port, metrics_bind))
    return extras


def sweep_state(transport_url: str, state_store_url: str | None, stop: threading.Event) -> None:
    """Until ``stop``: every :data:`STATE_SWEEP_S`, remove the expired records of the state store
    (again at once while a sweep found a full batch, so a backlog drains).  Failures are logged and
    tried again next time: an unreachable server only delays the sweep."""
    transport = None
    while not stop.wait(STATE_SWEEP_S):
        try:
            if transport is None:
                transport = attach_state_store(get_transport(transport_url), state_store_url)
            for _ in range(100):
                if transport.state_sweep() < SWEEP_FULL_BATCH or stop.is_set():
                    break
        except AsyncTaskError as exc:
            logger.warning("sweeping expired task results failed: %s", exc)
            if transport is not None:
                transport.close()
                transport = None
    if transport is not None:
        transport.close()


def build_scheduler(settings: Settings, transport_url: str) -> Scheduler | None:
    """The scheduler for ``settings.scheduled_workers``, or None when the module is missing."""
    try:
        from asynctask.scheduler import Scheduler  # noqa: PLC0415 - optional, imported when asked for
    except ImportError as exc:
        logger.warning("scheduler not available (%s)", exc)
        return None
    worker_queues = {w: scheduled_queue_name(w) for w in settings.scheduled_only_workers()}
    worker_queues.update(settings.worker_queues)
    from asynctask.middleware import load_middleware  # noqa: PLC0415
    from asynctask.schedules import decorated_schedules  # noqa: PLC0415 - with the scheduler only

    scheduler = Scheduler(
        entries=list(settings.scheduled_workers),
        transport_url=transport_url,
        worker_queues=worker_queues,
        decorated=decorated_schedules(settings.require),
    )
    scheduler.middleware = load_middleware(settings.middleware)
    return scheduler


def build_metrics(queues: Iterable[str], transport_url: str) -> WorkerMetrics | None:
    """Metrics for these queues (depths read through a transport of their own), or None."""
    try:
        from asynctask.metrics import WorkerMetrics  # noqa: PLC0415 - optional, imported when asked for
    except ImportError as exc:
        logger.warning("metrics not available (%s)", exc)
        return None
    return WorkerMetrics(set(queues), lambda: get_transport(transport_url))
