"""What a runner keeps beside its loop: the rate limiter, its resident memory, and two threads.

* :class:`LeaseKeeper` extends the lease of every held task every third of the lease.
* :func:`soft_timeout` interrupts Python code of the main thread with TaskTimeout (SIGALRM).
* :class:`AckFlusher` acks finished tasks that are still waiting ``ack_window_s`` after the first of
  them finished, while the runner's own thread is busy in a long task (the loop itself flushes
  before each fetch and after each task whose pending acks are due).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from asynctask.errors import TransportError
from asynctask.workers.base import TaskTimeout

if TYPE_CHECKING:
    from asynctask.workers.runner import Runner

__all__ = ["AckFlusher", "Clock", "LeaseKeeper", "RateLimiter", "resident_mb", "soft_timeout"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


def resident_mb(pid: int | str = "self") -> float | None:
    """The resident memory of process ``pid`` (default: this one) in MiB, from Linux /proc.

    Elsewhere, for this process, the peak from getrusage; None when it cannot be read (the process
    is gone, or not Linux for another pid).
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        if pid != "self":
            return None
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


class LeaseKeeper(threading.Thread):
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


class AckFlusher(threading.Thread):
    """Flushes the runner's pending acks once the oldest is due, whatever its loop is doing.

    The loop sets :attr:`due` when the first ack of a round is queued; the thread then sleeps until
    that ack is due (:meth:`Runner.ack_due_in`) and flushes, unless the loop did it first.  The
    runner's I/O lock keeps the two threads' transport calls apart (AMQP's pika is not thread-safe).
    """

    def __init__(self, runner: Runner) -> None:
        super().__init__(name="asynctask-acks", daemon=True)
        self.runner = runner
        self.due = threading.Event()
        self.done = threading.Event()

    def stop(self) -> None:
        self.done.set()
        self.due.set()

    def run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.done.is_set():
                return
            wait_s = self.runner.ack_due_in()
            while wait_s is not None and wait_s > 0:
                if self.done.wait(wait_s):
                    return
                wait_s = self.runner.ack_due_in()
            if wait_s is not None:
                try:
                    self.runner.flush_acks()
                except Exception:  # the loop flushes again before its next fetch; say why this one failed
                    logger.exception("acking finished tasks failed")


@contextlib.contextmanager
def soft_timeout(timeout_s: float | None) -> Iterator[None]:
    """Raise :class:`TaskTimeout` in the block after ``timeout_s`` (main thread only, by SIGALRM;
    elsewhere, or with no timeout, the block runs unbounded and the supervisor's hard kill applies)."""
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
