"""The transfer part of the contract (:mod:`asynctask.transports.transfer`), on every transport.

``peek_tasks`` is not offered by AMQP (a queue cannot be read without taking from it): its tests
check that it says so, and every other test runs there as well.
"""

from __future__ import annotations

import time

import pytest
from harnesslib import Harness

from asynctask.message import encode_body
from asynctask.transports.base import Transport
from asynctask.transports.transfer import TaskRecord, UnsupportedOperationError


def _fill(transport: Transport, queue: str) -> dict[str, dict[str, object]]:
    """Three ready tasks (priorities 0, 5, 9; one with meta) and one delayed 300 s: id -> expected."""
    ids = {
        transport.submit_task(queue, {"n": 0}): {"payload": {"n": 0}, "priority": 0, "meta": {}, "delayed": False},
        transport.submit_task(queue, {"n": 5}, priority=5, meta={"fn": "m.f"}): {
            "payload": {"n": 5},
            "priority": 5,
            "meta": {"fn": "m.f"},
            "delayed": False,
        },
        transport.submit_task(queue, {"n": 9}, priority=9): {
            "payload": {"n": 9},
            "priority": 9,
            "meta": {},
            "delayed": False,
        },
        transport.submit_task(queue, {"n": 1}, delay_s=300, priority=2): {
            "payload": {"n": 1},
            "priority": 2,
            "meta": {},
            "delayed": True,
        },
    }
    return ids


def _check(records: list[TaskRecord], expected: dict[str, dict[str, object]], before: float) -> None:
    assert sorted(r.id for r in records) == sorted(expected)
    for record in records:
        want = expected[record.id]
        assert (record.payload, record.meta, record.priority) == (want["payload"], want["meta"], want["priority"])
        assert record.attempts == 0
        assert before - 5 <= record.enqueued_at <= time.time() + 5
        if want["delayed"]:
            assert 280 < record.delay_s <= 300
        else:
            assert record.delay_s == 0


def test_take_then_put_moves_ready_and_delayed_tasks_with_everything_kept(harness: Harness, queue: str) -> None:
    source = harness.transport
    target = harness.open()
    other = queue + "_to"
    before = time.time()
    expected = _fill(source, queue)
    taken = source.take_tasks(queue, 10, lease_s=30)
    _check([record for record, _ in taken], expected, before)
    assert source.take_tasks(queue, 10, lease_s=30) == [], "a taken task is not taken twice"
    assert target.put_tasks(other, [record for record, _ in taken]) == [True] * 4
    source.ack_tasks([task for _, task in taken])
    stats = source.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)
    moved = target.stats(other)
    assert (moved.ready, moved.delayed) == (3, 1)
    got = target.get_tasks(other, 10, timeout_s=2)
    assert [t.priority for t in got] == [9, 5, 0], "priorities kept: highest first"
    assert [t.payload for t in got] == [{"n": 9}, {"n": 5}, {"n": 0}]
    assert got[1].meta == {"fn": "m.f"}
    assert all(t.attempts == 1 for t in got), "a take is not an attempt"
    target.ack_tasks(got)


def test_put_keeps_attempts_and_skips_ids_it_holds(harness: Harness, queue: str) -> None:
    transport = harness.transport
    record = TaskRecord("a" * 32, encode_body({"k": 1}), priority=4, attempts=2, enqueued_at=time.time() - 60)
    assert transport.put_tasks(queue, [record]) == [True]
    if harness.name != "amqp":  # AMQP cannot tell (documented): it stores every record
        assert transport.put_tasks(queue, [record]) == [False]
    (task,) = transport.get_tasks(queue, 10, timeout_s=2)
    assert (task.id, task.payload, task.priority, task.attempts) == ("a" * 32, {"k": 1}, 4, 3)
    transport.ack(task)


def test_a_put_delayed_record_waits_its_delay(harness: Harness, queue: str) -> None:
    transport = harness.transport
    transport.put_tasks(queue, [TaskRecord("b" * 32, encode_body({"k": 2}), delay_s=0.5)])
    assert transport.get_tasks(queue, 1, timeout_s=0) == []
    (task,) = transport.get_tasks(queue, 1, timeout_s=5)
    assert task.payload == {"k": 2}
    transport.ack(task)


