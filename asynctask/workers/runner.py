"""The loop of one worker child: fetch, process, ack / retry / dead-letter, lease heartbeat.

* Fetches in bounded batches with ``get_tasks``; the batch size adapts so that a batch takes about
  ``BATCH_TARGET_S`` (one task at a time for slow tasks, up to ``max_batch`` for fast ones), which
  keeps slow tasks spread over several processes and fast ones cheap.  It never sleeps while tasks
  are ready and blocks in ``get_tasks(timeout_s=poll_interval)`` while the queue is empty.
* Success is acked; the acks of one batch go together (``ack_tasks``) at the end of the batch or
  after ``ACK_FLUSH_S``, so a crash can only cause re-delivery of done tasks, never loss.
* An exception nacks with the worker's backoff while attempts remain, else dead-letters with the
  exception type, message and traceback.  ``Retry`` always nacks; ``Reject`` dead-letters at once.
* ``timeout_s``: SIGALRM interrupts Python code (main thread only) with :class:`TaskTimeout`, a failed
  attempt; the supervisor kills a child stuck in C code (it learns the start time from ``started``).
* A background thread extends the lease of every held task every third of the lease.
* ``rate_max_calls`` per ``rate_period`` seconds counts tasks processed (not polls).
* ``TransportUnavailableError`` from any call is logged once, then retried with backoff (0.5 s
  doubling to 30 s), reopening the transport (``reopen``) before each retry, until it works again;
  the loop never dies of it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from asynctask.errors import TransportError, TransportUnavailableError
from asynctask.task import Task
from asynctask.transports.base import MAX_BATCH, Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.base import AsyncTaskWorker, Reject, Retry, TaskTimeout

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Report = Callable[[P.Message], None]

BATCH_TARGET_S = 0.25
ACK_FLUSH_S = 1.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0

#: how the run ended
STOPPED, HALTED, MAX_TASKS, MAX_MEMORY = "stopped", "halted", "max_tasks", "max_memory"
#: halt modes: stop when the queue is empty (nothing ready, delayed or in flight), or when nothing
#: is ready right now (the eager drain of asynctask.testing)
HALT_EMPTY, HALT_IDLE = "empty", "idle"


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - POSIX only

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RateLimiter:
    """At most ``max_calls`` per sliding window of ``period_s`` seconds."""

    def __init__(self, max_calls: int, period_s: float, clock: Clock = time.monotonic) -> None:
        self.max_calls, self.period_s, self.clock = max_calls, period_s, clock
        self.calls: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        while self.calls and self.calls[0] <= now - self.period_s:
            self.calls.popleft()

    def available(self) -> int:
        """Calls allowed right now."""
        self._trim(self.clock())
        return max(self.max_calls - len(self.calls), 0)

    def wait_s(self) -> float:
        """Seconds until one call is allowed (0 when one is allowed now)."""
        now = self.clock()
        self._trim(now)
        if len(self.calls) < self.max_calls:
            return 0.0
        return max(self.calls[0] + self.period_s - now, 0.0)

    def record(self) -> None:
        self.calls.append(self.clock())


class _LeaseKeeper(threading.Thread):
    """Extends the lease of every held task every ``lease_s / 3`` seconds."""

    def __init__(self, runner: Runner, lease_s: float) -> None:
        super().__init__(name="asynctask-lease", daemon=True)
        self.runner, self.lease_s = runner, lease_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.lease_s / 3):
            for task in self.runner.held_tasks():
                try:
                    if not self.runner.transport.extend(task, self.lease_s):
                        logger.warning("lease of task %s on %s was lost before it finished", task.id, task.queue)
                except TransportError as exc:
                    logger.warning("cannot extend the lease of task %s: %s", task.id, exc)
                except Exception:  # a transport bug must not kill the heartbeat silently
                    logger.exception("extending the lease of task %s failed", task.id)


class Runner:
    """Feeds one queue to one worker instance until stopped, halted or ``max_tasks`` ran.

    ``report`` receives the messages of :mod:`asynctask.workers.protocol` (the child sends them to
    its supervisor).  ``stop`` is set (e.g. by a signal handler) to stop fetching: the task in hand
    finishes, the rest of the batch is given back uncounted.
    """

    def __init__(
        self,
        transport: Transport,
        queue: str,
        worker: AsyncTaskWorker,
        *,
        poll_interval_s: float = 0.5,
        halt: str | None = None,
        rate_max_calls: int | None = None,
        rate_period_s: float = 1.0,
        max_batch: int = 100,
        max_tasks: int | None = None,
        max_memory_mb: float | None = None,
        report: Report | None = None,
        report_outcomes: bool = True,
        reopen: Callable[[], Transport] | None = None,
        current: P.CurrentTask | None = None,
        stop: threading.Event | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.transport, self.queue, self.worker = transport, queue, worker
        self.poll_interval_s = poll_interval_s
        self.halt = halt
        self.limiter = RateLimiter(rate_max_calls, rate_period_s, clock) if rate_max_calls else None
        self.max_batch = max(1, min(max_batch, MAX_BATCH))
        self.max_tasks = max_tasks
        self.max_memory_mb = max_memory_mb
        self.report: Report = report or (lambda message: None)
        self.current = current
        self.report_outcomes = report_outcomes
        self.reopen = reopen
        self.stop = stop or threading.Event()
        self.clock = clock
        self.sleep = sleep or self.stop.wait
        self.lease_s = float(worker.lease_s or transport.lease_s)
        self.processed = 0
        self._held: dict[str, Task] = {}
        self._held_lock = threading.Lock()
        self._pending_acks: list[tuple[Task, float]] = []
        self._pending_since = 0.0
        self._avg_task_s: float | None = None
        self._unavailable = False
        worker.bind(transport, queue)

    # -- bookkeeping -----------------------------------------------------------------------------

    def held_tasks(self) -> list[Task]:
        with self._held_lock:
            return list(self._held.values())

    def _finish(self, entries: Sequence[tuple[Task, str, float]]) -> None:
        with self._held_lock:
            for task, _, _ in entries:
                self._held.pop(task.id, None)
        if entries and self.report_outcomes:
            self.report((P.FINISHED, [(task.id, outcome, duration) for task, outcome, duration in entries]))

    def batch_size(self) -> int:
        """Tasks to ask for next: about BATCH_TARGET_S of work, at least 1, at most max_batch."""
        size = 1 if self._avg_task_s is None else int(BATCH_TARGET_S / max(self._avg_task_s, 1e-5))
        if self.max_tasks is not None:
            size = min(size, self.max_tasks - self.processed)
        if self.limiter is not None:
            size = min(size, self.limiter.available())
        return max(1, min(size, self.max_batch))

    # -- transport calls that survive an outage ------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``self.transport.<method>``; on TransportUnavailableError log once, wait with backoff
        (0.5 s doubling to 30 s), reopen the transport when ``reopen`` was given, and try again until
        it works or ``stop`` is set (then None).  Other TransportErrors are logged and retried alike."""
        delay = RECONNECT_FIRST_S
        while True:
            try:
                result = getattr(self.transport, method)(*args, **kwargs)
            except TransportUnavailableError as exc:
                if not self._unavailable:
                    logger.error("transport unavailable (%s): %s; retrying with backoff", method, exc)
                    self._unavailable = True
            except TransportError as exc:
                logger.error("transport error (%s): %s; retrying in %.1f s", method, exc, delay)
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

    def _reopen(self) -> None:
        assert self.reopen is not None
        try:
            fresh = self.reopen()
        except TransportError as exc:
            logger.debug("reopening the transport failed: %s", exc)
            return
        old, self.transport = self.transport, fresh
        self.worker.bind(fresh, self.queue)
        try:
            old.close()
        except Exception as exc:  # closing a broken connection may fail in any way
            logger.debug("closing the old transport failed: %s", exc)

    def _flush_acks(self) -> None:
        if not self._pending_acks:
            return
        pending, self._pending_acks = self._pending_acks, []
        self._call("ack_tasks", [task for task, _ in pending])
        self._finish([(task, P.ACKED, duration) for task, duration in pending])

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until stopped (``stopped``), halted (``halted``), ``max_tasks`` ran (``max_tasks``) or the
        resident memory passed ``max_memory_mb`` after a batch (``max_memory``)."""
        keeper = _LeaseKeeper(self, self.lease_s)
        keeper.start()
        try:
            return self._loop()
        finally:
            self._flush_acks()
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
            tasks = self._call("get_tasks", self.queue, self.batch_size(), timeout_s=timeout, lease_s=self.lease_s)
            if not tasks:
                if self.stop.is_set():
                    return STOPPED
                self.report((P.POLLED, time.time()))
                if self.halt is not None and self._queue_is_empty():
                    return HALTED
                continue
            with self._held_lock:
                self._held.update((task.id, task) for task in tasks)
            self.report((P.FETCHED, [P.held_entry(task) for task in tasks], time.time()))
            for index, task in enumerate(tasks):
                if self.stop.is_set() or not self._wait_for_rate_slot():
                    self._release(tasks[index:])
                    break
                self._process(task)
                if self._pending_acks and self.clock() - self._pending_since >= ACK_FLUSH_S:
                    self._flush_acks()
            self._flush_acks()
            if self.max_memory_mb is not None and resident_mb() > self.max_memory_mb:
                logger.info("resident memory above max_memory_mb=%s: leaving to be replaced", self.max_memory_mb)
                return MAX_MEMORY

    def _wait_for_rate_slot(self) -> bool:
        while self.limiter is not None and (wait := self.limiter.wait_s()) > 0:
            self.sleep(wait)
            if self.stop.is_set():
                return False
        return True

    def _queue_is_empty(self) -> bool:
        if self.halt == HALT_IDLE:
            return True
        stats = self._call("stats", self.queue)
        return stats is not None and stats.ready == 0 and stats.delayed == 0 and stats.in_flight == 0

    def _release(self, tasks: Sequence[Task]) -> None:
        """Give back tasks fetched but never started, without counting an attempt."""
        released = []
        for task in tasks:
            with self._held_lock:
                if task.id not in self._held:
                    continue
            self._call("nack", task, count_attempt=False)
            released.append((task, P.RELEASED, 0.0))
        self._finish(released)

    # -- one task ----------------------------------------------------------------------------------

    def _process(self, task: Task) -> None:
        worker = self.worker
        worker.task = task
        timeout = worker.timeout_s
        started = self.clock()
        if self.current is not None:
            self.current.set(task.id, time.time(), timeout)
        else:
            self.report((P.STARTED, task.id, time.time(), timeout))
        outcome: str | None = None
        reason = ""
        try:
            if timeout:
                with self._soft_timeout(timeout):
                    worker.process(task.payload)
            else:
                worker.process(task.payload)
        except Retry as exc:
            delay = exc.delay_s if exc.delay_s is not None else worker.retry_delay(task.attempts)
            logger.info("task %s on %s: retry requested (%s), again in %.2f s", task.id, task.queue, exc, delay)
            self._call("nack", task, delay_s=delay)
            outcome = P.RETRIED
        except Reject as exc:
            reason = f"rejected: {exc.reason}"
            outcome = P.DEAD
        except TaskTimeout:
            reason = f"TaskTimeout: the task ran longer than timeout_s={timeout}"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
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
        if outcome is None and not reason:
            if not self._pending_acks:
                self._pending_since = ended
            self._pending_acks.append((task, duration))
            return
        if outcome is None:
            outcome = self._fail(task, reason)
        if outcome == P.DEAD:
            logger.error("task %s on %s dead-lettered after %d attempt(s): %s", task.id, task.queue,
                         task.attempts, reason.splitlines()[0])
            self._call("dead", task, reason)
        self._finish([(task, outcome, duration)])

    def _fail(self, task: Task, reason: str) -> str:
        if task.attempts < self.worker.max_attempts:
            delay = self.worker.retry_delay(task.attempts)
            logger.warning("task %s on %s failed (attempt %d of %d), retrying in %.2f s: %s", task.id, task.queue,
                           task.attempts, self.worker.max_attempts, delay, reason.splitlines()[0])
            self._call("nack", task, delay_s=delay)
            return P.RETRIED
        return P.DEAD

    @contextlib.contextmanager
    def _soft_timeout(self, timeout_s: float | None) -> Iterator[None]:
        if not timeout_s or threading.current_thread() is not threading.main_thread():
            yield
            return
        armed = [True]

        def on_alarm(signum: int, frame: object) -> None:
            if armed[0]:
                armed[0] = False
                raise TaskTimeout(f"the task ran longer than timeout_s={timeout_s}")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            yield
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
