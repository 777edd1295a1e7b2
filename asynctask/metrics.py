"""Prometheus metrics and a health check for ``asynctask-workers --metrics-port N``.

The supervisor owns one :class:`WorkerMetrics`, one of its listeners: :meth:`WorkerMetrics.listen`
gets the messages its children send and the supervisor's ``ChildStarted`` / ``ChildExited``
(:mod:`asynctask.workers.protocol`); :meth:`WorkerMetrics.serve` answers HTTP on a daemon thread, on
127.0.0.1 unless told another address (``asynctask-workers --metrics-bind``):

``GET /metrics``
    Prometheus text format (``prometheus_client``, an optional dependency: the ``metrics`` extra):

    ====================================================  =========================================
    ``asynctask_tasks_processed_total{queue,worker}``      tasks processed and acked
    ``asynctask_tasks_failed_total{queue,worker}``         failed attempts (retried or dead-lettered)
    ``asynctask_tasks_retried_total{queue,worker}``        failed attempts given back with a delay
    ``asynctask_tasks_dead_lettered_total{queue,worker}``  tasks sent to the dead-letter store
    ``asynctask_tasks_killed_total{queue,worker,signal}``  tasks whose child died while running them
    ``asynctask_tasks_in_flight{queue,worker}``            tasks the children hold now
    ``asynctask_child_tasks_running{queue,worker,slot}``   tasks each child runs now (up to its
                                                           ``concurrency``), read at scrape time
    ``asynctask_task_processing_seconds{queue,worker}``    histogram of processing time
    ``asynctask_child_restarts_total{queue,worker}``       children restarted after dying
    ``asynctask_child_recycles_total{queue,worker}``       children replaced on purpose (max tasks/memory)
    ``asynctask_children{queue,worker}``                   children alive
    ``asynctask_queue_depth{queue,state}``                 ready / delayed / in_flight / dead, read from
                                                           the transport at scrape time
    ``asynctask_queue_oldest_ready_age_seconds{queue}``    age of the oldest ready task
    ``asynctask_transport_up``                             1 when the last depth read answered
    ====================================================  =========================================

    Every series of a queue/worker pair exists from its first child's start, at 0 until something
    happens (``asynctask_tasks_killed_total`` for ``signal="SIGKILL"``, the signal the supervisor
    kills with), so ``rate()`` and alerts see the first event.

``GET /healthz``
    200 and ``{"status": "ok", ...}``, or 503 and ``{"status": "stuck", "stuck": [...]}`` when a child
    is alive but has not fetched (nor polled an empty queue) for ``stale_after_s`` seconds while its
    queue has ready tasks.  A child inside a task with a ``timeout_s`` gets that much longer.
    ``stale_after_s`` defaults to ``$ASYNCTASK_HEALTHZ_STALE_S``, else 300: set it above the
    longest task a worker without ``timeout_s`` may run.

Queue depths come from a transport the metrics thread opens itself (``transport_factory``), read at
most once per ``depth_cache_s`` so frequent scrapes do not load the server.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from asynctask.errors import AsyncTaskError, ConfigurationError
from asynctask.message import QueueStats
from asynctask.metrics_collect import ScrapeCollector
from asynctask.metrics_http import serve_http
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812

logger = logging.getLogger(__name__)

#: Processing-time histogram buckets (seconds): from a no-op task to a long job.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: The signal the supervisor kills a child with (timeouts, forced shutdown): its killed series starts at 0.
KILL_SIGNAL = "SIGKILL"
#: The address the metrics are served on by default: this machine only.
DEFAULT_BIND = "127.0.0.1"
#: Default seconds without a fetch (while the queue has ready tasks) before /healthz fails.
DEFAULT_STALE_AFTER_S = 300.0


def _prometheus() -> Any:
    try:
        import prometheus_client  # noqa: PLC0415 - optional dependency, imported when metrics are asked for
    except ImportError:
        raise ConfigurationError(
            "--metrics-port needs prometheus_client: pip install prometheus_client"
            " (or the 'metrics' extra of asynctask-jobs)"
        ) from None
    return prometheus_client


def default_stale_after_s() -> float:
    """``$ASYNCTASK_HEALTHZ_STALE_S`` when it is a number > 0, else :data:`DEFAULT_STALE_AFTER_S`."""
    text = os.environ.get("ASYNCTASK_HEALTHZ_STALE_S", "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_STALE_AFTER_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_STALE_AFTER_S


class ChildView(Protocol):
    """What :meth:`WorkerMetrics.listen` reads of the supervisor's child (its ``ChildState``)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def queue(self) -> str: ...
    @property
    def worker(self) -> str: ...


def _running_count(view: ChildView) -> int:
    """How many tasks ``view`` runs now (a ``ChildState`` reads its shared memory; 0 otherwise)."""
    running = getattr(view, "running_tasks", None)
    return len(running()) if callable(running) else 0


@dataclass
class _Child:
    key: str
    queue: str
    worker: str
    last_fetch: float
    task_started: float | None = None
    task_timeout_s: float | None = None
    held: int = 0
    #: the supervisor's record of the child (tasks running are read from it at scrape time)
    view: ChildView | None = None


