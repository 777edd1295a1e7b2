"""The keyed state, cancel and ``Task.meta`` part of the contract, on every transport.

AMQP keeps its state in another transport's store (``asynctask_state_store``): here a filesystem
one in the test's directory, as a user without Redis would configure it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harnesslib import Harness

from asynctask.errors import PayloadError, QueueNameError
from asynctask.transports import get_transport
from asynctask.transports.base import Transport


@pytest.fixture
def store(harness: Harness, tmp_path: Path) -> Iterator[Transport]:
    """The harness's transport, given a filesystem state store where it keeps none itself."""
    transport = harness.transport
    if harness.name == "amqp":
        transport.state_store = get_transport(f"filesys:{tmp_path / 'state'}")
    yield transport
    if transport.state_store is not None:
        transport.state_store.close()  # type: ignore[attr-defined]


# -- meta ------------------------------------------------------------------------------------------


def test_meta_travels_beside_the_payload_through_nack_dead_letters_and_replay(store: Transport, queue: str) -> None:
    meta = {"fn": "app.tasks.add", "result_ttl_s": 60, "nested": {"a": [1, 2]}}
    task_id = store.submit_task(queue, {"x": 1}, meta=meta)
    plain_id = store.submit_task(queue, {"x": 2})
    tasks = {t.id: t for t in store.get_tasks(queue, 10, timeout_s=2)}
    assert (tasks[task_id].payload, tasks[task_id].meta) == ({"x": 1}, meta)
    assert (tasks[plain_id].payload, tasks[plain_id].meta) == ({"x": 2}, {})
    store.ack(tasks[plain_id])
    store.nack(tasks[task_id])
    (again,) = store.get_tasks(queue, 10, timeout_s=2)
    assert (again.id, again.payload, again.meta) == (task_id, {"x": 1}, meta)
    store.dead(again, "for the test")
    (dead,) = store.dead_tasks(queue)
    assert (dead.payload, dead.meta) == ({"x": 1}, meta)
    assert store.replay_dead(queue) == 1
    (replayed,) = store.get_tasks(queue, 10, timeout_s=2)
    assert (replayed.payload, replayed.meta) == ({"x": 1}, meta)
    store.ack(replayed)


def test_submit_tasks_gives_each_the_meta_and_a_bad_meta_stores_nothing(store: Transport, queue: str) -> None:
    ids = store.submit_tasks(queue, [{"n": 1}, {"n": 2}], meta={"fn": "f"})
    with pytest.raises(PayloadError, match="meta"):
        store.submit_task(queue, {"n": 3}, meta={"bad": {1, 2}})
    with pytest.raises(PayloadError, match="meta must be a JSON object"):
        store.submit_tasks(queue, [{"n": 4}], meta=["not", "a", "dict"])  # type: ignore[arg-type]
    tasks = store.get_tasks(queue, 10, timeout_s=2)
    assert sorted(t.id for t in tasks) == sorted(ids)
    assert all(t.meta == {"fn": "f"} for t in tasks)
    store.ack_tasks(tasks)


# -- keyed state -----------------------------------------------------------------------------------


def test_put_get_replace_delete_and_keys_by_prefix(store: Transport, queue: str) -> None:
    assert store.state_get(queue, "r.1") is None
    store.state_put(queue, "r.1", '{"status":"queued"}', 60)
    store.state_put(queue, "r.2", "two", 60)
    store.state_put(queue, "x.1", "other", 60)
    assert store.state_get(queue, "r.1") == '{"status":"queued"}'
    store.state_put(queue, "r.1", '{"status":"done","result":5}', 60)
    assert store.state_get(queue, "r.1") == '{"status":"done","result":5}'
    assert store.state_get_many(queue, ["r.2", "nope", "r.1"]) == ["two", None, '{"status":"done","result":5}']
    assert store.state_keys(queue, "r.") == ["r.1", "r.2"]
    assert store.state_keys(queue) == ["r.1", "r.2", "x.1"]
    assert store.state_get("other_" + queue[:20], "r.1") is None  # the queue scopes the key
    assert store.state_delete(queue, "r.2") is True
    assert store.state_delete(queue, "r.2") is False
    assert store.state_keys(queue, "r.") == ["r.1"]
    big = "é" * 200_000
    store.state_put(queue, "big", big, 60)
    assert store.state_get(queue, "big") == big


