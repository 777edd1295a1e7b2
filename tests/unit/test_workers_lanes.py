"""Many tasks at once in one child (``concurrency``): the thread and async runners on the memory
transport, the supervisor's bookkeeping of a child running several tasks, and the options' checks."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from asynctask.config import Settings, WorkerEntry
from asynctask.errors import ConfigurationError
from asynctask.testing import process_queue
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.aio import AsyncRunner, make_runner
from asynctask.workers.crashes import crash_delay_s, give_back
from asynctask.workers.lanes import TIMED_OUT, ThreadRunner
from asynctask.workers.runner import HALT_IDLE, MAX_TASKS, STOPPED, Runner
from asynctask.workers.state import describe_exit
from asynctask.workers.supervisor import Supervisor

RAN: list[dict[str, Any]] = []
LOCK = threading.Lock()


class Gauge:
    """How many run at once, and the most seen."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def enter(self) -> None:
        with LOCK:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with LOCK:
            self.now -= 1


GAUGE = Gauge()


def note(worker: AsyncTaskWorker, payload: dict[str, Any], **extra: Any) -> None:
    task = worker.task
    with LOCK:
        RAN.append({"n": payload.get("n"), "matches": task is not None and task.payload == payload, **extra})


class LaneThreads(AsyncTaskWorker):
    name = "lane_threads"
    concurrency = 4
    max_attempts = 2
    retry_delay_s = 0.0

    def process(self, payload: dict[str, Any]) -> None:
        GAUGE.enter()
        try:
            time.sleep(payload.get("sleep_s", 0.03))
        finally:
            GAUGE.leave()
        if payload.get("fail"):
            raise ValueError("asked to fail")
        note(self, payload, thread=threading.current_thread().name)


class LaneAsync(AsyncTaskWorker):
    name = "lane_async"
    concurrency = 20
    max_attempts = 2
    retry_delay_s = 0.0
    timeout_s = 0.3

    async def setup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.torn_down = False

    async def process(self, payload: dict[str, Any]) -> None:
        assert asyncio.get_running_loop() is self.loop
        GAUGE.enter()
        try:
            await asyncio.sleep(payload.get("sleep_s", 0.03))
        finally:
            GAUGE.leave()
        if payload.get("fail"):
            raise ValueError("asked to fail")
        note(self, payload)

    async def teardown(self) -> None:
        assert asyncio.get_running_loop() is self.loop
        self.torn_down = True


class LaneThreadsTimeout(LaneThreads):
    name = "lane_threads_timeout"
    timeout_s = 0.2


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()
    GAUGE.now = GAUGE.most = 0


def store() -> MemoryTransport:
    return MemoryTransport(f"memory://{uuid.uuid4().hex}?lease_s=30")


class Reports:
    """The runner's messages, and the most tasks it held at once (Took minus Finished)."""

    def __init__(self) -> None:
        self.messages: list[P.Message] = []
        self.held = self.most_held = 0

    def __call__(self, message: P.Message) -> None:
        self.messages.append(message)
        if isinstance(message, P.Took):
            self.held += len(message.rows)
        elif isinstance(message, P.Finished):
            self.held -= len(message.rows)
        elif isinstance(message, P.Polled):
            self.held = 0
        self.most_held = max(self.most_held, self.held)

    def outcomes(self) -> Counter[str]:
        return Counter(o.outcome for m in self.messages if isinstance(m, P.Finished) for o in m.outcomes)


def run_in_thread(runner: Runner) -> tuple[threading.Thread, list[str]]:
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    return thread, result


# -- threads ---------------------------------------------------------------------------------------


def test_threads_run_n_at_once_each_task_acked_once_with_its_own_self_task() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n} for n in range(60)])
    reports = Reports()
    runner = make_runner(transport, "jobs", LaneThreads(), concurrency=4, halt=HALT_IDLE, report=reports)
    assert isinstance(runner, ThreadRunner)
    started = time.monotonic()
    runner.run()
    elapsed = time.monotonic() - started
    assert sorted(r["n"] for r in RAN) == list(range(60))
    assert all(r["matches"] for r in RAN)
    assert GAUGE.most == 4 and len({r["thread"] for r in RAN}) == 4
    assert elapsed < 60 * 0.03 / 2  # well under the serial time
    assert reports.outcomes() == {"acked": 60}
    stats = transport.stats("jobs")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_a_child_holds_at_most_concurrency_tasks_beyond_those_running() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 1.0} for n in range(40)])
    runner = ThreadRunner(transport, "jobs", LaneThreads(), concurrency=2)
    thread, result = run_in_thread(runner)
    time.sleep(0.3)
    assert transport.stats("jobs").in_flight == 4  # 2 running, 2 waiting
    runner.stop.set()
    thread.join(5)
    assert result == [STOPPED]


