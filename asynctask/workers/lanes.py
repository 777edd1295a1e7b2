"""Many tasks at once in one child (``concurrency``): the runners that feed *lanes*.

A lane runs one task at a time and owns one slot of the child's
:class:`~asynctask.workers.protocol.CurrentTask`; ``concurrency`` lanes share one worker instance.
:class:`ThreadRunner` (here) runs ``def process`` on one thread per lane;
:class:`~asynctask.workers.aio.AsyncRunner` runs ``async def process`` as one coroutine per lane on
one event loop.  What both guarantee, beyond :class:`~asynctask.workers.runner.Runner`'s:

* **Prefetch**: the child holds at most ``concurrency`` tasks beyond those running (all of them
  leased, and extended by the lease keeper), so it never hoards what other children could start.
* **Fetching**: while it holds nothing it blocks in ``get_tasks(timeout_s=poll_interval)``; while
  tasks run it asks without waiting and, when nothing came, waits for a lane to finish or
  :data:`BUSY_POLL_S`: the lanes share the transport with the fetch, so their acks, failures and
  ``requeue()`` never wait behind a blocking fetch.
* **Acks, retries, dead letters** as for one task, by the lane that ran it; acks are batched within
  the transport's ``ack_window_s``.  **Rate limits** count each task as a lane starts it.
* **Stopping** (SIGTERM, ``max_memory_mb``): no task is started any more, the held ones not
  started go back uncounted, the running ones finish (the supervisor kills the child at the end of
  the shutdown grace, giving them back uncounted).  At ``max_tasks`` (counted as tasks are taken)
  it stops fetching and the lanes run what they took before the child leaves.
* **Reports**: ``Took`` per fetch, ``Polled`` only when nothing is held, ``Finished`` always (the
  supervisor must know every task the child still holds).
* **timeout_s** on threads: a thread cannot be interrupted.  A task that overran is settled at once
  as a failed attempt (its thread's eventual outcome is dropped), the child stops taking tasks, lets
  the other lanes finish within ``asynctask_shutdown_timeout`` (giving back uncounted those that do
  not), then leaves to be replaced (``Recycle("timeout_s")``).  The supervisor kills a child that
  overstays even that (:meth:`~asynctask.workers.state.ChildState.kill_after_s`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Unpack

from asynctask.message import Task
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.base import AsyncTaskWorker, TaskTimeout
from asynctask.workers.failures import Failure, failure
from asynctask.workers.keepers import resident_mb
from asynctask.workers.runner import HALT_IDLE, HALTED, MAX_MEMORY, MAX_TASKS, STOPPED, Runner, RunnerOptions

__all__ = ["BUSY_POLL_S", "TIMED_OUT", "LaneRunner", "ThreadRunner"]

logger = logging.getLogger(__name__)

#: how often a child whose lanes are busy asks for more when the last ask found nothing
BUSY_POLL_S = 0.05
#: the longest the dispatcher waits before looking at its stop event and the lanes' timeouts again
IDLE_WAIT_S = 0.25
#: how the run ended when a thread overran ``timeout_s`` (the child is replaced)
TIMED_OUT = "timeout_s"
MEMORY_CHECK_S = 1.0


class LaneRunner(Runner):
    """What the thread and the async runner share: the room to fetch, the reports, the counts.

    Options as :class:`~asynctask.workers.runner.Runner`'s, plus ``concurrency`` (lanes) and
    ``shutdown_timeout_s`` (the longest the other lanes get after a thread overran ``timeout_s``).
    """

    def __init__(
        self, transport: Transport, queue: str, worker: AsyncTaskWorker, **options: Unpack[RunnerOptions]
    ) -> None:
        options["report_outcomes"] = True  # the supervisor's bookkeeping needs every Finished
        super().__init__(transport, queue, worker, **options)
        self.concurrency = concurrency = options.get("concurrency", 1)
        self.shutdown_timeout_s = options.get("shutdown_timeout_s", 30.0)
        #: tasks handed to lanes (``max_tasks`` counts these)
        self.taken = 0
        #: fetch when at least this much room (or when the lanes have nothing waiting)
        self.min_fetch = max(1, min(concurrency // 8, 50))
        self._report_lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._memory_checked_at = 0.0

    def send(self, message: P.Message) -> None:
        # not the I/O lock: a lane reports while the dispatcher's fetch holds it
        with self._report_lock:
            self.report(message)

    def room(self, held: int, waiting: int) -> int:
        """How many tasks to fetch now (0: none) when ``held`` are held, ``waiting`` of them not started."""
        room = min(2 * self.concurrency - held, self.max_batch)
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - self.taken)
        if self.limiter is not None:
            with self._rate_lock:
                room = min(room, self.limiter.available() - waiting)
        if room < self.min_fetch and not (room > 0 and waiting == 0):
            return 0
        return room

    def ending(self) -> str | None:
        """Why to stop taking tasks now, or None."""
        if self.stop.is_set():
            return STOPPED
        if self.max_tasks is not None and self.taken >= self.max_tasks:
            return MAX_TASKS
        if self.max_memory_mb is not None and self.clock() - self._memory_checked_at >= MEMORY_CHECK_S:
            self._memory_checked_at = self.clock()
            if (resident_mb() or 0.0) > self.max_memory_mb:
                logger.info("resident memory above max_memory_mb=%s: leaving to be replaced", self.max_memory_mb)
                return MAX_MEMORY
        return None

    def fetch_for_lanes(self, count: int, busy: bool) -> list[Task]:
        """Fetch up to ``count`` (blocking only when not ``busy``), report them, act on crash notices;
        returns the tasks to hand to lanes."""
        if not busy:
            self.flush_acks()  # before a wait: nothing finished waits behind it
        timeout = self.poll_interval_s if not busy and self.halt != HALT_IDLE else 0.0
        tasks = self.fetch(count, timeout)
        if not tasks:
            return []
        with self._held_lock:
            self._held.update((task.id, task) for task in tasks)
        self.send(P.Took([P.held_entry(task) for task in tasks], time.time()))
        if self._notices is not None:
            tasks = self._notices.settle(self, tasks)
        self.taken += len(tasks)
        return tasks

    def found_nothing(self, busy: bool) -> str | None:
        """After a fetch that found nothing: report an idle poll; HALTED when the run should halt."""
        if busy:
            return None
        self.send(P.Polled(time.time()))
        if self.halt is not None and self._queue_is_empty():
            return HALTED
        return None

    def rate_wait_s(self) -> float:
        """0 and one start counted when the rate limit allows a task now, else the seconds to wait."""
        if self.limiter is None:
            return 0.0
        with self._rate_lock:
            wait = self.limiter.wait_s()
            if wait <= 0:
                self.limiter.record()
        return wait

    def timeout_failure(self, task: Task) -> tuple[float | None, str]:
        try:
            raise TaskTimeout(f"the task ran longer than timeout_s={self.worker.timeout_for(task)}")
        except TaskTimeout as exc:
            return failure(self.worker, task, exc)

    def settle(
        self, task: Task, duration: float, failed: Failure | None, result: tuple[str, float] | None = None
    ) -> str:
        """Queue the ack of a task a lane ran (after writing its ``result``: JSON and TTL, when it
        keeps one), or give it back / dead-letter it; returns the outcome."""
        if failed is None:
            if result is not None:
                self.record_done(task, *result)
            self._queue_ack(task, duration, self.clock())
            return P.ACKED
        return self.settle_failed(task, duration, failed)

    def settled(self, task: Task, outcome: str, error: BaseException | None) -> None:
        """The middleware's ``after_process`` for a task a lane ran."""
        if self.middleware is not None:
            self.middleware.after_process(task, outcome, error)


