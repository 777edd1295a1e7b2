"""``async def process``: ``concurrency`` coroutines on one event loop per child.

:class:`AsyncRunner` keeps :mod:`asynctask.workers.lanes`' contract with coroutines for lanes.  The
transport is blocking, so its calls (fetch, failures, lease checks) run on one I/O thread beside the
loop, under the runner's I/O lock; acks are queued by the lane and flushed by the ack flusher
thread, so the loop never waits for the server.  A lane's task is cancelled at ``timeout_s``
(``asyncio.timeout``) and counts as a failed attempt; a loop blocked by synchronous code is the
supervisor's to kill (``timeout_s`` plus its grace), its running tasks given back.

:class:`WorkerLoop` runs the worker's hooks: on the child's event loop when ``process`` is
``async def`` (``setup`` and ``teardown`` may then be coroutines too, and share that loop with every
task), directly otherwise (a sync worker never gets a loop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, Unpack

from asynctask.message import Task
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.base import AsyncTaskWorker, is_async_worker
from asynctask.workers.failures import Failure, failure
from asynctask.workers.lanes import BUSY_POLL_S, IDLE_WAIT_S, LaneRunner, ThreadRunner
from asynctask.workers.runner import MAX_TASKS, STOPPED, Runner, RunnerOptions

__all__ = ["AsyncRunner", "WorkerLoop", "make_runner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerLoop:
    """Where a worker's hooks and coroutines run: an ``asyncio.Runner`` for an async worker, nothing
    for a sync one.  Use as a context manager; :meth:`call` runs ``setup`` / ``teardown``."""

    def __init__(self, worker: AsyncTaskWorker) -> None:
        self.worker = worker
        self.runner: asyncio.Runner | None = asyncio.Runner() if is_async_worker(type(worker)) else None

    def __enter__(self) -> WorkerLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            self.runner.close()

    def call(self, hook: Callable[[], Any]) -> None:
        """Run ``hook()``, awaiting what it returns when it is a coroutine."""
        result = hook()
        if inspect.isawaitable(result):
            assert self.runner is not None  # a sync worker's async hook is refused at class creation
            self.runner.run(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class AsyncRunner(LaneRunner):
    """``concurrency`` coroutines run ``async def process`` on ``loop`` (see the module)."""

    def __init__(
        self,
        transport: Transport,
        queue: str,
        worker: AsyncTaskWorker,
        loop: asyncio.Runner | None = None,
        **options: Unpack[RunnerOptions],
    ) -> None:
        super().__init__(transport, queue, worker, **options)
        self.loop = loop
        self._io: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[Task, int] | None] | None = None
        self._changed: asyncio.Event | None = None
        self._running = 0

    def _loop(self) -> str:
        if self.loop is not None:
            return self.loop.run(self._main())
        with asyncio.Runner() as loop:
            return loop.run(self._main())

    async def _io_call(self, call: Callable[..., T], *args: Any) -> T:
        assert self._io is not None
        return await asyncio.get_running_loop().run_in_executor(self._io, call, *args)

    async def _main(self) -> str:
        self._io = ThreadPoolExecutor(1, thread_name_prefix="asynctask-io")
        self._queue, self._changed = asyncio.Queue(), asyncio.Event()
        lanes = [asyncio.create_task(self._lane(slot)) for slot in range(self.concurrency)]
        outcome = STOPPED
        try:
            outcome = await self._dispatch()
        finally:
            unstarted = []
            # max_tasks counted the waiting ones as taken: the lanes run them before leaving
            while outcome != MAX_TASKS and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    unstarted.append(item[0])
            for _ in lanes:
                self._queue.put_nowait(None)
            await self._io_call(self._release, unstarted)
            await asyncio.gather(*lanes, return_exceptions=True)
            self._io.shutdown(wait=True)
        return outcome

    async def _dispatch(self) -> str:
        assert self._queue is not None and self._changed is not None
        while True:
            self._changed.clear()
            ended = self.ending()
            if ended is not None:
                return ended
            waiting = self._queue.qsize()
            held = self._running + waiting
            count = self.room(held, waiting)
            if count <= 0:
                await self._wait_changed(IDLE_WAIT_S)
                continue
            busy = held > 0
            tasks = await self._io_call(self.fetch_for_lanes, count, busy)
            if not tasks:
                if self.stop.is_set():
                    return STOPPED
                if (halted := await self._io_call(self.found_nothing, busy)) is not None:
                    return halted
                if busy:
                    await self._wait_changed(BUSY_POLL_S)
                continue
            for task in tasks:
                self._queue.put_nowait((task, self._outages))

    async def _wait_changed(self, timeout_s: float) -> None:
        assert self._changed is not None
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _lane(self, slot: int) -> None:
        assert self._queue is not None and self._changed is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            self._running += 1
            try:
                await self._run_one(slot, *item)
            except Exception:  # a bug of ours: the task goes back (uncounted), the lane goes on
                logger.exception("lane %d failed on task %s; giving it back", slot, item[0].id)
                await self._io_call(self._release, [item[0]])
            finally:
                self._running -= 1
                self._changed.set()

    async def _run_one(self, slot: int, task: Task, outages: int) -> None:
        worker = self.worker
        if not await self._may_start(task, outages):
            return
        timeout = worker.timeout_for(task)
        ttl = self.result_ttl(task) if self.keeps_results else None
        if ttl is not None:
            await self._io_call(self.record_running, task, ttl)
        if self.current is not None:
            self.current.set(task.id, time.time(), timeout, slot)
        else:
            self.send(P.Started(task.id, time.time(), timeout))
        failed: Failure | None = None
        result: tuple[str, float] | None = None
        error: BaseException | None = None
        started = self.clock()
        worker.task = task  # this lane's context only
        if self.middleware is not None:
            self.middleware.before_process(task)
        try:
            async with asyncio.timeout(timeout) as scope:
                value = await worker.process(task.payload)
            if ttl is not None:
                result = (self.result_text(task, value), ttl)
        except TimeoutError as exc:
            error = exc
            failed = self.timeout_failure(task) if scope.expired() else failure(worker, task, exc)
        except Exception as exc:
            failed, error = failure(worker, task, exc), exc
        finally:
            worker.task = None
            if self.current is not None:
                self.current.clear(slot)
        self.processed += 1
        duration = self.clock() - started
        if failed is None and result is None:
            outcome = self.settle(task, duration, None)
        else:
            outcome = await self._io_call(self.settle, task, duration, failed, result)
        self.settled(task, outcome, error)

    async def _may_start(self, task: Task, outages: int) -> bool:
        """Not stopped, a rate slot, the lease after an outage, acks before a task that crashed a child
        before; a task that may not start is given back (uncounted) or dropped (its lease lost)."""
        if self.stop.is_set():
            await self._io_call(self._release, [task])
            return False
        while (wait := self.rate_wait_s()) > 0:
            await asyncio.sleep(min(wait, IDLE_WAIT_S))
            if self.stop.is_set():
                await self._io_call(self._release, [task])
                return False
        if self._outages != outages and not await self._io_call(self.extend, task):
            self.finish([(task, P.LOST, 0.0)])  # the server gave it to another worker
            return False
        if self.ack_before and task.id in self.ack_before:
            self.ack_before.discard(task.id)
            await self._io_call(self.flush_acks)
        return True


def make_runner(
    transport: Transport,
    queue: str,
    worker: AsyncTaskWorker,
    loop: WorkerLoop | None = None,
    **options: Unpack[RunnerOptions],
) -> Runner:
    """The runner that suits ``worker``: :class:`AsyncRunner` for ``async def process`` (on
    ``loop``'s event loop), :class:`~asynctask.workers.lanes.ThreadRunner` for ``concurrency`` above
    1, else the plain :class:`~asynctask.workers.runner.Runner`."""
    if is_async_worker(type(worker)):
        return AsyncRunner(transport, queue, worker, loop.runner if loop is not None else None, **options)
    if options.get("concurrency", 1) > 1:
        return ThreadRunner(transport, queue, worker, **options)
    return Runner(transport, queue, worker, **options)