def test_stop_finishes_the_running_tasks_and_gives_back_the_held_ones_uncounted() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 0.3} for n in range(20)])
    reports = Reports()
    runner = ThreadRunner(transport, "jobs", LaneThreads(), concurrency=4, report=reports)
    thread, result = run_in_thread(runner)
    deadline = time.monotonic() + 5
    while GAUGE.now < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop.set()
    thread.join(5)
    assert result == [STOPPED]
    assert len(RAN) == 4  # the four running finished
    assert reports.outcomes() == {"acked": 4, "released": 4}
    back = transport.get_tasks("jobs", 100)
    assert len(back) == 16 and all(task.attempts == 1 for task in back)


def test_a_failed_task_in_a_thread_is_retried_then_dead_lettered() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n, "fail": n == 3} for n in range(8)])
    runner = ThreadRunner(transport, "jobs", LaneThreads(), concurrency=4, halt=HALT_IDLE)
    runner.run()
    assert sorted(r["n"] for r in RAN) == [0, 1, 2, 4, 5, 6, 7]
    (dead,) = transport.dead_tasks("jobs")
    assert dead.attempts == 2 and "ValueError: asked to fail" in dead.reason


def test_max_tasks_counts_tasks_taken_and_leaves_the_rest_ready() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n} for n in range(30)])
    runner = ThreadRunner(transport, "jobs", LaneThreads(), concurrency=4, max_tasks=10)
    assert runner.run() == MAX_TASKS
    assert runner.processed == 10 and len(RAN) == 10
    assert transport.stats("jobs").ready == 20


def test_a_rate_limit_counts_every_task_a_lane_starts() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 0.0} for n in range(12)])
    starts: list[float] = []
    runner = ThreadRunner(
        transport, "jobs", LaneThreads(), concurrency=4, halt=HALT_IDLE, rate_max_calls=5, rate_period_s=0.5
    )
    original = runner.rate_wait_s

    def counted() -> float:
        wait = original()
        if wait <= 0:
            starts.append(time.monotonic())
        return wait

    runner.rate_wait_s = counted  # type: ignore[method-assign]
    runner.run()
    assert len(RAN) == 12
    for start in starts:  # never more than 5 in any half second
        assert sum(1 for other in starts if start <= other < start + 0.49) <= 5


def test_a_thread_past_timeout_counts_one_failed_attempt_and_the_child_leaves() -> None:
    transport = store()
    overrun = transport.submit_task("jobs", {"n": 0, "sleep_s": 1.5})
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 0.1} for n in range(1, 4)])
    reports = Reports()
    runner = ThreadRunner(
        transport, "jobs", LaneThreadsTimeout(), concurrency=4, shutdown_timeout_s=2.0, report=reports
    )
    started = time.monotonic()
    assert runner.run() == TIMED_OUT
    assert time.monotonic() - started < 1.2  # it did not wait for the overrunning thread
    assert sorted(r["n"] for r in RAN) == [1, 2, 3]
    assert reports.outcomes() == {"acked": 3, "retried": 1}
    (again,) = transport.get_tasks("jobs", 10)
    assert (again.id, again.attempts) == (overrun, 2)
    time.sleep(1.5)  # the abandoned thread ends: its outcome is dropped, not acked
    assert reports.outcomes() == {"acked": 3, "retried": 1}


# -- async -----------------------------------------------------------------------------------------


