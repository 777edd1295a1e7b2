"""The runner loop on the memory transport: ack, retry, dead letters, batches, rate, leases, outages."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from asynctask.errors import ConfigurationError, TransportUnavailableError, UnknownWorkerError
from asynctask.message import Task
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker, Reject, Retry, get_worker
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.runner import HALT_EMPTY, HALT_IDLE, HALTED, MAX_TASKS, STOPPED, RateLimiter, Runner

SEEN: list[tuple[str, Any]] = []


class UnitOk(AsyncTaskWorker):
    name = "unit_ok"

    def process(self, payload: dict[str, Any]) -> None:
        SEEN.append(("ok", payload.get("n")))


class UnitFail(AsyncTaskWorker):
    name = "unit_fail"
    max_attempts = 3
    retry_delay_s = 0.0

    def process(self, payload: dict[str, Any]) -> None:
        assert self.task is not None
        SEEN.append(("attempt", self.task.attempts))
        if self.task.attempts < payload.get("succeed_on", 99):
            raise KeyError(f"attempt {self.task.attempts}")


class UnitSignals(AsyncTaskWorker):
    name = "unit_signals"
    max_attempts = 3

    def process(self, payload: dict[str, Any]) -> None:
        if payload["do"] == "retry" and self.task is not None and self.task.attempts == 1:
            raise Retry(delay_s=0)
        if payload["do"] == "always_retry":
            SEEN.append(("retry", self.task.attempts if self.task else None))
            raise Retry(delay_s=0, reason="the mail server said later")
        if payload["do"] == "reject":
            raise Reject("not for us")
        SEEN.append(("done", payload["do"]))


class UnitSlow(AsyncTaskWorker):
    name = "unit_slow"
    lease_s = 0.3

    def process(self, payload: dict[str, Any]) -> None:
        time.sleep(payload.get("sleep_s", 1.0))


class UnitTimeout(AsyncTaskWorker):
    name = "unit_timeout"
    timeout_s = 0.2

    def process(self, payload: dict[str, Any]) -> None:
        try:
            time.sleep(5)
        except Exception:  # a worker's broad except must not swallow the timeout
            SEEN.append(("swallowed", None))


@pytest.fixture
def store() -> MemoryTransport:
    SEEN.clear()
    return MemoryTransport(f"memory://{uuid.uuid4().hex}")


def run(store: MemoryTransport, worker: str, **kwargs: Any) -> tuple[Runner, list[P.Message]]:
    messages: list[P.Message] = []
    kwargs.setdefault("halt", HALT_IDLE)
    runner = Runner(store, "jobs", get_worker(worker)(), report=messages.append, poll_interval_s=0.05, **kwargs)
    assert runner.run() in (HALTED, STOPPED, MAX_TASKS)
    return runner, messages


def test_registry_rejects_a_second_class_under_a_taken_name_naming_both() -> None:
    with pytest.raises(ConfigurationError) as info:

        class Again(AsyncTaskWorker):
            name = "unit_ok"

    assert "test_workers_runner.UnitOk" in str(info.value) and "Again" in str(info.value)
    with pytest.raises(UnknownWorkerError, match=r'Worker "nope" does not exist; registered workers: .*unit_ok'):
        get_worker("nope")


def test_retry_delay_is_exponential_with_jitter() -> None:
    class Backoffy(AsyncTaskWorker):
        retry_delay_s = 1.0
        max_retry_delay_s = 10.0

    delays = [Backoffy.retry_delay(n) for n in (1, 2, 3, 4, 5, 6)]
    for delay, base in zip(delays, (1, 2, 4, 8, 10, 10), strict=True):
        assert 0.75 * base <= delay <= 1.25 * base


def test_success_acks_and_reports_fetched_started_finished(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": n} for n in range(5)])
    runner, messages = run(store, "unit_ok")
    assert runner.processed == 5 and [("ok", n) for n in range(5)] == SEEN
    assert store.stats("jobs").in_flight == 0 and store.stats("jobs").ready == 0
    kinds = [type(m) for m in messages]
    assert kinds[0] is P.Fetched and kinds.count(P.Started) == 5
    finished = [entry for m in messages if isinstance(m, P.Finished) for entry in m.outcomes]
    assert sorted(entry.outcome for entry in finished) == [P.ACKED] * 5


def test_exception_retries_then_dead_letters_with_traceback(store: MemoryTransport) -> None:
    store.submit_task("jobs", {"succeed_on": 3})
    store.submit_task("jobs", {})
    runner, messages = run(store, "unit_fail")
    assert SEEN.count(("attempt", 3)) == 2 and runner.processed == 6
    dead = store.dead_tasks("jobs")
    assert len(dead) == 1 and dead[0].attempts == 3
    assert dead[0].reason.startswith("KeyError: 'attempt 3'") and "Traceback (most recent call last)" in dead[0].reason
    outcomes = [entry.outcome for m in messages if isinstance(m, P.Finished) for entry in m.outcomes]
    assert outcomes.count(P.RETRIED) == 4 and outcomes.count(P.DEAD) == 1 and outcomes.count(P.ACKED) == 1


def test_retry_and_reject_steer_one_task(store: MemoryTransport) -> None:
    store.submit_task("jobs", {"do": "retry"})
    rejected = store.submit_task("jobs", {"do": "reject"})
    run(store, "unit_signals")
    assert SEEN == [("done", "retry")]
    dead = store.dead_tasks("jobs")
    assert [d.id for d in dead] == [rejected] and dead[0].reason == "rejected: not for us"


def test_retry_counts_toward_max_attempts_then_dead_letters(store: MemoryTransport) -> None:
    task_id = store.submit_task("jobs", {"do": "always_retry"})
    runner, _ = run(store, "unit_signals")
    assert SEEN == [("retry", 1), ("retry", 2), ("retry", 3)] and runner.processed == 3
    (dead,) = store.dead_tasks("jobs")
    assert (dead.id, dead.attempts) == (task_id, 3)
    assert dead.reason == ("retries exhausted: Retry raised on attempt 3 of max_attempts=3: the mail server said later")


def test_batch_size_grows_for_fast_tasks_and_is_bounded(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": n} for n in range(300)])
    _, messages = run(store, "unit_ok", max_batch=50)
    sizes = [len(m.entries) for m in messages if isinstance(m, P.Fetched)]
    assert sizes[0] == 1 and max(sizes) == 50 and sum(sizes) == 300


def test_stop_gives_back_unstarted_tasks_without_counting_an_attempt(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": n} for n in range(10)])
    stop = threading.Event()

    class StopAfterTwo(AsyncTaskWorker):
        def process(self, payload: dict[str, Any]) -> None:
            if payload["n"] == 1:
                stop.set()

    runner = Runner(store, "jobs", StopAfterTwo(), stop=stop, max_batch=10)
    runner._avg_task_s = 0.0  # ask for a full batch at once
    assert runner.run() == STOPPED
    assert runner.processed == 2
    left = store.get_tasks("jobs", 20)
    assert len(left) == 8 and all(task.attempts == 1 for task in left)


def test_max_tasks_ends_the_run(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": n} for n in range(10)])
    runner, _ = run(store, "unit_ok", max_tasks=4, halt=None)
    assert runner.processed == 4 and store.stats("jobs").ready == 6


def test_halt_empty_waits_for_delayed_tasks(store: MemoryTransport) -> None:
    store.submit_task("jobs", {"n": 1}, delay_s=0.3)
    runner, _ = run(store, "unit_ok", halt=HALT_EMPTY)
    assert runner.processed == 1


def test_lease_is_extended_while_a_long_task_runs(store: MemoryTransport) -> None:
    store.submit_task("jobs", {"sleep_s": 1.0})
    other = MemoryTransport(store.url)
    result: list[list[Task]] = []
    thread = threading.Thread(target=lambda: result.append(other.get_tasks("jobs", 1, timeout_s=0.9)))
    runner = Runner(store, "jobs", get_worker("unit_slow")(), halt=HALT_IDLE)
    runner_thread = threading.Thread(target=runner.run)
    runner_thread.start()
    time.sleep(0.05)
    thread.start()
    thread.join()
    runner_thread.join()
    assert result == [[]]  # the 0.3 s lease never ran out during the 1 s task
    assert store.stats("jobs").in_flight == 0 and runner.processed == 1


def test_timeout_interrupts_python_code_and_counts_a_failed_attempt(store: MemoryTransport) -> None:
    store.submit_task("jobs", {})
    started = time.monotonic()
    run(store, "unit_timeout")
    assert time.monotonic() - started < 2
    dead = store.dead_tasks("jobs")
    assert len(dead) == 1 and dead[0].reason.startswith("TaskTimeout: the task ran longer than timeout_s=0.2")
    assert SEEN == []


def test_rate_limiter_counts_calls_in_a_sliding_window() -> None:
    now = [100.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    assert limiter.available() == 2 and limiter.wait_s() == 0
    limiter.record()
    now[0] += 4
    limiter.record()
    assert limiter.available() == 0 and limiter.wait_s() == pytest.approx(6.0)
    now[0] += 6
    assert limiter.available() == 1 and limiter.wait_s() == 0


def test_rate_limit_counts_tasks_processed_not_polls(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": n} for n in range(5)])
    now = [0.0]
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    runner, messages = run(
        store, "unit_ok", rate_max_calls=2, rate_period_s=1.0, clock=lambda: now[0], sleep=fake_sleep
    )
    assert runner.processed == 5
    assert sum(sleeps) == pytest.approx(2.0)  # tasks 3 and 5 each waited for the window
    assert max(len(m.entries) for m in messages if isinstance(m, P.Fetched)) <= 2


class Flaky(MemoryTransport):
    """Unavailable for the first ``failures`` fetches."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        if self.failures > 0:
            self.failures -= 1
            raise TransportUnavailableError("server at 127.0.0.1:1 cannot be reached")
        return super()._get_tasks(queue, max_count, timeout_s, lease_s)


