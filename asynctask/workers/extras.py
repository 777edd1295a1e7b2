"""The optional parts a supervisor runs beside its children, each imported only when asked for.

* ``--scheduler``: :class:`asynctask.scheduler.Scheduler`, run in a thread of the supervisor with
  ``Scheduler(entries=..., transport_url=..., worker_queues=...).run(stop_event)``;
* ``--metrics-port``: :class:`asynctask.metrics.WorkerMetrics`, fed with every child message.

Both are built before any child starts, so their configuration errors stop the command at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asynctask.config import Settings, scheduled_queue_name
from asynctask.transports import get_transport

logger = logging.getLogger(__name__)

__all__ = ["build_metrics", "build_scheduler"]


def build_scheduler(settings: Settings, transport_url: str) -> Any:
    """The scheduler for ``settings.scheduled_workers``, or None when the module is missing."""
    try:
        from asynctask.scheduler import Scheduler  # noqa: PLC0415 - optional, imported when asked for
    except ImportError as exc:
        logger.warning("scheduler not available (%s)", exc)
        return None
    worker_queues = {w: scheduled_queue_name(w) for w in settings.scheduled_only_workers()}
    worker_queues.update(settings.worker_queues)
    return Scheduler(entries=list(settings.scheduled_workers), transport_url=transport_url,
                     worker_queues=worker_queues)


def build_metrics(queues: Iterable[str], transport_url: str) -> Any:
    """Metrics for these queues (depths read through a transport of their own), or None."""
    try:
        from asynctask.metrics import WorkerMetrics  # noqa: PLC0415 - optional, imported when asked for
    except ImportError as exc:
        logger.warning("metrics not available (%s)", exc)
        return None
    return WorkerMetrics(set(queues), lambda: get_transport(transport_url))
