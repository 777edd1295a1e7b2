"""Supervisor bookkeeping on the memory transport (no processes started), and the eager helpers of
asynctask.testing.  Crashes and give-back: test_crash_ledger.py."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from asynctask.config import Settings, WorkerEntry
from asynctask.errors import ConfigurationError, UnknownWorkerError
from asynctask.testing import process_queue, run_worker
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.state import describe_exit, hard_timeout_s
from asynctask.workers.supervisor import Supervisor

DONE: list[Any] = []


class SupOk(AsyncTaskWorker):
    name = "sup_ok"
    max_attempts = 2

    def process(self, payload: dict[str, Any]) -> None:
        DONE.append(payload["n"])
        if payload.get("more"):
            self.requeue({"n": payload["n"] + 100})


def settings_for(url: str, **workers: Any) -> Settings:
    entries = tuple(WorkerEntry(queue, worker) for queue, worker in workers.items())
    return Settings(transport=url, workers=entries, require=(__name__,))


def test_child_state_follows_the_protocol() -> None:
    supervisor = Supervisor(settings_for(f"memory://{uuid.uuid4().hex}", jobs="sup_ok"))
    child = supervisor.children[0]
    assert (child.queue, child.worker, child.max_attempts) == ("jobs", "sup_ok", 2)
    child.handle(P.Fetched([P.HeldEntry("t1", 1, "r1", 0.0, 0), P.HeldEntry("t2", 1, "r2", 0.0, 0)], 123.0))
    assert set(child.held) == {"t1", "t2"} and child.last_fetch_at == 123.0
    child.handle(P.Started("t1", 124.0, 10.0))
    assert child.running_task() == P.Started("t1", 124.0, 10.0)
    assert child.kill_deadline() == 135.0
    child.handle(P.Finished([P.Outcome("t1", P.ACKED, 0.1), P.Outcome("t2", P.RELEASED, 0.0)]))
    assert child.held == {} and child.running_task() is None and child.kill_deadline() is None
    assert child.current is not None
    child.current.set("t9", time.time(), None)
    running = child.running_task()
    assert running is not None and running.task_id == "t9"
    child.current.clear()
    assert child.counts == {P.ACKED: 1, P.RELEASED: 1}
    child.handle(P.Fetched([P.HeldEntry("t3", 1, "r3", 0.0, 0)], 124.0))
    child.handle(P.Fetched([P.HeldEntry("t4", 1, "r4", 0.0, 0)], 125.0))
    assert set(child.held) == {"t4"}  # a new batch means the previous one is done
    child.handle(P.Polled(126.0))
    assert child.held == {} and child.last_fetch_at == 126.0
    child.handle(P.Halted())
    assert child.halted
    supervisor.transport.close()


def test_describe_exit_and_hard_timeout() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by signal SIGKILL"
    assert describe_exit(None) == "is still running"
    assert hard_timeout_s(2) == 3.0 and hard_timeout_s(100) == 110.0


def test_scheduled_only_workers_get_a_child_on_their_queue() -> None:
    settings = Settings(
        transport=f"memory://{uuid.uuid4().hex}",
        workers=(WorkerEntry("jobs", "sup_ok"),),
        scheduled_workers=({"worker": "sup_ok", "minute": 1}, {"worker": "sup_other", "hour": 2}),
        scheduled_sources=("a", "b"),
        require=(__name__,),
    )

    class SupOther(AsyncTaskWorker):
        name = "sup_other"

        def process(self, payload: dict[str, Any]) -> None:
            pass

    supervisor = Supervisor(settings)
    assert [(c.queue, c.worker) for c in supervisor.children] == [
        ("jobs", "sup_ok"),
        ("scheduled_sup_other", "sup_other"),
    ]
    supervisor.transport.close()


def test_unknown_worker_in_settings_is_a_configuration_error() -> None:
    with pytest.raises(UnknownWorkerError, match=r"unknown worker 'ghost'; registered workers: .*sup_ok"):
        Supervisor(settings_for("memory://", jobs="ghost"))
    with pytest.raises(ConfigurationError, match="cannot import module 'no_such_mod_zz'"):
        Supervisor(Settings(transport="memory://", require=("no_such_mod_zz",)))


def test_process_queue_and_run_worker_drain_eagerly() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    store = MemoryTransport(url)
    settings = settings_for(url, jobs="sup_ok")
    DONE.clear()
    store.submit_tasks("jobs", [{"n": 1, "more": True}, {"n": 2}])
    assert process_queue("jobs", transport=store, settings=settings) == 3
    assert sorted(DONE) == [1, 2, 101]
    store.submit_task("other", {"n": 5})
    assert run_worker("sup_ok", "other", transport=store) == 1
    with pytest.raises(ConfigurationError, match='Cannot identify worker for queue "nope"'):
        process_queue("nope", settings=settings)
    with pytest.raises(ConfigurationError, match='Cannot identify queue for worker "sup_x"'):
        run_worker("sup_x", settings=settings)
    with pytest.raises(UnknownWorkerError, match='Worker "sup_x" does not exist'):
        run_worker("sup_x", "jobs", transport=store)


def test_a_queue_rate_limit_is_shared_by_its_processes() -> None:
    entry = WorkerEntry("jobs", "sup_ok", processes=2, rate_max_calls=10, rate_period=1.0)
    supervisor = Supervisor(Settings(transport=f"memory://{uuid.uuid4().hex}", workers=(entry,), require=(__name__,)))
    specs = [child.spec for child in supervisor.children]
    assert [(s.rate_max_calls, s.rate_period_s) for s in specs] == [(10, 2.0), (10, 2.0)]
    supervisor.transport.close()


def test_every_message_pickles_and_batches_travel_as_plain_tuples() -> None:
    import pickle

    rows = [("t1", 1, "r1", 0.0, 0)]
    messages: list[P.Event] = [
        P.Ready(1),
        P.Fetched(rows, 1.0),
        P.Polled(1.0),
        P.Started("t1", 1.0, None),
        P.Finished([("t1", P.ACKED, 0.5)]),
        P.Halted(),
        P.Recycle("max_memory_mb"),
        P.Settled("t1", 1, P.DEAD),
        P.ChildStarted(1),
        P.ChildExited(1, restarted=True),
    ]
    for message in [*messages, P.CrashNotice("t1", 1, 1, 0, None)]:
        assert pickle.loads(pickle.dumps(message)) == message
    fetched = pickle.loads(pickle.dumps(P.Fetched(rows, 1.0)))
    assert type(fetched.rows[0]) is tuple  # cheap to pickle: no NamedTuple per task
    assert fetched.entries == [P.HeldEntry("t1", 1, "r1", 0.0, 0)] and fetched.entries[0].receipt == "r1"
    assert P.Finished([("t1", P.ACKED, 0.5)]).outcomes[0].duration_s == 0.5


def test_stop_signals_count_every_signal_and_request() -> None:
    import os
    import signal

    from asynctask.workers.signals import StopSignals

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    stops = StopSignals()
    stops.request()  # before entering: kept
    with stops:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # both before anything reads the pipe
        time.sleep(0.05)
        assert stops.take() == 3
        assert stops.take() == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # restored