def test_transport_outage_is_logged_once_and_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    store = Flaky(f"memory://{uuid.uuid4().hex}", failures=4)
    store.submit_task("jobs", {"n": 1})
    sleeps: list[float] = []
    SEEN.clear()
    runner = Runner(store, "jobs", get_worker("unit_ok")(), halt=HALT_IDLE, sleep=sleeps.append)
    assert runner.run() == HALTED
    assert SEEN == [("ok", 1)]
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert sum("transport unavailable" in r.message for r in caplog.records) == 1
    assert any("reachable again" in r.message for r in caplog.records)


def test_outage_reopens_the_transport_and_rebinds_the_worker() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    broken = Flaky(url, failures=10**6)
    broken.submit_task("jobs", {"n": 1})
    opened: list[MemoryTransport] = []

    def reopen() -> MemoryTransport:
        if len(opened) < 2:
            opened.append(Flaky(url, failures=10**6))
        else:
            opened.append(MemoryTransport(url))
        return opened[-1]

    SEEN.clear()
    worker = get_worker("unit_ok")()
    runner = Runner(broken, "jobs", worker, halt=HALT_IDLE, sleep=lambda s: None, reopen=reopen)
    assert runner.run() == HALTED
    assert SEEN == [("ok", 1)] and len(opened) == 3
    assert runner.transport is opened[-1] and worker.transport is opened[-1]