def test_async_runs_n_coroutines_on_the_setup_loop_each_acked_once() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n} for n in range(200)])
    started = time.monotonic()
    assert process_queue("jobs", "lane_async", transport=transport) == 200
    assert time.monotonic() - started < 200 * 0.03 / 5
    assert sorted(r["n"] for r in RAN) == list(range(200))
    assert all(r["matches"] for r in RAN)
    assert GAUGE.most == 20
    stats = transport.stats("jobs")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_an_async_task_past_timeout_is_cancelled_as_a_failed_attempt() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": 0, "sleep_s": 5}, {"n": 1}])
    reports = Reports()
    runner = AsyncRunner(transport, "jobs", LaneAsyncPlain(), concurrency=4, halt=HALT_IDLE, report=reports)
    started = time.monotonic()
    runner.run()
    assert time.monotonic() - started < 3
    assert [r["n"] for r in RAN] == [1]
    (dead,) = transport.dead_tasks("jobs")  # max_attempts 2: cancelled twice
    assert dead.attempts == 2 and dead.reason == "TaskTimeout: the task ran longer than timeout_s=0.3"
    assert reports.outcomes() == {"acked": 1, "retried": 1, "dead": 1}


class LaneAsyncPlain(AsyncTaskWorker):
    name = "lane_async_plain"
    concurrency = 4
    max_attempts = 2
    retry_delay_s = 0.0
    timeout_s = 0.3

    async def process(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(payload.get("sleep_s", 0.03))
        note(self, payload)


def test_async_stop_lets_the_running_coroutines_finish() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 0.2} for n in range(30)])
    reports = Reports()
    runner = AsyncRunner(transport, "jobs", LaneAsyncPlain(), concurrency=4, report=reports)
    thread, result = run_in_thread(runner)
    time.sleep(0.15)
    runner.stop.set()
    thread.join(5)
    assert result == [STOPPED]
    assert len(RAN) == 4
    assert reports.outcomes()["acked"] == 4
    assert transport.stats("jobs").ready == 26 and transport.stats("jobs").in_flight == 0


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, True, 1001, "8"])
def test_a_bad_concurrency_is_refused_naming_the_value(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"concurrency must be"):
        type("Bad", (AsyncTaskWorker,), {"name": f"bad_{uuid.uuid4().hex}", "concurrency": value, "process": print})


def test_an_async_setup_on_a_sync_worker_is_refused() -> None:
    async def setup(self: AsyncTaskWorker) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"async def setup\(\) but a plain def process\(\)"):
        type("Mixed", (AsyncTaskWorker,), {"name": f"mixed_{uuid.uuid4().hex}", "setup": setup, "process": print})


def test_concurrency_in_a_workers_entry_overrides_the_class_and_is_checked(tmp_path: Any) -> None:
    from asynctask.config import load_settings

    config = tmp_path / "c.yaml"
    config.write_text("asynctask_workers: {jobs: {worker: lane_threads, concurrency: 0}}\n")
    with pytest.raises(ConfigurationError, match=r"concurrency: 0 is not allowed; an integer >= 1"):
        load_settings([str(config)])
    config.write_text("asynctask_workers: {jobs: {worker: lane_threads, concurency: 2}}\n")
    with pytest.raises(ConfigurationError, match=r"unknown key 'concurency' \(did you mean 'concurrency'\?\)"):
        load_settings([str(config)])
    settings = Settings(
        transport=f"memory://{uuid.uuid4().hex}",
        workers=(WorkerEntry("jobs", "lane_threads", concurrency=16), WorkerEntry("other", "lane_async")),
        require=(__name__,),
    )
    supervisor = Supervisor(settings)
    supervisor.transport.close()
    threads, coroutines = supervisor.children
    assert (threads.concurrency, threads.async_lanes) == (16, False)
    assert (coroutines.concurrency, coroutines.async_lanes) == (20, True)
    assert threads.current is not None and threads.current.slots == 16
    # the supervisor kills a thread child only after the shutdown grace the child itself uses
    assert threads.kill_after_s(1.0) == 2.0 + settings.shutdown_timeout_s
    assert coroutines.kill_after_s(1.0) == 2.0


# -- the supervisor's side -------------------------------------------------------------------------


def test_shared_memory_slots_hold_each_lanes_task() -> None:
    current = P.CurrentTask(slots=3)
    current.set("a", 10.0, None, slot=0)
    current.set("c", 12.0, 5.0, slot=2)
    assert current.read_all() == [P.Started("a", 10.0, None), P.Started("c", 12.0, 5.0)]
    current.clear(0)
    assert current.read_all() == [P.Started("c", 12.0, 5.0)]
    current.clear_all()
    assert current.read_all() == []


