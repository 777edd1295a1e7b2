"""The loop of one worker child: fetch, process, ack / retry / dead-letter, lease heartbeat.

* Fetches in bounded batches with ``get_tasks``; the batch size adapts so that a batch takes about
  ``BATCH_TARGET_S`` (one task at a time for slow tasks, up to ``max_batch`` for fast ones), which
  keeps slow tasks spread over several processes and fast ones cheap.  It never sleeps while tasks
  are ready and blocks in ``get_tasks(timeout_s=poll_interval)`` while the queue is empty.
* Success is acked promptly and in batches: the acks waiting go together (``ack_tasks``) before the
  next fetch, or once the first of them finished ``ack_window_s`` ago (the transport's: 20 ms, 1 ms
  on AMQP where an ack is a frame without a round trip), by the loop after a task or by a thread
  (:class:`~asynctask.workers.keepers.AckFlusher`) while a long task runs.  So a crash or a server
  restart can only re-deliver the tasks done in that window, never lose one.
* After the transport was unreachable in the middle of a batch, each task left in it is run only if
  its lease is still held (``extend``): a broker that forgot the deliveries has given them to others.
* An exception nacks with the worker's backoff while attempts remain, else dead-letters with the
  exception type, message and traceback.  ``Retry`` nacks the same way with its own delay and counts
  toward ``max_attempts`` (dead-lettered as "retries exhausted" when they are spent); ``Reject``
  dead-letters at once (:mod:`asynctask.workers.failures`).
* ``timeout_s``: SIGALRM interrupts Python code (main thread only) with :class:`TaskTimeout`, a failed
  attempt; the supervisor kills a child stuck in C code (it learns the start time from ``started``).

This runner runs one task at a time; with ``concurrency`` above 1 or an ``async def process`` a
child runs a lane runner instead (:mod:`asynctask.workers.lanes`, :mod:`asynctask.workers.aio`),
which keeps these rules per task.
* A background thread extends the lease of every held task every third of the lease.
* Crash notices (``inbox``, AMQP only: :mod:`asynctask.workers.crashes`): a fetched task that crashed
  a child is given back with the crash delay, or dead-lettered when quarantined, instead of run.
* ``rate_max_calls`` per ``rate_period`` seconds counts tasks processed (not polls).
* ``TransportUnavailableError`` from any call is logged once, then retried with backoff (0.5 s
  doubling to 30 s), reopening the transport (``reopen``) before each retry, until it works again;
  the loop never dies of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack

from asynctask.errors import TransportError, TransportUnavailableError
from asynctask.message import QueueStats, Task
from asynctask.transports.base import MAX_BATCH, Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.base import AsyncTaskWorker, TaskTimeout
from asynctask.workers.crash_notices import CrashNotices
from asynctask.workers.failures import Failure, failure
from asynctask.workers.keepers import AckFlusher, Clock, LeaseKeeper, RateLimiter, resident_mb, soft_timeout
from asynctask.workers.recording import ResultRecording
from asynctask.workers.runner_options import Report, RunnerOptions

__all__ = ["Clock", "RateLimiter", "Runner", "RunnerOptions", "resident_mb"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_TARGET_S = 0.25
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0

#: how the run ended
STOPPED, HALTED, MAX_TASKS, MAX_MEMORY = "stopped", "halted", "max_tasks", "max_memory"
#: halt modes: stop when the queue is empty (nothing ready, delayed or in flight), or when nothing
#: is ready right now (the eager drain of asynctask.testing)
HALT_EMPTY, HALT_IDLE = "empty", "idle"


class Runner(ResultRecording):
    """Feeds one queue to one worker instance until stopped, halted or ``max_tasks`` ran.

    ``report`` receives the messages of :mod:`asynctask.workers.protocol` (the child sends them to
    its supervisor).  ``stop`` is set (e.g. by a signal handler) to stop fetching: the task in hand
    finishes, the rest of the batch is given back uncounted.
    """

    def __init__(
        self, transport: Transport, queue: str, worker: AsyncTaskWorker, **options: Unpack[RunnerOptions]
    ) -> None:
        self.transport, self.queue, self.worker = transport, queue, worker
        self.poll_interval_s = options.get("poll_interval_s", 0.5)
        self.halt = options.get("halt")
        self.clock: Clock = options.get("clock", time.monotonic)
        rate_max_calls = options.get("rate_max_calls")
        self.limiter = (
            RateLimiter(rate_max_calls, options.get("rate_period_s", 1.0), self.clock) if rate_max_calls else None
        )
        self.max_batch = max(1, min(options.get("max_batch", 100), MAX_BATCH))
        self.max_tasks = options.get("max_tasks")
        self.max_memory_mb = options.get("max_memory_mb")
        self.report: Report = options.get("report") or (lambda message: None)
        self.current = options.get("current")
        inbox = options.get("inbox")
        #: crash notices heard (AMQP only)
        self._notices = CrashNotices(inbox) if inbox is not None else None
        self.report_outcomes = options.get("report_outcomes", True)
        self.reopen = options.get("reopen")
        self.stop = options.get("stop") or threading.Event()
        self.sleep: Callable[[float], Any] = options.get("sleep") or self.stop.wait
        self.lease_s = float(worker.lease_s or transport.lease_s)
        self.keeps_results = worker.per_task_options or worker.result_ttl_s is not None
        self.middleware = options.get("middleware")
        self.processed = 0
        self._held: dict[str, Task] = {}
        self._held_lock = threading.Lock()
        #: the runner's transport calls and reports, from its loop and from the ack flusher
        self.io_lock = threading.RLock()
        self._pending_acks: list[tuple[Task, float]] = []
        #: guards the pending acks alone (a lane queues its ack without waiting for a fetch)
        self._acks_lock = threading.Lock()
        self._pending_since = 0.0
        self._ack_window_s = transport.ack_window_s
        self._flusher: AckFlusher | None = None
        self._avg_task_s: float | None = None
        self._unavailable = False
        #: how often the transport was found unreachable (a batch checks its leases after one)
        self._outages = 0
        #: ids of fetched tasks that crashed before: the acks waiting go out before each runs
        self.ack_before: set[str] = set()
        worker.bind(transport, queue, self.io_lock)

    # -- bookkeeping -----------------------------------------------------------------------------

    def held_tasks(self) -> list[Task]:
        with self._held_lock:
            return list(self._held.values())

    def send(self, message: P.Message) -> None:
        with self.io_lock:  # the ack flusher reports too
            self.report(message)

    def finish(self, entries: Sequence[tuple[Task, str, float]]) -> None:
        with self._held_lock:
            for task, _, _ in entries:
                self._held.pop(task.id, None)
        if entries and self.report_outcomes:
            self.send(P.Finished([(task.id, outcome, duration) for task, outcome, duration in entries]))

    def batch_size(self) -> int:
        """Tasks to ask for next: about BATCH_TARGET_S of work, at least 1, at most max_batch."""
        size = 1 if self._avg_task_s is None else int(BATCH_TARGET_S / max(self._avg_task_s, 1e-5))
        if self.max_tasks is not None:
            size = min(size, self.max_tasks - self.processed)
        if self.limiter is not None:
            size = min(size, self.limiter.available())
        return max(1, min(size, self.max_batch))

    # -- transport calls that survive an outage ------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()`` (a call of ``self.transport``, named ``what`` in logs) under the I/O lock; on
        TransportUnavailableError log once, wait with backoff (0.5 s doubling to 30 s), reopen the
        transport when ``reopen`` was given, and try again until it works or ``stop`` is set (then
        None).  Other TransportErrors are logged and retried alike.  ``call`` must read
        ``self.transport`` each time: a reopen replaces it."""
        delay = RECONNECT_FIRST_S
        while True:
            try:
                with self.io_lock:
                    result = call()
            except TransportUnavailableError as exc:
                self._outages += 1
                if not self._unavailable:
                    logger.error("transport unavailable (%s): %s; retrying with backoff", what, exc)
                    self._unavailable = True
            except TransportError as exc:
                logger.error("transport error (%s): %s; retrying in %.1f s", what, exc, delay)
            else:
                if self._unavailable:
                    logger.warning("transport reachable again; resuming")
                    self._unavailable = False
                return result
            if self.stop.is_set():
                return None
            self.sleep(delay)
            if self.stop.is_set():
                return None
            delay = min(delay * 2, RECONNECT_MAX_S)
            if self.reopen is not None:
                self._reopen()

    def fetch(self, count: int, timeout_s: float) -> list[Task]:
        """``get_tasks`` on the runner's queue with its lease; [] when stopped during an outage."""
        queue, lease_s = self.queue, self.lease_s
        found = self._retrying(
            "get_tasks", lambda: self.transport.get_tasks(queue, count, timeout_s=timeout_s, lease_s=lease_s)
        )
        return found or []

    def ack(self, tasks: list[Task]) -> None:
        self._retrying("ack_tasks", lambda: self.transport.ack_tasks(tasks))

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        self._retrying("nack", lambda: self.transport.nack(task, delay_s=delay_s, count_attempt=count_attempt))

    def dead(self, task: Task, reason: str) -> None:
        self._retrying("dead", lambda: self.transport.dead(task, reason))

    def extend(self, task: Task) -> bool:
        """Extend ``task``'s lease by the runner's; False when it was lost (or stopped during an outage)."""
        return bool(self._retrying("extend", lambda: self.transport.extend(task, self.lease_s)))

    def stats(self) -> QueueStats | None:
        return self._retrying("stats", lambda: self.transport.stats(self.queue))

    def _reopen(self) -> None:
        assert self.reopen is not None
        try:
            fresh = self.reopen()
        except TransportError as exc:
            logger.debug("reopening the transport failed: %s", exc)
            return
        old, self.transport = self.transport, fresh
        self.worker.bind(fresh, self.queue, self.io_lock)
        try:
            old.close()
        except Exception as exc:  # closing a broken connection may fail in any way
            logger.debug("closing the old transport failed: %s", exc)

    def flush_acks(self) -> None:
        """Ack every finished task not acked yet, in one call (thread-safe)."""
        with self.io_lock:
            with self._acks_lock:
                if not self._pending_acks:
                    return
                pending, self._pending_acks = self._pending_acks, []
            self.ack([task for task, _ in pending])
            self.finish([(task, P.ACKED, duration) for task, duration in pending])

    def ack_due_in(self) -> float | None:
        """Seconds until the oldest waiting ack is due (<= 0: now), None when none waits."""
        if not self._pending_acks:
            return None
        return self._pending_since + self._ack_window_s - self.clock()

    def _queue_ack(self, task: Task, duration: float, ended: float) -> None:
        with self._acks_lock:
            first = not self._pending_acks
            if first:
                self._pending_since = ended
            self._pending_acks.append((task, duration))
        if first and self._flusher is not None:
            self._flusher.due.set()

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until stopped (``stopped``), halted (``halted``), ``max_tasks`` ran (``max_tasks``) or the
        resident memory passed ``max_memory_mb`` after a batch (``max_memory``)."""
        keeper = LeaseKeeper(self, self.lease_s)
        keeper.start()
        self._flusher = AckFlusher(self)
        self._flusher.start()
        try:
            return self._loop()
        finally:
            self._flusher.stop()
            self._flusher.join(5.0)  # it may be acking: let it end before the last flush
            self.flush_acks()
            self._release(self.held_tasks())
            keeper.done.set()

    def _loop(self) -> str:
        while True:
            if self.stop.is_set():
                return STOPPED
            if self.max_tasks is not None and self.processed >= self.max_tasks:
                return MAX_TASKS
            if self.limiter is not None and (wait := self.limiter.wait_s()) > 0:
                self.sleep(wait)
                continue
            timeout = 0.0 if self.halt == HALT_IDLE else self.poll_interval_s
            tasks = self.fetch(self.batch_size(), timeout)
            if not tasks:
                if self.stop.is_set():
                    return STOPPED
                self.send(P.Polled(time.time()))
                if self.halt is not None and self._queue_is_empty():
                    return HALTED
                continue
            with self._held_lock:
                self._held.update((task.id, task) for task in tasks)
            self.send(P.Fetched([P.held_entry(task) for task in tasks], time.time()))
            if self._notices is not None:
                tasks = self._notices.settle(self, tasks)
            self._run_batch(tasks)
            if self.max_memory_mb is not None and (resident_mb() or 0.0) > self.max_memory_mb:
                logger.info("resident memory above max_memory_mb=%s: leaving to be replaced", self.max_memory_mb)
                return MAX_MEMORY

    def _run_batch(self, tasks: list[Task]) -> None:
        """Process a fetched batch in order (the rest given back when stopped), then ack what waits."""
        outages = self._outages
        for index, task in enumerate(tasks):
            if self.stop.is_set() or not self._wait_for_rate_slot():
                self._release(tasks[index:])
                break
            if self._outages != outages and not self.extend(task):
                self.finish([(task, P.LOST, 0.0)])  # the server gave it to another worker
                continue
            if self.ack_before and task.id in self.ack_before:
                self.ack_before.discard(task.id)
                self.flush_acks()
            self._process(task)
            if self._pending_acks and self.clock() - self._pending_since >= self._ack_window_s:
                self.flush_acks()
        self.flush_acks()

    def _wait_for_rate_slot(self) -> bool:
        while self.limiter is not None and (wait := self.limiter.wait_s()) > 0:
            self.sleep(wait)
            if self.stop.is_set():
                return False
        return True

    def _queue_is_empty(self) -> bool:
        if self.halt == HALT_IDLE:
            return True
        stats = self.stats()
        return stats is not None and stats.ready == 0 and stats.delayed == 0 and stats.in_flight == 0

    def _release(self, tasks: Sequence[Task]) -> None:
        """Give back tasks fetched but never started, without counting an attempt."""
        released = []
        for task in tasks:
            with self._held_lock:
                if task.id not in self._held:
                    continue
            self.nack(task, count_attempt=False)
            released.append((task, P.RELEASED, 0.0))
        self.finish(released)

    # -- one task ----------------------------------------------------------------------------------

    def _process(self, task: Task) -> None:
        worker = self.worker
        worker.task = task
        if self.middleware is not None:
            self.middleware.before_process(task)
        timeout = worker.timeout_for(task)
        ttl = self.result_ttl(task) if self.keeps_results else None
        if ttl is not None:
            self.record_running(task, ttl)
        started = self.clock()
        if self.current is not None:
            self.current.set(task.id, time.time(), timeout)
        else:
            self.send(P.Started(task.id, time.time(), timeout))
        try:
            failed, result, error = self._call(task, timeout, ttl is not None)
        finally:
            worker.task = None
            if self.current is not None:
                self.current.clear()
        ended = self.clock()
        duration = ended - started
        self.processed += 1
        if self.limiter is not None:
            self.limiter.record()
        self._avg_task_s = duration if self._avg_task_s is None else 0.8 * self._avg_task_s + 0.2 * duration
        if failed is None:
            if result is not None and ttl is not None:
                self.record_done(task, result, ttl)
            self._queue_ack(task, duration, ended)
            outcome = P.ACKED
        else:
            outcome = self.settle_failed(task, duration, failed)
        if self.middleware is not None:
            self.middleware.after_process(task, outcome, error)

    def _call(
        self, task: Task, timeout: float | None, keep: bool
    ) -> tuple[Failure | None, str | None, BaseException | None]:
        """Run ``process``: (the failure, if it failed; the JSON of its value when ``keep``; the
        exception it raised)."""
        try:
            if timeout:
                with soft_timeout(timeout):
                    value = self.worker.process(task.payload)
            else:
                value = self.worker.process(task.payload)
            return None, (self.result_text(task, value) if keep else None), None
        except (TaskTimeout, Exception) as exc:
            return failure(self.worker, task, exc), None, exc

    def settle_failed(self, task: Task, duration: float, failed: Failure) -> str:
        """Give back (``failed[0]`` the delay) or dead-letter (None) a task whose attempt failed;
        returns the outcome (``retried`` or ``dead``).

        A task keeping results gets its record first when it is given back (so the next attempt's
        ``running`` comes after it), after the dead letter when it is dead (so ``dead`` is only ever
        said of a task in the dead letters)."""
        delay, reason = failed
        if delay is not None:
            if self.keeps_results:
                self.record_failed(task, reason, final=False)
            self.nack(task, delay_s=delay)
            self.finish([(task, P.RETRIED, duration)])
            return P.RETRIED
        logger.error(
            "task %s on %s dead-lettered after %d attempt(s): %s",
            task.id,
            task.queue,
            task.attempts,
            reason.splitlines()[0],
        )
        self.dead(task, reason)
        if self.keeps_results:
            self.record_failed(task, reason, final=True)
        self.finish([(task, P.DEAD, duration)])
        return P.DEAD