class UnitFastThenSlow(AsyncTaskWorker):
    name = "unit_fast_then_slow"

    def process(self, payload: dict[str, Any]) -> None:
        SEEN.append(("start", payload["n"]))
        time.sleep(payload.get("sleep_s", 0))


def test_a_finished_task_is_acked_within_the_window_while_a_long_one_runs(store: MemoryTransport) -> None:
    store.submit_tasks("jobs", [{"n": 0}, {"n": 1, "sleep_s": 0.6}])
    runner = Runner(store, "jobs", get_worker("unit_fast_then_slow")(), halt=HALT_IDLE)
    runner._avg_task_s = 0.0  # both in one batch: the first one's ack would wait for the batch's end
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until = time.monotonic() + 5
        while ("start", 1) not in SEEN and time.monotonic() < wait_until:
            time.sleep(0.005)
        time.sleep(0.2)  # ten windows of 20 ms
        assert store.stats("jobs").in_flight == 1  # only the long one
    finally:
        thread.join()
    assert store.stats("jobs").in_flight == 0 and runner.processed == 2


class ForgetfulOnce(MemoryTransport):
    """The first ack fails as unreachable, and meanwhile every lease ran out and another consumer
    took the tasks (as after a broker restart); acks go one per task (window 0), so the loop
    notices at once."""

    ack_window_s = 0.0

    def __init__(self, url: str, clock: Any) -> None:
        super().__init__(url, clock=clock)
        self.clock, self.failed = clock, False

    def ack_tasks(self, tasks: Any) -> None:
        if not self.failed:
            self.failed = True
            self.clock[0] += 301  # every lease (300 s) ran out
            self.stolen = MemoryTransport(self.url, clock=lambda: self.clock[0]).get_tasks("jobs", 10)
            raise TransportUnavailableError("server at 127.0.0.1:1 cannot be reached")
        super().ack_tasks(tasks)


def test_after_an_outage_mid_batch_tasks_whose_lease_is_lost_are_not_run() -> None:
    now = [1000.0]
    store = ForgetfulOnce(f"memory://{uuid.uuid4().hex}?lease_s=300", clock=lambda: now[0])
    store.clock = now
    store.submit_tasks("jobs", [{"n": n} for n in range(3)])
    SEEN.clear()
    messages: list[P.Message] = []
    runner = Runner(
        store, "jobs", get_worker("unit_fast_then_slow")(), halt=HALT_IDLE, sleep=lambda s: None, report=messages.append
    )
    runner._avg_task_s = 0.0
    assert runner.run() == HALTED
    assert SEEN == [("start", 0)]  # 1 and 2 are another consumer's now: not run here as well
    lost = [
        entry.task_id for m in messages if isinstance(m, P.Finished) for entry in m.outcomes if entry.outcome == P.LOST
    ]
    assert sorted(lost) == sorted(t.id for t in store.stolen if t.payload["n"] != 0)