@dataclass
class _Lane:
    """The task a thread lane holds; ``started`` is None until ``process`` begins."""

    task: Task
    outages: int
    started: float | None = None
    timeout_s: float | None = None


class ThreadRunner(LaneRunner):
    """``concurrency`` threads run ``def process``; the runner's own thread fetches (see the module)."""

    def __init__(
        self, transport: Transport, queue: str, worker: AsyncTaskWorker, **options: Unpack[RunnerOptions]
    ) -> None:
        super().__init__(transport, queue, worker, **options)
        lock = threading.Lock()
        #: lanes wait on ``_work`` for tasks; the dispatcher on ``_changed`` for a lane to finish
        self._work, self._changed = threading.Condition(lock), threading.Condition(lock)
        self._waiting: collections.deque[tuple[Task, int]] = collections.deque()
        self._lanes: dict[int, _Lane] = {}
        self._closing = False
        #: set when a thread overran timeout_s: the child is to be replaced
        self._overran_at: float | None = None

    def _held_count(self) -> int:
        return len(self._lanes) + len(self._waiting)

    # -- the dispatcher (the runner's own thread) -----------------------------------------------------

    def _loop(self) -> str:
        threads = [
            threading.Thread(target=self._lane, args=(slot,), name=f"asynctask-lane-{slot}", daemon=True)
            for slot in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        outcome = STOPPED
        try:
            outcome = self._dispatch()
        finally:
            with self._work:
                self._closing = True
                # max_tasks counted the waiting ones as taken: the lanes run them before leaving
                unstarted = [] if outcome == MAX_TASKS else [task for task, _ in self._waiting]
                if unstarted:
                    self._waiting.clear()
                self._work.notify_all()
            self._release(unstarted)
        self._drain_lanes()
        for thread in threads:
            if thread.is_alive() and not self._overran_at:
                thread.join(1.0)
        return TIMED_OUT if self._overran_at is not None else outcome

    def _dispatch(self) -> str:
        while True:
            ended = self.ending()
            if ended is not None:
                return ended
            with self._work:
                overran = self._overrun_lanes()
                held, waiting = self._held_count(), len(self._waiting)
            if overran:
                self._fail_overrun(overran)
                return TIMED_OUT
            count = self.room(held, waiting)
            if count <= 0:
                self._wait_changed(self._rate_or_idle_wait_s())
                continue
            busy = held > 0
            tasks = self.fetch_for_lanes(count, busy)
            if not tasks:
                if self.stop.is_set():
                    return STOPPED
                if (halted := self.found_nothing(busy)) is not None:
                    return halted
                if busy:
                    self._wait_changed(BUSY_POLL_S)
                continue
            with self._work:
                self._waiting.extend((task, self._outages) for task in tasks)
                self._work.notify(len(tasks))

    def _rate_or_idle_wait_s(self) -> float:
        if self.limiter is not None:
            with self._rate_lock:
                wait = self.limiter.wait_s()
            if wait > 0:
                return min(wait, IDLE_WAIT_S)
        return IDLE_WAIT_S

    def _wait_changed(self, timeout_s: float) -> None:
        """Until a lane finishes, the next timeout is due, or ``timeout_s``."""
        with self._changed:
            self._changed.wait(min(timeout_s, self._next_timeout_s()))

    def _next_timeout_s(self) -> float:
        """Seconds until a running task overruns its ``timeout_s`` (caller holds the lock)."""
        due = [lane.started + lane.timeout_s for lane in self._lanes.values() if lane.started and lane.timeout_s]
        return max(min(due) - self.clock(), 0.0) if due else IDLE_WAIT_S

    def _overrun_lanes(self) -> list[tuple[int, _Lane]]:
        """Take the lanes whose task overran timeout_s out of the bookkeeping (caller holds the lock)."""
        now = self.clock()
        overran = [
            (slot, lane)
            for slot, lane in self._lanes.items()
            if lane.started is not None and lane.timeout_s and now - lane.started >= lane.timeout_s
        ]
        for slot, _ in overran:
            del self._lanes[slot]
            if self.current is not None:
                self.current.clear(slot)
        return overran

    def _fail_overrun(self, overran: list[tuple[int, _Lane]]) -> None:
        if self._overran_at is None:
            self._overran_at = self.clock()
        for slot, lane in overran:
            logger.error(
                "task %s on %s ran past timeout_s=%s in thread lane %d, which cannot be interrupted: it counts"
                " as a failed attempt, and this child is replaced once its other tasks finish",
                lane.task.id,
                lane.task.queue,
                lane.timeout_s,
                slot,
            )
            assert lane.started is not None
            outcome = self.settle(lane.task, self.clock() - lane.started, self.timeout_failure(lane.task))
            self.settled(lane.task, outcome, TaskTimeout(f"the task ran longer than timeout_s={lane.timeout_s}"))

    def _drain_lanes(self) -> None:
        """Wait for the running lanes; after an overrun, at most ``shutdown_timeout_s``, then give
        back the rest uncounted."""
        while True:
            with self._work:
                overran = self._overrun_lanes()
                running = len(self._lanes) + len(self._waiting)
                unstarted = [task for task, _ in self._waiting] if self.stop.is_set() else []
                if unstarted:
                    self._waiting.clear()
            self._release(unstarted)
            if overran:
                self._fail_overrun(overran)
            if not running:
                return
            if self._overran_at is not None and self.clock() - self._overran_at >= self.shutdown_timeout_s:
                with self._work:
                    left = list(self._lanes.items())
                    self._lanes.clear()
                for slot, lane in left:
                    if self.current is not None:
                        self.current.clear(slot)
                    logger.warning("task %s still running after the grace: given back uncounted", lane.task.id)
                self._release([lane.task for _, lane in left])
                return
            self._wait_changed(IDLE_WAIT_S)

    # -- a lane (one thread each) -----------------------------------------------------------------

    def _lane(self, slot: int) -> None:
        while True:
            with self._work:
                while not self._waiting and not self._closing:
                    self._work.wait()
                if not self._waiting:
                    return
                task, outages = self._waiting.popleft()
                lane = self._lanes[slot] = _Lane(task, outages)
            try:
                if not self._run_one(slot, lane):
                    return  # abandoned after an overrun: this thread ends with its task
            except Exception:  # a bug of ours: the task goes back (uncounted), the lane goes on
                logger.exception("lane %d failed on task %s; giving it back", slot, task.id)
                self._release([task])
                self._leave(slot, lane)

    def _run_one(self, slot: int, lane: _Lane) -> bool:
        """Run one task in lane ``slot``; False when the dispatcher abandoned it (timeout_s)."""
        task, worker = lane.task, self.worker
        if not self._may_start(lane):
            self._leave(slot, lane)
            return True
        timeout = worker.timeout_for(task)
        ttl = self.result_ttl(task) if self.keeps_results else None
        if ttl is not None:
            self.record_running(task, ttl)
        if self.current is not None:
            self.current.set(task.id, time.time(), timeout, slot)
        else:
            self.send(P.Started(task.id, time.time(), timeout))
        with self._work:
            lane.started, lane.timeout_s = self.clock(), timeout
            started = lane.started
        failed: Failure | None = None
        result: tuple[str, float] | None = None
        error: BaseException | None = None
        worker.task = task
        if self.middleware is not None:
            self.middleware.before_process(task)
        try:
            value = worker.process(task.payload)
            if ttl is not None:
                result = (self.result_text(task, value), ttl)
        except (TaskTimeout, Exception) as exc:
            failed, error = failure(worker, task, exc), exc
        finally:
            worker.task = None
        with self._work:
            if self._lanes.get(slot) is not lane:
                return False
            lane.started = None  # settling: not a timeout any more
            self.processed += 1
        if self.current is not None:
            self.current.clear(slot)
        self.settled(task, self.settle(task, self.clock() - started, failed, result), error)
        self._leave(slot, lane)
        return True

    def _may_start(self, lane: _Lane) -> bool:
        """Not stopped, a rate slot, the lease after an outage, acks before a task that crashed a child
        before; a task that may not start is given back (uncounted) or dropped (its lease lost)."""
        task = lane.task
        if self.stop.is_set():
            self._release([task])
            return False
        while (wait := self.rate_wait_s()) > 0:
            self.sleep(wait)
            if self.stop.is_set():
                self._release([task])
                return False
        if self._outages != lane.outages and not self.extend(task):
            self.finish([(task, P.LOST, 0.0)])  # the server gave it to another worker
            return False
        if self.ack_before and task.id in self.ack_before:
            self.ack_before.discard(task.id)
            self.flush_acks()
        return True

    def _leave(self, slot: int, lane: _Lane) -> None:
        with self._work:
            if self._lanes.get(slot) is lane:
                del self._lanes[slot]
            self._changed.notify()