def test_an_expired_take_puts_the_task_back(harness: Harness, queue: str) -> None:
    transport = harness.transport
    task_id = transport.submit_task(queue, {"n": 1})
    ((record, _),) = transport.take_tasks(queue, 10, lease_s=0.3)
    assert record.id == task_id
    (task,) = transport.get_tasks(queue, 1, timeout_s=5)
    assert task.id == task_id
    transport.ack(task)


def test_take_leaves_tasks_a_worker_holds(harness: Harness, queue: str) -> None:
    transport = harness.transport
    transport.submit_tasks(queue, [{"n": 1}, {"n": 2}])
    (held,) = transport.get_tasks(queue, 1, timeout_s=2)
    taken = transport.take_tasks(queue, 10, lease_s=30)
    assert [record.id for record, _ in taken] != [held.id] and len(taken) == 1
    transport.ack_tasks([held, taken[0][1]])


def test_peek_pages_through_waiting_tasks_without_changing_them(harness: Harness, queue: str) -> None:
    transport = harness.transport
    if harness.name == "amqp":
        with pytest.raises(UnsupportedOperationError, match="migrate"):
            transport.peek_tasks(queue)
        return
    before = time.time()
    expected = _fill(transport, queue)
    (held,) = transport.get_tasks(queue, 1, timeout_s=2)
    seen: list[TaskRecord] = []
    cursor = ""
    for _ in range(10):
        page, cursor = transport.peek_tasks(queue, after=cursor, limit=1)
        assert len(page) <= 1
        seen += page
        if not cursor:
            break
    assert held.id not in [r.id for r in seen], "a held task is not waiting"
    del expected[held.id]
    _check(seen, expected, before)
    stats = transport.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight) == (2, 1, 1)
    transport.ack(held)


def test_dead_letters_page_oldest_first_and_put_dead_keeps_them(harness: Harness, queue: str) -> None:
    transport = harness.transport
    transport.submit_tasks(queue, [{"n": i} for i in range(5)])
    for _ in range(5):
        (task,) = transport.get_tasks(queue, 1, timeout_s=2)
        transport.dead(task, f"reason {task.payload['n']}")
        time.sleep(0.002)
    seen = []
    cursor = ""
    for _ in range(10):
        page, cursor = transport.dead_page(queue, after=cursor, limit=2)
        seen += page
        if not cursor:
            break
    assert sorted(d.reason for d in seen) == [f"reason {i}" for i in range(5)]
    assert [d.dead_at for d in seen] == sorted(d.dead_at for d in seen)
    other = queue + "_dead"
    records = [TaskRecord.from_dead(d) for d in seen]
    assert transport.put_dead(other, records) == [True] * 5
    if harness.name != "amqp":
        assert transport.put_dead(other, records[:1]) == [False]
    copied = {d.id: d for d in transport.dead_tasks(other, 100)}
    for dead in seen:
        assert (copied[dead.id].payload, copied[dead.id].reason) == (dead.payload, dead.reason)
        assert copied[dead.id].attempts == dead.attempts
        assert abs(copied[dead.id].dead_at - dead.dead_at) < 0.01
    assert transport.replay_dead(other) == 5
    got = transport.get_tasks(other, 10, timeout_s=2)
    assert sorted(t.payload["n"] for t in got) == list(range(5))
    transport.ack_tasks(got)


def test_record_json_round_trips_every_field() -> None:
    record = TaskRecord("c" * 32, encode_body({"x": [1]}, {"fn": "f"}), 7, 3, 1700000000.5, 12.25, "boom", 1700000100.0)
    assert TaskRecord.from_json(record.to_json()) == record
    raw = TaskRecord("d" * 32, "not json", 0, 1, 1.0, 0.0, "undecodable", 2.0)
    assert raw.to_json()["body"] == "not json"
    assert TaskRecord.from_json(raw.to_json()) == raw


def test_bad_arguments_are_refused(transport: Transport, queue: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        transport.peek_tasks(queue, limit=0)
    with pytest.raises(ValueError, match="lease_s"):
        transport.take_tasks(queue, 1, lease_s=0)
    with pytest.raises(TypeError, match="TaskRecord"):
        transport.put_tasks(queue, [{"id": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="after"):
        transport.dead_page(queue, after=None)  # type: ignore[arg-type]
