"""Redis transfer hooks beyond the contract (``test_contract_transfer.py``): batches past one script
call, peek and dead-letter cursors whose task left meanwhile, ties in death times, ids the queue
holds in another state, ids Redis cannot store, and a dead-letter page among 100,000.

Database 9 of the shared server, a key prefix of its own per test (``harness_redis``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness_redis
import pytest
from redis.crc import key_slot

from asynctask.errors import PayloadError
from asynctask.message import encode_body, new_task_ids
from asynctask.transports.redis import RedisTransport
from asynctask.transports.transfer import TaskRecord

Q = "moves"


@pytest.fixture
def redis_transport(tmp_path: Path) -> Iterator[RedisTransport]:
    with harness_redis.harness(tmp_path) as made:
        assert isinstance(made.transport, RedisTransport)
        yield made.transport


def _records(count: int, **fields: Any) -> list[TaskRecord]:
    return [TaskRecord(i, encode_body({"i": n}), **fields) for n, i in enumerate(new_task_ids(count))]


def test_batches_past_one_script_call_move_once_and_put_again_skips_all(redis_transport: RedisTransport) -> None:
    t = redis_transport
    now = time.time()
    ready = _records(1500, priority=3, attempts=1, enqueued_at=now - 100)
    delayed = _records(700, delay_s=600, enqueued_at=now - 50)
    assert t.put_tasks(Q, ready + delayed) == [True] * 2200
    assert t.put_tasks(Q, ready[:3] + ready[:1]) == [False] * 4
    stats = t.stats(Q)
    assert (stats.ready, stats.delayed) == (1500, 700)
    assert stats.oldest_ready_age_s is not None and 99 < stats.oldest_ready_age_s < 110
    taken = t.take_tasks(Q, 2500, lease_s=60)
    assert len({r.id for r, _ in taken}) == 2200
    assert [r.delay_s == 0 for r, _ in taken] == [True] * 1500 + [False] * 700, "ready first, then delayed"
    assert all(590 < r.delay_s <= 600 for r, _ in taken[1500:])
    assert {(r.priority, r.attempts) for r, _ in taken[:1500]} == {(3, 1)}
    assert [r.payload for r, _ in taken[:1500]] == [{"i": n} for n in range(1500)], "FIFO kept"
    assert t.put_tasks(Q, [r for r, _ in taken[:5]]) == [False] * 5, "a taken id is held"
    assert t.put_tasks("other", [r for r, _ in taken]) == [True] * 2200
    t.ack_tasks([task for _, task in taken])
    stats = t.stats(Q)
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)
    assert (t.stats("other").ready, t.stats("other").delayed) == (1500, 700)


def test_put_skips_dead_ids_and_put_dead_skips_waiting_ones(redis_transport: RedisTransport) -> None:
    t = redis_transport
    (waiting,) = _records(1)
    (dead,) = _records(1, reason="boom", dead_at=time.time() - 5, priority=7, attempts=3, enqueued_at=time.time() - 9)
    assert t.put_tasks(Q, [waiting]) == [True]
    assert t.put_dead(Q, [dead, waiting]) == [True, False]
    assert t.put_tasks(Q, [dead]) == [False]
    (listed,) = t.dead_tasks(Q)
    (paged,), cursor = t.dead_page(Q)
    assert listed == paged and cursor == ""
    assert (paged.id, paged.reason, paged.attempts, paged.priority) == (dead.id, "boom", 3, 7)
    assert abs(paged.enqueued_at - dead.enqueued_at) < 0.001 and abs(paged.dead_at - (dead.dead_at or 0)) < 0.001
    assert t.replay_dead(Q) == 1
    got = t.get_tasks(Q, 5, timeout_s=1)
    assert sorted(task.id for task in got) == sorted([waiting.id, dead.id])
    assert next(task.priority for task in got if task.id == dead.id) == 7
    t.ack_tasks(got)


def test_peek_pages_every_waiting_task_once_while_its_cursor_task_moves_or_leaves(
    redis_transport: RedisTransport,
) -> None:
    t = redis_transport
    ids = {p: t.submit_tasks(Q, [{"p": p, "n": n} for n in range(4)], priority=p) for p in (0, 5, 9)}
    later = [t.submit_task(Q, {"late": n}, delay_s=300 + n) for n in range(3)]

    def peek(after: str, limit: int) -> tuple[list[str], str]:
        page, cursor = t.peek_tasks(Q, after=after, limit=limit)
        return [r.id for r in page], cursor

    page, cursor = peek("", 3)
    assert page == ids[9][:3]
    assert [r.id for r, _ in t.take_tasks(Q, 1, lease_s=60)] == ids[9][:1]  # the cursor's task moves up
    page, cursor = peek(cursor, 3)
    assert page == ids[9][3:] + ids[5][:2]
    assert len(t.take_tasks(Q, 5, lease_s=60)) == 5  # up to the cursor's task: it left
    page, cursor = peek(cursor, 3)
    assert page == ids[5][2:] + ids[0][:1]
    page, cursor = peek(cursor, 3)
    assert page == ids[0][1:]
    page, cursor = peek(cursor, 2)
    assert page == later[:2] and cursor.startswith("d:")
    assert t.cancel(Q, later[1])  # the cursor's delayed task leaves
    page, cursor = peek(cursor, 2)
    assert (page, cursor) == (later[2:], "")
    with pytest.raises(ValueError, match="cursor"):
        t.peek_tasks(Q, after="r9:1:nonsense")


def test_dead_pages_keep_order_through_ties_and_a_purged_cursor(redis_transport: RedisTransport) -> None:
    t = redis_transport
    at = time.time() - 60
    records = [r for n in range(4) for r in _records(5, reason=f"r{n}", dead_at=at + n)]  # ties of 5
    assert t.put_dead(Q, records) == [True] * 20
    order = sorted(records, key=lambda r: (r.dead_at, r.id))
    page, cursor = t.dead_page(Q, limit=7)
    assert [d.id for d in page] == [r.id for r in order[:7]]
    assert t.purge_dead(Q, [order[6].id, order[5].id]) == 2  # the cursor's dead letter and one before
    seen = [d.id for d in page]
    while cursor:
        page, cursor = t.dead_page(Q, after=cursor, limit=7)
        seen += [d.id for d in page]
    assert seen == [r.id for r in order]
    with pytest.raises(ValueError, match="cursor"):
        t.dead_page(Q, after="12:not an id")


def test_ids_redis_cannot_store_are_refused_before_anything_is_stored(redis_transport: RedisTransport) -> None:
    t = redis_transport
    good = _records(2)
    with pytest.raises(PayloadError, match=r"'a:b'.*letters, digits"):
        t.put_tasks(Q, [*good, TaskRecord("a:b", encode_body({}))])
    with pytest.raises(PayloadError, match="priority"):
        t.put_dead(Q, [TaskRecord("x" * 32, encode_body({}), priority=10)])
    assert t.stats(Q).ready == 0 and t.dead_tasks(Q) == []


def test_a_dead_page_among_100000_is_fast_and_every_key_stays_in_the_queue_slot(
    redis_transport: RedisTransport,
) -> None:
    t = redis_transport
    at = time.time() - 1000
    for start in range(0, 100_000, 10_000):
        batch = [
            TaskRecord(i, '{"n":1}', reason="x", dead_at=at + (start + n) / 1000)
            for n, i in enumerate(new_task_ids(10_000))
        ]
        assert t.put_dead(Q, batch) == [True] * 10_000
    cursor = ""
    for _ in range(500):  # into the middle
        page, cursor = t.dead_page(Q, after=cursor, limit=100)
    timings = []
    for _ in range(20):
        began = time.perf_counter()
        page, cursor = t.dead_page(Q, after=cursor, limit=100)
        timings.append(time.perf_counter() - began)
        assert len(page) == 100
    assert sorted(timings)[10] < 0.02, timings
    keys = [k.decode() for k in t.client.scan_iter(match=f"{{{t.key_prefix}:{Q}}}:*", count=10_000)]
    assert len({key_slot(k.encode()) for k in keys}) == 1 and len(keys) > 100_000
