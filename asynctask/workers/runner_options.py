"""The keyword options of :class:`~asynctask.workers.runner.Runner` and the lane runners."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypedDict

from asynctask.middleware import MiddlewareChain
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.crash_notices import Inbox
from asynctask.workers.keepers import Clock

__all__ = ["Report", "RunnerOptions"]

#: where a runner's protocol messages go
Report = Callable[[P.Message], None]


class RunnerOptions(TypedDict, total=False):
    """The keyword options of :class:`Runner` (defaults in brackets)."""

    #: the longest a fetch waits on an empty queue (0.5)
    poll_interval_s: float
    #: None (run until stopped), HALT_EMPTY or HALT_IDLE
    halt: str | None
    #: at most this many tasks per ``rate_period_s`` (None: no limit)
    rate_max_calls: int | None
    rate_period_s: float
    #: most tasks per fetch (100)
    max_batch: int
    #: leave after this many tasks, or once resident memory passed this (None: never)
    max_tasks: int | None
    max_memory_mb: float | None
    #: where the protocol messages go, and whether task outcomes are among them (True)
    report: Report | None
    report_outcomes: bool
    #: opens a fresh transport after an outage
    reopen: Callable[[], Transport] | None
    #: the shared-memory slot of the task in hand; the supervisor's crash notices (AMQP)
    current: P.CurrentTask | None
    inbox: Inbox | None
    #: tasks run at once, and the grace of the others after a thread overran timeout_s (lane
    #: runners only: asynctask.workers.lanes; the plain Runner runs one at a time)
    concurrency: int
    shutdown_timeout_s: float
    #: the worker's middleware (``asynctask_middleware``): hooks around each task
    middleware: MiddlewareChain | None
    #: set to stop fetching; the clock and sleep (tests inject them)
    stop: threading.Event | None
    clock: Clock
    sleep: Callable[[float], Any] | None
