"""The transfer hooks on RabbitMQ beyond the contract suite: batches past the prefetch, a delayed
take whose lease runs out, dead-letter pages and fields, cancelled tasks, quorum queues."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_amqp import cleanup, make_url
from support import AMQP_HOST, AMQP_PORT, require_service

from asynctask.message import encode_body
from asynctask.transports import get_transport
from asynctask.transports.amqp import AmqpTransport
from asynctask.transports.transfer import TaskRecord


@pytest.fixture
def url() -> Iterator[str]:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    made = make_url()
    yield made
    cleanup(made)


@pytest.fixture
def transport(url: str) -> Iterator[AmqpTransport]:
    made = AmqpTransport(url)
    yield made
    made.close()


def test_a_take_fills_batches_larger_than_the_prefetch(transport: AmqpTransport) -> None:
    transport.submit_tasks("big", [{"n": i} for i in range(1500)])
    first = transport.take_tasks("big", 1000, lease_s=30)
    second = transport.take_tasks("big", 1000, lease_s=30)
    assert (len(first), len(second)) == (1000, 500)
    assert sorted(r.payload["n"] for r, _ in first + second) == list(range(1500))  # type: ignore[index]
    transport.ack_tasks([task for _, task in first + second])
    assert transport.take_tasks("big", 1000, lease_s=30) == []
    stats = transport.stats("big")
    assert (stats.ready, stats.in_flight) == (0, 0)


def test_a_delayed_take_whose_lease_runs_out_waits_the_rest_of_its_delay(transport: AmqpTransport) -> None:
    put_at = time.monotonic()
    record = TaskRecord("e" * 32, encode_body({"k": 1}), priority=3, attempts=1, enqueued_at=time.time(), delay_s=1.5)
    assert transport.put_tasks("later", [record]) == [True]
    ((taken, _),) = transport.take_tasks("later", 10, lease_s=0.1)
    assert (taken.id, taken.attempts, taken.priority) == (record.id, 1, 3)
    assert 1.0 < taken.delay_s <= 1.5
    assert transport.get_tasks("later", 1, timeout_s=0.5) == [], "back, but still delayed"
    (task,) = transport.get_tasks("later", 1, timeout_s=5)
    assert time.monotonic() - put_at >= 1.4
    assert (task.id, task.attempts, task.priority) == (record.id, 2, 3), "the take counted no attempt"
    transport.ack(task)


def test_dead_letters_keep_priority_and_enqueue_time_and_page_without_being_taken(transport: AmqpTransport) -> None:
    before = time.time()
    transport.submit_task("dq", {"n": 0}, priority=7)
    (task,) = transport.get_tasks("dq", 1, timeout_s=2)
    transport.dead(task, "boom")
    (dead,) = transport.dead_tasks("dq")
    assert dead.priority == 7 and before - 1 <= dead.enqueued_at <= dead.dead_at
    records = [
        TaskRecord(f"{i:032x}", encode_body({"n": i}), i % 10, 2, 1000.0 + i, reason=f"r{i}", dead_at=2000.0 + i)
        for i in range(250)
    ]
    assert transport.put_dead("copied", records) == [True] * 250
    pages, cursor = [], ""
    for _ in range(5):
        page, cursor = transport.dead_page("copied", after=cursor, limit=100)
        pages.append(page)
        if not cursor:
            break
    assert [len(page) for page in pages] == [100, 100, 50]
    seen = [d for page in pages for d in page]
    assert [d.id for d in seen] == [r.id for r in records], "oldest first, none twice"
    assert [(d.priority, d.enqueued_at, d.dead_at, d.reason, d.attempts) for d in seen[3:5]] == [
        (3, 1003.0, 2003.0, "r3", 2),
        (4, 1004.0, 2004.0, "r4", 2),
    ]
    assert transport.stats("copied").dead == 250, "paging takes nothing"
    assert transport.dead_page("copied", after="250") == ([], "")
    assert transport.replay_dead("copied", [records[9].id]) == 1
    (again,) = transport.get_tasks("copied", 1, timeout_s=2)
    assert (again.payload, again.priority) == ({"n": 9}, 9)
    transport.ack(again)


def test_a_take_drops_tasks_marked_cancelled(transport: AmqpTransport, tmp_path: Path) -> None:
    transport.state_store = get_transport(f"filesys:{tmp_path / 'state'}")
    try:
        kept, cancelled = transport.submit_tasks("cq", [{"n": 1}, {"n": 2}])
        assert transport.cancel("cq", cancelled)
        taken = transport.take_tasks("cq", 10, lease_s=30)
        assert [record.id for record, _ in taken] == [kept]
        transport.ack_tasks([task for _, task in taken])
        assert transport.stats("cq").ready == 0, "the cancelled one was acked"
    finally:
        transport.state_store.close()  # type: ignore[attr-defined]


def test_take_and_put_on_quorum_queues(url: str) -> None:
    with contextlib.closing(AmqpTransport(url + "&queue_type=quorum")) as transport:
        transport.submit_task("qq", {"n": 1}, priority=4)
        transport.submit_task("qq", {"n": 2}, delay_s=60)
        taken = transport.take_tasks("qq", 10, lease_s=30)
        assert sorted((r.payload["n"], r.priority, r.delay_s > 50) for r, _ in taken) == [  # type: ignore[index]
            (1, 4, False),
            (2, 0, True),
        ]
        assert transport.put_tasks("q2", [record for record, _ in taken]) == [True, True]
        transport.ack_tasks([task for _, task in taken])
        stats, moved = transport.stats("qq"), transport.stats("q2")
        assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)
        assert (moved.ready, moved.delayed) == (1, 1)