class WorkerMetrics:
    """Counters, gauges and health of the children of one supervisor (thread-safe).

    ``transport_factory`` opens the transport the depth gauges read (called lazily, on the metrics
    thread); ``queues`` lists the queues to report depth for.  ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        queues: Iterable[str],
        transport_factory: Callable[[], Transport] | None = None,
        *,
        stale_after_s: float | None = None,
        depth_cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        prom = _prometheus()
        self.queues = sorted(set(queues))
        self.stale_after_s = default_stale_after_s() if stale_after_s is None else stale_after_s
        self.depth_cache_s = depth_cache_s
        #: the address :meth:`serve` listens on unless told another (``--metrics-bind``)
        self.bind = DEFAULT_BIND
        self.clock = clock
        self._factory = transport_factory
        self._transport: Transport | None = None
        self._lock = threading.Lock()  # children and counters: never held across I/O
        self._depth_lock = threading.Lock()  # the depth transport: held while reading the server
        self._children: dict[str, _Child] = {}
        self._pairs: set[tuple[str, str]] = set()
        self._depth: dict[str, QueueStats] = {}
        self._depth_at = -1e18
        self._transport_up = 0.0
        self.registry = prom.CollectorRegistry(auto_describe=True)
        labels = ("queue", "worker")

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Any:
            return prom.Counter(name, doc, [*labels, *extra], registry=self.registry)

        self.processed = counter("asynctask_tasks_processed", "Tasks processed and acknowledged.")
        self.failed = counter("asynctask_tasks_failed", "Failed attempts (retried or dead-lettered).")
        self.retried = counter("asynctask_tasks_retried", "Failed attempts given back to be retried.")
        self.dead_lettered = counter("asynctask_tasks_dead_lettered", "Tasks sent to the dead-letter store.")
        self.killed = counter(
            "asynctask_tasks_killed", "Tasks whose child process died while running them.", ("signal",)
        )
        self.restarts = counter("asynctask_child_restarts", "Children restarted after dying.")
        self.recycles = counter("asynctask_child_recycles", "Children replaced on purpose (max tasks or memory).")
        self.in_flight = prom.Gauge(
            "asynctask_tasks_in_flight", "Tasks the children hold now.", labels, registry=self.registry
        )
        self.children = prom.Gauge("asynctask_children", "Children alive.", labels, registry=self.registry)
        self.processing = prom.Histogram(
            "asynctask_task_processing_seconds",
            "Processing time of a task.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ScrapeCollector(self, prom))

    # -- feeding ---------------------------------------------------------------------------------

    def child_started(self, key: str, queue: str, worker: str) -> None:
        """A child (``key`` unique among live children, e.g. its pid) was spawned for queue/worker."""
        with self._lock:
            self._children[key] = _Child(key, queue, worker, self.clock())
            first = (queue, worker) not in self._pairs
            self._pairs.add((queue, worker))
        if first:
            self._export_zeros(queue, worker)
        self.children.labels(queue, worker).inc()

    def _export_zeros(self, queue: str, worker: str) -> None:
        """Create every series of a queue/worker pair at 0, so a scrape shows each family before its
        first event (``rate()`` and alerts then see the first one; the killed counter is created for
        the signal the supervisor itself kills with)."""
        for family in (
            self.processed,
            self.failed,
            self.retried,
            self.dead_lettered,
            self.restarts,
            self.recycles,
            self.in_flight,
            self.children,
            self.processing,
        ):
            family.labels(queue, worker)
        self.killed.labels(queue, worker, KILL_SIGNAL)

    def child_exited(
        self, key: str, *, restarted: bool = False, recycled: bool = False, signal_name: str | None = None
    ) -> None:
        """A child left.  ``restarted``: it died and will be replaced; ``recycled``: replaced on purpose;
        ``signal_name``: it was killed by that signal while holding a started task (counted as killed)."""
        with self._lock:
            child = self._children.pop(key, None)
        if child is None:
            return
        labels = (child.queue, child.worker)
        self.children.labels(*labels).dec()
        if child.held:
            self.in_flight.labels(*labels).dec(child.held)
        if restarted:
            self.restarts.labels(*labels).inc()
        if recycled:
            self.recycles.labels(*labels).inc()
        if signal_name and child.task_started is not None:
            self.killed.labels(*labels, signal_name).inc()

    def task_dead_lettered(self, queue: str, worker: str, count: int = 1) -> None:
        """The supervisor itself dead-lettered ``count`` tasks (e.g. after repeated child deaths)."""
        self.dead_lettered.labels(queue, worker).inc(count)
        self.failed.labels(queue, worker).inc(count)

    def listen(self, child: ChildView, event: P.Event) -> None:
        """The supervisor's listener: every message of its ``child`` and its events about it."""
        key = str(child.pid)
        if isinstance(event, P.ChildStarted):
            self.child_started(str(event.pid), child.queue, child.worker)
            with self._lock:
                if str(event.pid) in self._children:
                    self._children[str(event.pid)].view = child
        elif isinstance(event, P.ChildExited):
            if event.dead_lettered:
                self.task_dead_lettered(child.queue, child.worker, event.dead_lettered)
            self.child_exited(
                str(event.pid), restarted=event.restarted, recycled=event.recycled, signal_name=event.signal_name
            )
        else:
            self.observe(key, event)

    def observe(self, key: str, message: P.Message) -> None:
        """Account one protocol message from child ``key`` (kinds without metrics are ignored)."""
        with self._lock:
            child = self._children.get(key)
            if child is None:
                return
            now = self.clock()
            match message:
                # Fetched says the child holds this batch and nothing else, Polled that it holds
                # nothing (asynctask.workers.protocol): the gauge follows, whatever Finished said.
                case P.Fetched(rows):
                    child.last_fetch = now
                    self._hold(child, len(rows))
                    child.task_started = None
                case P.Took(rows):  # a child with concurrency: these in addition
                    child.last_fetch = now
                    self._hold(child, child.held + len(rows))
                case P.Polled():
                    child.last_fetch = now
                    self._hold(child, 0)
                    child.task_started = None
                case P.Ready():
                    child.last_fetch = now
                case P.Started(timeout_s=timeout_s):
                    child.task_started = now
                    child.task_timeout_s = timeout_s
                case P.Finished(rows):
                    child.task_started = None
                    self._hold(child, child.held - len(rows))
                    for _task_id, outcome, duration in rows:
                        self._outcome((child.queue, child.worker), outcome, duration)

    def _hold(self, child: _Child, count: int) -> None:
        """Set what ``child`` holds (caller holds the lock) and move the in-flight gauge by the change."""
        count = max(count, 0)
        self.in_flight.labels(child.queue, child.worker).inc(count - child.held)
        child.held = count

    def _outcome(self, labels: tuple[str, str], outcome: str, duration_s: float | None) -> None:
        """Count one outcome; ``duration_s`` None (unknown) is left out of the processing time."""
        if outcome == "acked":
            self.processed.labels(*labels).inc()
        elif outcome == "retried":
            self.failed.labels(*labels).inc()
            self.retried.labels(*labels).inc()
        elif outcome == "dead":
            self.failed.labels(*labels).inc()
            self.dead_lettered.labels(*labels).inc()
        else:
            return
        if duration_s is not None:
            self.processing.labels(*labels).observe(float(duration_s))

    # -- reading ---------------------------------------------------------------------------------

    def depths(self) -> dict[str, QueueStats]:
        """Per-queue stats, read from the transport at most once per ``depth_cache_s``.

        Reads happen on the HTTP thread under a lock of their own, so a slow or unreachable server
        never delays :meth:`observe` (the supervisor's loop)."""
        with self._depth_lock:
            if self.clock() - self._depth_at < self.depth_cache_s or self._factory is None:
                return dict(self._depth)
            try:
                if self._transport is None:
                    self._transport = self._factory()
                self._depth = {queue: self._transport.stats(queue) for queue in self.queues}
                self._transport_up = 1.0
            except (AsyncTaskError, OSError) as exc:
                logger.warning("metrics: reading queue depths failed: %s", exc)
                self._transport_up = 0.0
                if self._transport is not None:
                    self._transport.close()
                    self._transport = None
            self._depth_at = self.clock()
            return dict(self._depth)

    def running(self) -> list[tuple[str, str, str, int]]:
        """(queue, worker, slot, tasks running) of every live child."""
        with self._lock:
            children = list(self._children.values())
        return [
            (child.queue, child.worker, str(getattr(child.view, "slot", child.key)), _running_count(child.view))
            for child in children
            if child.view is not None
        ]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): unhealthy when a live child is stuck (see the module docstring)."""
        depths = self.depths()
        now = self.clock()
        stuck = []
        with self._lock:
            children = list(self._children.values())
        for child in children:
            allowed = self.stale_after_s
            if child.task_started is not None and child.task_timeout_s:
                allowed += child.task_timeout_s
            idle = now - child.last_fetch
            ready = depths[child.queue].ready if child.queue in depths else 0
            if idle > allowed and ready > 0:
                stuck.append(
                    {
                        "child": child.key,
                        "queue": child.queue,
                        "worker": child.worker,
                        "seconds_since_fetch": round(idle, 1),
                        "queue_ready": ready,
                    }
                )
        details = {
            "status": "stuck" if stuck else "ok",
            "children": len(children),
            "stuck": stuck,
            "transport_up": bool(self._transport_up) or self._factory is None,
        }
        return not stuck, details

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        prom = _prometheus()
        data: bytes = prom.generate_latest(self.registry)
        return data

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, port: int, bind: str | None = None) -> ThreadingHTTPServer:
        """Answer ``/metrics`` and ``/healthz`` on ``bind`` (default :attr:`bind`, which is 127.0.0.1:
        this machine only) and ``port`` (0: any free one) on a daemon thread; returns the server
        (``shutdown()``; :mod:`asynctask.metrics_http`)."""
        return serve_http(self, self.bind if bind is None else bind, port)

    def close(self) -> None:
        """Close the depth transport (the HTTP server is the caller's: ``shutdown()``)."""
        with self._depth_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
