"""Crashes are not failures: the supervisor's give-back and crash ledger on the memory transport with
an injected clock (no processes started), and the runner's side of AMQP's crash notices."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from asynctask.config import Settings, WorkerEntry
from asynctask.message import Task
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.child import ChildSpec
from asynctask.workers.crashes import CrashLedger, crash_delay_s, give_back
from asynctask.workers.runner import HALT_IDLE, Runner
from asynctask.workers.state import ChildState, describe_exit
from asynctask.workers.supervisor import Supervisor

RAN: list[Any] = []


class CrashyOk(AsyncTaskWorker):
    name = "crash_ok"
    max_attempts = 2

    def process(self, payload: dict[str, Any]) -> None:
        RAN.append(payload["n"])


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Unportable(MemoryTransport):
    """Receipts that another process cannot use, as on AMQP: the supervisor must not touch them."""

    portable_receipts = False

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        self.nacked.append((task.attempts, delay_s, count_attempt))
        super().nack(task, delay_s=delay_s, count_attempt=count_attempt)

    nacked: list[tuple[int, float, bool]]


def world(**entry: Any) -> tuple[MemoryTransport, Supervisor, ChildState, Clock]:
    """A store with a fake clock, and a supervisor (not run) whose transport shares that store."""
    clock = Clock()
    url = f"memory://{uuid.uuid4().hex}?lease_s=300"
    settings = Settings(transport=url, workers=(WorkerEntry("jobs", "crash_ok", **entry),), require=(__name__,))
    supervisor = Supervisor(settings)
    supervisor.transport.close()
    supervisor.transport = MemoryTransport(url, clock=clock)
    return supervisor.transport, supervisor, supervisor.children[0], clock


def fetch_and_start(store: MemoryTransport, child: ChildState, count: int = 1) -> list[Task]:
    tasks = store.get_tasks("jobs", count)
    child.handle(P.Fetched([P.held_entry(t) for t in tasks], 0.0))
    child.handle(P.Started(tasks[0].id, 0.0, None))
    return tasks


def test_a_crash_gives_the_running_task_back_uncounted_after_a_delay_and_the_rest_at_once() -> None:
    store, supervisor, child, clock = world()
    store.submit_tasks("jobs", [{"n": n} for n in range(3)])
    running, *others = fetch_and_start(store, child, 3)
    assert child.current is not None
    give_back(store, child, supervisor.crashes.ledger, describe_exit(-9))
    assert child.held == {}
    again = store.get_tasks("jobs", 10)
    assert sorted(t.id for t in again) == sorted(t.id for t in others)  # not the crashed one yet
    assert all(t.attempts == 1 for t in again)
    assert store.stats("jobs").delayed == 1
    clock.now += crash_delay_s(1)
    (back,) = store.get_tasks("jobs", 10)
    assert (back.id, back.attempts) == (running.id, 1)  # max_attempts is not touched by a crash
    assert store.dead_tasks("jobs") == []


def test_the_tasks_a_dead_child_finished_before_the_crash_are_acked_not_run_again() -> None:
    store, supervisor, child, clock = world()
    store.submit_tasks("jobs", [{"n": n} for n in range(4)])
    done_1, done_2, running, unstarted = store.get_tasks("jobs", 4)
    child.handle(P.Fetched([P.held_entry(t) for t in (done_1, done_2, running, unstarted)], 0.0))
    store.ack(done_1)  # its ack went out; done_2's was still in the ack window
    child.handle(P.Started(running.id, 0.0, None))
    given = give_back(store, child, supervisor.crashes.ledger, describe_exit(-9))
    assert given.acked == [done_1.id, done_2.id]
    assert [t.id for t in store.get_tasks("jobs", 10)] == [unstarted.id]
    clock.now += crash_delay_s(1)
    assert [t.id for t in store.get_tasks("jobs", 10)] == [running.id]


def test_a_task_is_quarantined_after_max_crashes_deaths_with_every_cause() -> None:
    store, supervisor, child, clock = world()
    task_id = store.submit_task("jobs", {"n": 1})
    causes = [-9, 1, -11]
    for crash, exitcode in enumerate(causes, start=1):
        assert store.dead_tasks("jobs") == []
        (task,) = fetch_and_start(store, child)
        assert task.attempts == 1
        child.pid, child.rss_mb = 4000 + crash, 40.0 + crash
        give_back(store, child, supervisor.crashes.ledger, describe_exit(exitcode))
        clock.now += crash_delay_s(crash)
    (dead,) = store.dead_tasks("jobs")
    assert dead.id == task_id and dead.reason.startswith(
        "quarantined: 3 worker children died while running the task (max_crashes=3)\n"
        "#1 worker child (pid 4001) was killed by signal SIGKILL, rss 41 MiB, host "
    )
    assert "#2 worker child (pid 4002) exited with code 1, rss 42 MiB" in dead.reason
    assert "#3 worker child (pid 4003) was killed by signal SIGSEGV, rss 43 MiB" in dead.reason
    assert child.dead_lettered == 1 and supervisor.crashes.ledger.get(task_id) is None
    assert store.stats("jobs").ready == 0 and store.stats("jobs").delayed == 0


def test_max_crashes_of_the_queue_entry_overrides_the_class() -> None:
    store, supervisor, child, _clock = world(max_crashes=1)
    assert child.max_crashes == 1
    store.submit_task("jobs", {"n": 1})
    fetch_and_start(store, child)
    give_back(store, child, supervisor.crashes.ledger, describe_exit(-9))
    assert len(store.dead_tasks("jobs")) == 1


def test_a_kill_for_timeout_stays_a_failed_attempt() -> None:
    store, supervisor, child, _clock = world()
    task_id = store.submit_task("jobs", {"n": 1})
    for attempt in (1, 2):
        (task,) = fetch_and_start(store, child)
        assert task.attempts == attempt
        child.kill_cause = "TaskTimeout: the task ran longer than timeout_s=1; child killed"
        give_back(store, child, supervisor.crashes.ledger, describe_exit(-9))
    (dead,) = store.dead_tasks("jobs")
    assert dead.id == task_id
    assert dead.reason == "TaskTimeout: the task ran longer than timeout_s=1; child killed (attempt 2 of 2)"
    assert supervisor.crashes.ledger.get(task_id) is None  # not a crash


def test_without_portable_receipts_the_supervisor_only_records_and_notifies() -> None:
    clock = Clock()
    store = Unportable(f"memory://{uuid.uuid4().hex}", clock=clock)
    store.nacked = []
    ledger = CrashLedger(clock=clock)
    child = ChildState(_spec(), 0, max_attempts=1, max_crashes=2)
    store.submit_task("jobs", {"n": 1})
    for crash in (1, 2):
        (task,) = fetch_and_start(store, child)
        changed = give_back(store, child, ledger, describe_exit(-9)).notices
        assert [r.task_id for r in changed] == [task.id] and changed[0].crashes == crash
        store.nack(task, count_attempt=False)  # stands for the broker's redelivery
    notice = changed[0].notice()
    assert (notice.task_id, notice.crashes, notice.attempts, notice.deferred) == (task.id, 2, 1, 0)
    assert notice.dead_reason is not None and notice.dead_reason.startswith("quarantined: 2 worker children")
    assert store.dead_tasks("jobs") == [] and ledger.open_records("jobs") == changed


def _spec() -> ChildSpec:
    return ChildSpec(queue="jobs", worker="crash_ok", transport_url="memory://")


def test_the_ledger_forgets_after_an_hour_and_keeps_at_most_its_bound() -> None:
    clock = Clock()
    ledger = CrashLedger(clock=clock, max_records=3)
    first = ledger.record("jobs", "t1", 1, "cause")
    assert ledger.record("jobs", "t1", 1, "again") is first and first.crashes == 2
    clock.now += 3599
    assert ledger.get("t1") is first
    clock.now += 2
    assert ledger.get("t1") is None
    for n in range(5):
        ledger.record("jobs", f"x{n}", 1, "cause")
    assert [r.task_id for r in ledger.open_records("jobs")] == ["x2", "x3", "x4"]
    assert ledger.settled("x3", 1, P.DEFERRED) is not None and [r.task_id for r in ledger.open_records("jobs")] == [
        "x2",
        "x4",
    ]
    assert ledger.settled("x4", 1, P.DEAD) is None and ledger.get("x4") is None


@pytest.mark.parametrize("dead_reason", [None, "quarantined: test"])
def test_the_runner_acts_on_crash_notices_instead_of_running_the_task(dead_reason: str | None) -> None:
    store = Unportable(f"memory://{uuid.uuid4().hex}")
    store.nacked = []
    crashed, _healthy = store.submit_tasks("jobs", [{"n": 1}, {"n": 2}])
    notices = [P.CrashNotice(crashed, 1, 1, 0, dead_reason)]
    messages: list[P.Message] = []
    RAN.clear()
    runner = Runner(
        store,
        "jobs",
        CrashyOk(),
        halt=HALT_IDLE,
        report=messages.append,
        inbox=lambda: [notices.pop()] if notices else [],
    )
    runner._avg_task_s = 0.0  # both in one batch
    runner.run()
    assert RAN == [2]
    settled = [m for m in messages if isinstance(m, P.Settled)]
    if dead_reason is None:
        assert settled == [P.Settled(crashed, 1, P.DEFERRED)]
        assert store.nacked == [(1, crash_delay_s(1), False)] and store.stats("jobs").delayed == 1
    else:
        assert settled == [P.Settled(crashed, 1, P.DEAD)]
        assert [d.reason for d in store.dead_tasks("jobs")] == [dead_reason]