def test_records_expire_by_themselves_and_a_sweep_leaves_nothing(store: Transport, queue: str) -> None:
    store.state_put(queue, "short", "v", 0.5)
    assert store.state_add(queue, "claimed", "v", 0.5) is True
    store.state_put(queue, "long", "v", 60)
    time.sleep(1.2)
    assert store.state_get(queue, "short") is None
    assert store.state_keys(queue) == ["long"]
    assert store.state_add(queue, "claimed", "again", 60) is True  # expired: free to take again
    store.state_sweep()
    assert store.state_get(queue, "long") == "v"


def test_add_writes_once_among_competing_threads(harness: Harness, store: Transport, queue: str) -> None:
    winners: list[int] = []
    start = threading.Barrier(4)

    def compete(number: int) -> None:
        other = harness.open()
        if store.state_store is not None:
            other.state_store = store.state_store
        try:
            start.wait()
            for key in range(20):
                if other.state_add(queue, f"k.{key}", str(number), 60):
                    winners.append(key)
        finally:
            other.close()

    threads = [threading.Thread(target=compete, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(winners) == list(range(20))


def test_wait_sees_a_record_written_meanwhile_within_a_fraction_of_a_second(store: Transport, queue: str) -> None:
    written_at: list[float] = []

    def write() -> None:
        time.sleep(0.3)
        store.state_put(queue, "late", "here", 60)
        written_at.append(time.monotonic())

    threading.Thread(target=write).start()
    assert store.state_wait(queue, "late", 5) == "here"
    assert time.monotonic() - written_at[0] < 0.2
    started = time.monotonic()
    assert store.state_wait(queue, "never", 0.3) is None
    assert 0.25 < time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("key", "ttl_s"), [("", 1), ("a/b", 1), ("a" * 201, 1), ("ok", 0), ("ok", float("inf")), (3, 1)]
)
def test_bad_keys_and_ttls_are_refused(store: Transport, queue: str, key: object, ttl_s: float) -> None:
    with pytest.raises(ValueError, match=r"state key|ttl_s"):
        store.state_put(queue, key, "v", ttl_s)  # type: ignore[arg-type]
    with pytest.raises(QueueNameError):
        store.state_get("Bad Queue", "ok")


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_removes_a_waiting_task_and_not_a_taken_one(harness: Harness, store: Transport, queue: str) -> None:
    meta = {"fn": "app.f"}  # as @task submits (on AMQP a plain task taken by a worker cannot be told)
    delayed = store.submit_task(queue, {"n": "delayed"}, delay_s=1.0, meta=meta)
    ready = store.submit_task(queue, {"n": "ready"}, meta=meta)
    taken_id = store.submit_task(queue, {"n": "taken"}, priority=9, meta=meta)
    (taken,) = store.get_tasks(queue, 1, timeout_s=2)
    assert taken.id == taken_id
    assert store.cancel(queue, taken_id) is False  # a worker has it
    assert store.cancel(queue, delayed) is True
    assert store.cancel(queue, ready) is True
    assert store.cancel(queue, ready) is False  # once
    # unknown: AMQP cannot tell an id it never saw from a task still in the broker (a mark, unused)
    assert store.cancel(queue, "f" * 32) is (harness.name == "amqp")
    store.ack(taken)
    # done: AMQP cannot tell a done task that keeps no record from a waiting one (a mark, unused)
    assert store.cancel(queue, taken_id) is (harness.name == "amqp")
    time.sleep(1.5)
    assert store.get_tasks(queue, 10, timeout_s=1.0) == []  # neither comes out
    after = store.submit_task(queue, {"n": "after"})
    assert [t.id for t in store.get_tasks(queue, 10, timeout_s=2)] == [after]
