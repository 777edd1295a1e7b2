"""The supervisor of ``asynctask-workers``: spawn, watch, restart, give back, shut down in time.

* One child process per (queue, worker) pair, ``processes: N`` where configured, plus one per
  scheduled worker configured on no queue (on ``scheduled_<worker>``).  Children are forked from a
  fork server (``START_METHOD``) and open their own transport (:mod:`asynctask.workers.child`).
* Each child reports what it fetched, started and finished (:mod:`asynctask.workers.protocol`), so
  when a child dies the supervisor gives its tasks back at once: the task it was running is a crash,
  not a failed attempt (given back with a short delay, quarantined in the dead letters after
  ``max_crashes`` deaths: :mod:`asynctask.workers.crashes`, which also says how AMQP does it); the
  ones it had not started go back uncounted.  The supervisor looks at each child's resident memory
  about once a second, for the causes it records.
* A dead child is restarted after 1 s, doubling to 60 s, reset after a minute of health; a log line
  names the queue, the worker and the exit code or signal.
* ``timeout_s``: a child still running a task ``timeout_s`` (+ a grace of max(1 s, 10 %)) after it
  started it is killed; the task counts as a failed attempt and the child is replaced at once.
* SIGTERM/SIGINT: children stop fetching, finish the task in hand within
  ``asynctask_shutdown_timeout``, give back the rest, exit; the supervisor exits 0.  A second signal
  or the end of the grace period kills them (their tasks are given back) and exits with 4.  Each
  signal counts, however close together they come (they are read from the signal wake-up pipe, one
  byte each).  A signal to the whole process group reaches the children too, which then do the same
  (the fork server survives it: :mod:`asynctask.workers.forkserver`).
* ``halt_when_empty``: exit 0 once every child has reported ``halted`` and left.
* ``rate_max_calls`` per ``rate_period``: counted per child, each of a queue's N processes
  allowed ``rate_max_calls`` per ``N * rate_period`` (the queue's rate on this supervisor).

* ``max_tasks_per_child`` / ``max_memory_mb``: a child leaving on purpose says so (``recycle``) and
  its replacement starts before it has left.

Seams (:mod:`asynctask.workers.extras`): ``scheduler=True`` runs
``asynctask.scheduler.Scheduler(entries=..., transport_url=..., worker_queues=...).run(stop_event)``
in a thread; ``metrics_port`` serves an ``asynctask.metrics.WorkerMetrics``, one of the
``listeners``: callables given every child message (:data:`~asynctask.workers.protocol.Event`) and
the supervisor's ``ChildStarted`` / ``ChildExited``.  Children send their task outcomes only when
there are listeners (the worker registry's heartbeat, :mod:`asynctask.registry`, is one: it reads
``children`` on its thread, and deletes its record when :meth:`Supervisor.run` ends).
``children`` (:class:`ChildState`) is the per-child bookkeeping.  Exit codes:
:mod:`asynctask.cli.exit_codes`.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypedDict, Unpack

from asynctask.cli.exit_codes import EXIT_FORCED, EXIT_OK
from asynctask.config import Settings
from asynctask.middleware import load_middleware
from asynctask.transports import attach_state_store, get_transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.child import ChildSpec, child_main
from asynctask.workers.crashes import CrashKeeper
from asynctask.workers.extras import ExtrasWanted, Listener, build_extras
from asynctask.workers.keepers import resident_mb
from asynctask.workers.plan import build_children, check_state_store, import_requires
from asynctask.workers.signals import StopSignals
from asynctask.workers.state import ChildState, describe_exit

logger = logging.getLogger(__name__)

#: How children start: ``forkserver`` (a clean server process, started before any thread of the
#: supervisor, imports asynctask once and forks each child: fast restarts, no inherited threads or
#: connections); ``ASYNCTASK_START_METHOD=spawn`` starts each from a fresh interpreter instead.
START_METHOD = os.environ.get("ASYNCTASK_START_METHOD", "forkserver")
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
#: a task running this long is passed on to listeners as ``started`` (health checks, metrics)
ANNOUNCE_AFTER_S = 1.0
#: how often the supervisor reads a child's resident memory (for the causes of crashes)
RSS_SAMPLE_S = 1.0


class SupervisorOptions(TypedDict, total=False):
    """The keyword options of :class:`Supervisor` (defaults in brackets)."""

    #: the transport URL (the configuration's)
    transport_url: str | None
    #: exit once every queue is empty (False); also run the scheduler (False)
    halt_when_empty: bool
    scheduler: bool
    #: serve metrics on this port (None: no metrics) and address (127.0.0.1)
    metrics_port: int | None
    metrics_bind: str
    #: the children's logging level (INFO), or nothing at all
    log_level: int
    quiet: bool


class Supervisor:
    """Runs the configured workers until halted or signalled; :meth:`run` returns an exit code."""

    def __init__(self, settings: Settings, **options: Unpack[SupervisorOptions]) -> None:
        self.settings = settings
        self.transport_url = options.get("transport_url") or settings.transport_url
        self.halt_when_empty = halt_when_empty = options.get("halt_when_empty", False)
        self.scheduler = scheduler = options.get("scheduler", False)
        self.listeners: list[Listener] = []
        self.stop_event = threading.Event()
        self._signals = StopSignals()
        self._forced = False
        self._context: Any = multiprocessing.get_context(START_METHOD)
        base = ChildSpec(
            queue="",
            worker="",
            transport_url=self.transport_url,
            require=import_requires(settings),
            halt_when_empty=halt_when_empty,
            log_level=options.get("log_level", logging.INFO),
            quiet=options.get("quiet", False),
        )
        self.children = build_children(settings, base, lambda slots: P.CurrentTask(self._context, slots))
        self._leaving: list[tuple[BaseProcess, Connection]] = []
        wanted = ExtrasWanted(scheduler, options.get("metrics_port"), options.get("metrics_bind", "127.0.0.1"))
        queues = [c.queue for c in self.children]
        self._extras = build_extras(settings, self.transport_url, queues, wanted, lambda: self.children)
        self.listeners += self._extras.listeners
        self.transport = attach_state_store(get_transport(self.transport_url), settings.state_store)
        check_state_store(settings, self.transport)
        load_middleware(settings.middleware)  # a bad path stops the command at start, not each child
        self.crashes = CrashKeeper(self.transport)
        if START_METHOD == "forkserver":
            # the fork server imports these once; each child is then a cheap fork of a clean process.
            # ``__main__`` as with spawn: workers defined in the main script (behind its
            # ``if __name__ == "__main__"`` guard) register in the children too.
            self._context.set_forkserver_preload(
                ["__main__", "asynctask.workers.forkserver", "asynctask.workers.child", type(self.transport).__module__]
            )

    # -- public ------------------------------------------------------------------------------

    def probe(self) -> None:
        """Raise TransportUnavailableError (or another TransportError) when the transport does not answer."""
        self.transport.stats(self.children[0].queue if self.children else "asynctask_probe")

    def request_stop(self) -> None:
        """Ask for a graceful shutdown, as SIGTERM does (safe from another thread)."""
        self._signals.request()

    def run(self) -> int:
        """Supervise until halted or signalled; returns one of the EXIT_* codes."""
        try:
            with self._signals:
                for start in self._extras.starters:
                    start(self.stop_event)
                try:
                    return self._loop()
                finally:
                    self.stop_event.set()
                    self._kill_all("supervisor exiting")
                    self._extras.finish()  # the registry deletes this supervisor's record
        finally:
            self.transport.close()

    # -- internals -----------------------------------------------------------------------------

    def _loop(self) -> int:
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            for _ in range(self._signals.take()):
                if grace_until is None:
                    grace_until = now + self.settings.shutdown_timeout_s
                    self._begin_shutdown()
                else:
                    logger.warning("second signal: killing the workers now")
                    self._forced = True
                    self._kill_all("killed by a second signal")
                    return EXIT_FORCED
            if grace_until is not None and now >= grace_until:
                logger.warning(
                    "shutdown grace of %.1f s is over: killing the workers", self.settings.shutdown_timeout_s
                )
                self._kill_all("killed at the end of the shutdown grace period")
                return EXIT_FORCED
            if grace_until is None:
                for child in self.children:
                    if child.process is None and not child.done and now >= child.next_start_at:
                        self._start(child)
            self._watch_children(now)
            self._reap_leaving()
            if not self._leaving and all(child.done and child.process is None for child in self.children):
                if grace_until is not None:
                    logger.info("all workers stopped; exiting")
                else:
                    logger.info("all queues are empty; exiting")
                return EXIT_OK
            self._wait(self._next_deadline(now, grace_until))

    def _wait(self, deadline: float) -> None:
        """Until a child speaks or leaves, a signal comes, or ``deadline``; then
        read the children's messages and reap those that left."""
        waits: list[Any] = [self._signals.fileno()]
        for child in self.children:
            if child.process is not None:
                waits += [child.process.sentinel] if child.conn is None else [child.conn, child.process.sentinel]
        waits += [process.sentinel for process, _ in self._leaving]
        multiprocessing.connection.wait(waits, timeout=max(deadline - time.monotonic(), 0.0))
        for child in self.children:
            if child.process is not None:
                self._drain(child)
                if child.process.exitcode is not None:
                    self._reap(child)

    def _next_deadline(self, now: float, grace_until: float | None) -> float:
        deadline = now + self.settings.check_child_interval_ms / 1000
        if grace_until is not None:
            deadline = min(deadline, grace_until)
        for child in self.children:
            if child.process is None and not child.done:
                deadline = min(deadline, child.next_start_at)
            kill_at = child.kill_deadline() if child.process is not None else None
            if kill_at is not None:
                deadline = min(deadline, now + max(kill_at - time.time(), 0.0))
        return deadline

    def _start(self, child: ChildState) -> None:
        parent_conn, child_conn = self._context.Pipe(duplex=True)  # duplex: crash notices go to the child
        spec = dataclasses.replace(child.spec, report_outcomes=bool(self.listeners))
        process = self._context.Process(
            target=child_main,
            args=(spec, child_conn, os.getpid(), child.current),
            name=f"{child.queue}:{child.worker}#{child.slot}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        child.attach(process, parent_conn)
        self.crashes.child_started(child)
        self._emit(child, P.ChildStarted(process.pid))
        lanes = ""
        if child.concurrency > 1 or child.async_lanes:
            lanes = f", concurrency {child.concurrency} ({'async' if child.async_lanes else 'threads'})"
        logger.info("started worker %s on queue %s (pid %s%s)", child.worker, child.queue, process.pid, lanes)

    def _drain(self, child: ChildState) -> None:
        conn = child.conn
        if conn is None:
            return
        try:
            while conn.poll():
                message = conn.recv()
                child.handle(message)
                self._emit(child, message)
                if isinstance(message, P.Recycle) and not child.done:
                    self._replace(child, message.reason)
                    return
                if isinstance(message, P.Settled):
                    self.crashes.settled(message, self._siblings(child))
        except (EOFError, OSError):
            # the child closed its end (it is leaving): stop watching it, its sentinel tells the rest
            conn.close()
            child.conn = None

    def _replace(self, child: ChildState, reason: str) -> None:
        """Start the replacement of a child leaving on purpose before it has left (it holds nothing)."""
        process, conn = child.process, child.conn
        assert process is not None and conn is not None  # called while reading conn
        logger.info("worker %s on queue %s (pid %s) is recycled (%s)", child.worker, child.queue, process.pid, reason)
        self._emit(child, P.ChildExited(child.pid, recycled=True))
        self._leaving.append((process, conn))
        child.process = child.conn = None
        child.detach()
        self._start(child)

    def _reap_leaving(self, kill: bool = False) -> None:
        for process, conn in list(self._leaving):
            if kill and process.exitcode is None:
                process.kill()
                process.join(5)
            if process.exitcode is not None:
                process.join(0)
                conn.close()
                self._leaving.remove((process, conn))

    def _siblings(self, child: ChildState) -> list[ChildState]:
        return [other for other in self.children if other.queue == child.queue and other is not child]

    def _watch_children(self, now: float) -> None:
        """Timeouts, listeners' ``started``, and each child's resident memory about once a second."""
        wall = time.time()
        for child in self.children:
            if child.process is None or child.killing:
                continue
            if now - child.rss_at >= RSS_SAMPLE_S and child.pid is not None:
                child.rss_mb, child.rss_at = resident_mb(child.pid), now
            running = child.running_tasks()
            if not running:
                child.announced.clear()
                continue
            for task in running:
                if task.task_id not in child.announced and wall - task.at >= ANNOUNCE_AFTER_S:
                    self._announce(child, task)
            child.announced.intersection_update(task.task_id for task in running)
            overran = [t for t in running if t.timeout_s and wall >= t.at + child.kill_after_s(t.timeout_s)]
            if overran:
                self._kill_for_timeout(child, running, wall)

    def _kill_for_timeout(self, child: ChildState, running: list[P.Started], wall: float) -> None:
        """Kill ``child``: its tasks past their ``timeout_s`` count a failed attempt, the others go
        back uncounted (:func:`~asynctask.workers.crashes.give_back`)."""
        assert child.process is not None
        overran = [t for t in running if t.timeout_s and wall >= t.at + t.timeout_s]
        child.timed_out_ids = {t.task_id for t in overran}
        timeout = overran[0].timeout_s if overran else child.timeout_s
        logger.error(
            "task(s) %s on queue %s ran past timeout_s=%s: killing worker %s (pid %s)",
            ", ".join(sorted(child.timed_out_ids)),
            child.queue,
            timeout,
            child.worker,
            child.pid,
        )
        child.kill_cause = f"TaskTimeout: the task ran longer than timeout_s={timeout}; child killed"
        child.killing = True
        child.process.kill()

    def _announce(self, child: ChildState, running: P.Started) -> None:
        """Pass a ``Started`` message on to listeners for a task the child wrote to shared memory."""
        child.announced.add(running.task_id)
        self._emit(child, running)

    def _emit(self, child: ChildState, event: P.Event) -> None:
        for listener in self.listeners:
            listener(child, event)

    def _begin_shutdown(self) -> None:
        logger.info("stopping: waiting up to %.1f s for running tasks", self.settings.shutdown_timeout_s)
        self.stop_event.set()
        for child in self.children:
            child.done = True
            if child.process is not None and child.process.pid is not None:
                try:
                    os.kill(child.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _kill_all(self, cause: str) -> None:
        self._reap_leaving(kill=True)
        for child in self.children:
            if child.process is not None:
                child.done = True
                child.kill_cause = child.kill_cause or cause
                child.process.kill()
                child.process.join(5)
                self._drain(child)
                self._reap(child)

    def _reap(self, child: ChildState) -> None:
        """A child left: give back what it held, tell the listeners, restart it unless it is done."""
        process = child.process
        assert process is not None
        process.join(0.1)
        self._drain(child)
        exitcode = process.exitcode
        how = describe_exit(exitcode)
        lived = time.monotonic() - child.started_at
        self._account_exit(child, exitcode, how)
        timed_out = child.kill_cause is not None and child.kill_cause.startswith("TaskTimeout")
        halted, recycling = child.halted, child.recycling
        child.detach()
        if halted:
            child.done = True
            logger.info("worker %s on queue %s halted: the queue is empty", child.worker, child.queue)
        elif child.done:
            if exitcode != 0:
                logger.warning(
                    "worker %s on queue %s (pid %s) %s during shutdown", child.worker, child.queue, process.pid, how
                )
        else:
            delay = 0.0 if timed_out or recycling else self._backoff(child, lived)
            child.restarts += 1
            child.next_start_at = time.monotonic() + delay
            logger.warning(
                "worker %s on queue %s (pid %s) %s; restarting in %.1f s",
                child.worker,
                child.queue,
                process.pid,
                how,
                delay,
            )

    def _account_exit(self, child: ChildState, exitcode: int | None, how: str) -> None:
        """Give back the dead child's tasks, then pass on what the supervisor did for it and its exit."""
        running = child.running_tasks()
        dead_before = child.dead_lettered
        given = self.crashes.child_died(child, self._siblings(child), how)
        if given.acked:  # finished by the child, acked by us: count them (duration unknown)
            finished = P.Finished([P.Outcome(task_id, P.ACKED, None) for task_id in given.acked])
            child.handle(finished)
            self._emit(child, finished)
        for task in running:
            if task.task_id not in child.announced:
                self._announce(child, task)
        killed_by = signal.Signals(-exitcode).name if exitcode is not None and exitcode < 0 else None
        self._emit(
            child,
            P.ChildExited(
                child.pid,
                restarted=not (child.halted or child.done or child.recycling),
                recycled=child.recycling,
                signal_name=killed_by if running else None,
                dead_lettered=child.dead_lettered - dead_before,
            ),
        )

    @staticmethod
    def _backoff(child: ChildState, lived: float) -> float:
        """The restart delay of a child that died after ``lived`` seconds (and the next one's)."""
        if lived >= HEALTHY_AFTER_S:
            child.backoff_s = RESTART_FIRST_S
        delay = child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, RESTART_MAX_S)
        return delay