def test_a_crash_counts_every_running_task_and_gives_the_held_ones_back_uncounted() -> None:
    url = f"memory://{uuid.uuid4().hex}?lease_s=300"
    settings = Settings(transport=url, workers=(WorkerEntry("jobs", "lane_threads"),), require=(__name__,))
    supervisor = Supervisor(settings)
    child = supervisor.children[0]
    transport = supervisor.transport
    transport.submit_tasks("jobs", [{"n": n} for n in range(6)])
    first = transport.get_tasks("jobs", 2)
    child.handle(P.Took([P.held_entry(t) for t in first], 0.0))
    more = transport.get_tasks("jobs", 4)
    child.handle(P.Took([P.held_entry(t) for t in more], 0.0))
    assert len(child.held) == 6
    running = [first[1], more[0]]
    assert child.current is not None
    for slot, task in enumerate(running):
        child.current.set(task.id, time.time(), None, slot)
    transport.ack(first[0])  # finished and acked: the give-back must not bring it back
    give_back(transport, child, supervisor.crashes.ledger, describe_exit(-9))
    assert child.held == {}
    for task in running:
        record = supervisor.crashes.ledger.get(task.id)
        assert record is not None and record.crashes == 1
    back = transport.get_tasks("jobs", 10)
    assert sorted(t.id for t in back) == sorted(t.id for t in more[1:])
    assert all(t.attempts == 1 for t in back)
    assert transport.stats("jobs").delayed == 2
    assert crash_delay_s(1) == 1.0
    supervisor.transport.close()


class LaneRequeue(AsyncTaskWorker):
    name = "lane_requeue"
    concurrency = 4

    def process(self, payload: dict[str, Any]) -> None:
        if payload["n"] < 40:
            self.requeue({"n": payload["n"] + 40})
        note(self, payload)


class LaneRequeueAsync(AsyncTaskWorker):
    name = "lane_requeue_async"
    concurrency = 10

    async def process(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.001)
        if payload["n"] < 40:
            self.requeue({"n": payload["n"] + 40})
        note(self, payload)


@pytest.mark.parametrize("worker", ["lane_requeue", "lane_requeue_async"])
def test_requeue_works_from_every_thread_and_coroutine(worker: str) -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n} for n in range(40)])
    assert process_queue("jobs", worker, transport=transport) == 80
    assert sorted(r["n"] for r in RAN) == list(range(80))
    assert all(r["matches"] for r in RAN)


def test_an_eager_drain_goes_on_after_a_thread_overran_timeout() -> None:
    transport = store()
    transport.submit_task("jobs", {"n": 0, "sleep_s": 0.5})
    transport.submit_tasks("jobs", [{"n": n, "sleep_s": 0.01} for n in range(1, 30)])
    assert process_queue("jobs", "lane_threads_timeout", transport=transport) == 29
    assert sorted(r["n"] for r in RAN) == list(range(1, 30))
    (dead,) = transport.dead_tasks("jobs")  # it overran on both of its attempts
    assert dead.attempts == 2 and dead.reason.startswith("TaskTimeout")


class LaneResultsAsync(AsyncTaskWorker):
    name = "lane_results_async"
    concurrency = 10
    result_ttl_s = 60

    async def process(self, payload: dict[str, Any]) -> int:
        await asyncio.sleep(0.01)
        if payload["n"] == 3:
            raise ValueError("three")
        return int(payload["n"]) * 2


class LaneResultsThreads(AsyncTaskWorker):
    name = "lane_results_threads"
    concurrency = 4
    result_ttl_s = 60

    def process(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"n": payload["n"]}


@pytest.mark.parametrize("worker", ["lane_results_async", "lane_results_threads"])
def test_lanes_keep_each_tasks_result_and_error(worker: str) -> None:
    transport = store()
    ids = transport.submit_tasks("jobs", [{"n": n} for n in range(6)])
    process_queue("jobs", worker, transport=transport)
    handles = [transport.handle("jobs", task_id) for task_id in ids]
    if worker == "lane_results_async":
        assert [h.status() for h in handles] == ["done", "done", "done", "dead", "done", "done"]
        assert handles[2].result(timeout_s=0) == 4
        record = handles[3].record()
        assert record is not None and record["error"]["type"] == "ValueError"
    else:
        assert [h.result(timeout_s=0) for h in handles] == [{"n": n} for n in range(6)]
