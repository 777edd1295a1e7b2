"""The transport contract, run on every transport (one ``harness_<name>.py`` each).

Timings use short leases and delays with wide margins, so a busy machine slows the suite down
instead of failing it.  Where a transport cannot hand a delivery to another instance
(``portable_receipts`` False: AMQP), redelivery is checked through the instance that fetched.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import contract_worker
import pytest
from harnesslib import Harness

from asynctask.errors import PayloadError, QueueNameError
from asynctask.message import QueueStats, Task
from asynctask.transports.base import Transport

SHORT_LEASE_S = 0.5
PAST_LEASE_S = 1.0


def drain(transport: Transport, queue: str, count: int, timeout_s: float = 5.0) -> list[Task]:
    """Fetch until ``count`` tasks came (or the timeout): they stay in flight."""
    tasks: list[Task] = []
    deadline = time.monotonic() + timeout_s
    while len(tasks) < count and time.monotonic() < deadline:
        tasks += transport.get_tasks(queue, count - len(tasks), timeout_s=0.5)
    return tasks


def redelivery_consumer(harness: Harness) -> Transport:
    """Who should see a redelivery: another instance, or the fetching one where receipts are local."""
    return harness.open() if harness.transport.portable_receipts else harness.transport


# -- producing and consuming ---------------------------------------------------------------------


def test_submit_then_fetch_then_ack(transport: Transport, queue: str) -> None:
    before = time.time()
    task_id = transport.submit_task(queue, {"n": 1, "text": "héllo", "nested": {"list": [1, 2.5, None]}})
    task = transport.get_task(queue, timeout_s=2)
    assert task is not None
    assert (task.id, task.queue, task.attempts, task.priority) == (task_id, queue, 1, 0)
    assert task.payload == {"n": 1, "text": "héllo", "nested": {"list": [1, 2.5, None]}}
    assert before - 5 <= task.enqueued_at <= time.time() + 5
    assert transport.stats(queue).in_flight == 1
    transport.ack(task)
    assert transport.get_task(queue) is None
    assert transport.stats(queue) == QueueStats()


def test_none_payload_is_an_empty_object(transport: Transport, queue: str) -> None:
    transport.submit_task(queue)
    task = transport.get_task(queue, timeout_s=2)
    assert task is not None and task.payload == {}
    transport.ack(task)


def test_fifo_within_a_priority(transport: Transport, queue: str) -> None:
    ids = [transport.submit_task(queue, {"n": n}) for n in range(20)]
    tasks = drain(transport, queue, 20)
    assert [t.id for t in tasks] == ids
    transport.ack_tasks(tasks)


def test_higher_priority_first(transport: Transport, queue: str) -> None:
    low = transport.submit_task(queue, {"p": 0})
    mid1 = transport.submit_task(queue, {"p": 5}, priority=5)
    high = transport.submit_task(queue, {"p": 9}, priority=9)
    mid2 = transport.submit_task(queue, {"p": 5}, priority=5)
    tasks = drain(transport, queue, 4)
    assert [t.id for t in tasks] == [high, mid1, mid2, low]
    assert [t.priority for t in tasks] == [9, 5, 5, 0]
    transport.ack_tasks(tasks)


def test_batch_submit_and_batch_fetch(transport: Transport, queue: str) -> None:
    ids = transport.submit_tasks(queue, [{"n": n} for n in range(250)])
    assert len(set(ids)) == 250
    batch = transport.get_tasks(queue, 100, timeout_s=2)
    assert 1 <= len(batch) <= 100
    rest = drain(transport, queue, 250 - len(batch))
    tasks = batch + rest
    assert [t.id for t in tasks] == ids
    assert [t.payload["n"] for t in tasks] == list(range(250))
    transport.ack_tasks(tasks)
    assert transport.stats(queue) == QueueStats()
    assert transport.submit_tasks(queue, []) == []


def test_delay(transport: Transport, queue: str) -> None:
    started = time.monotonic()
    transport.submit_task(queue, {"late": True}, delay_s=1.0)
    assert transport.get_task(queue) is None
    stats = transport.stats(queue)
    assert (stats.ready, stats.delayed) == (0, 1)
    task = transport.get_task(queue, timeout_s=5)
    assert task is not None and task.payload == {"late": True}
    assert time.monotonic() - started >= 0.9
    transport.ack(task)


def test_get_task_waits_for_the_timeout_then_returns_none(transport: Transport, queue: str) -> None:
    started = time.monotonic()
    assert transport.get_task(queue, timeout_s=0.5) is None
    assert 0.4 <= time.monotonic() - started < 5


def test_waiting_fetch_wakes_when_a_task_is_submitted(harness: Harness, queue: str) -> None:
    producer = harness.open()
    timer = threading.Timer(0.3, producer.submit_task, args=(queue, {"wake": 1}))
    started = time.monotonic()
    timer.start()
    try:
        task = harness.transport.get_task(queue, timeout_s=10)
    finally:
        timer.join()
        producer.close()
    assert task is not None and task.payload == {"wake": 1}
    assert time.monotonic() - started < 3
    harness.transport.ack(task)


# -- leases ----------------------------------------------------------------------------------------


def test_lease_expiry_gives_the_task_back_with_attempts_raised(harness: Harness, queue: str) -> None:
    transport = harness.transport
    task_id = transport.submit_task(queue, {"x": 1})
    first = transport.get_task(queue, lease_s=SHORT_LEASE_S)
    assert first is not None and first.attempts == 1
    consumer = redelivery_consumer(harness)
    assert consumer.get_task(queue) is None  # leased: nobody else gets it
    time.sleep(PAST_LEASE_S)
    second = consumer.get_task(queue, timeout_s=5)
    assert second is not None
    assert (second.id, second.attempts, second.payload) == (task_id, 2, {"x": 1})
    consumer.ack(second)
    assert transport.stats(queue) == QueueStats()


def test_ack_after_a_lost_lease_does_not_delete_the_new_delivery(harness: Harness, queue: str) -> None:
    transport = harness.transport
    transport.submit_task(queue, {"x": 1})
    first = transport.get_task(queue, lease_s=SHORT_LEASE_S)
    assert first is not None
    time.sleep(PAST_LEASE_S)
    consumer = redelivery_consumer(harness)
    second = consumer.get_task(queue, timeout_s=5, lease_s=30)
    assert second is not None and second.attempts == 2
    transport.ack(first)
    transport.nack(first)
    transport.dead(first, "stale")
    assert transport.extend(first, 30) is False
    stats = transport.stats(queue)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 1, 0)
    assert consumer.extend(second, 30) is True
    consumer.ack(second)
    assert transport.stats(queue) == QueueStats()


def test_extend_keeps_the_lease(harness: Harness, queue: str) -> None:
    transport = harness.transport
    transport.submit_task(queue, {"long": True})
    task = transport.get_task(queue, lease_s=2.0)
    assert task is not None
    time.sleep(0.2)  # the extend has 1.8 s to arrive before the first lease ends
    assert transport.extend(task, 20) is True
    time.sleep(2.8)  # a second past the first lease, 17 s before the extended one ends
    consumer = redelivery_consumer(harness)
    assert consumer.get_task(queue, timeout_s=0.5) is None
    transport.ack(task)
    assert transport.stats(queue) == QueueStats()


def test_nack_gives_back_at_once_and_counts_the_attempt(transport: Transport, queue: str) -> None:
    transport.submit_task(queue, {"x": 1})
    first = transport.get_task(queue)
    assert first is not None
    transport.nack(first)
    second = transport.get_task(queue, timeout_s=2)
    assert second is not None and (second.id, second.attempts) == (first.id, 2)
    transport.nack(second, count_attempt=False)
    third = transport.get_task(queue, timeout_s=2)
    assert third is not None and third.attempts == 2
    transport.ack(third)


def test_nack_with_delay(transport: Transport, queue: str) -> None:
    transport.submit_task(queue, {"x": 1})
    first = transport.get_task(queue)
    assert first is not None
    started = time.monotonic()
    transport.nack(first, delay_s=1.0)
    assert transport.get_task(queue) is None
    stats = transport.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 1, 0)
    again = transport.get_task(queue, timeout_s=5)
    assert again is not None and (again.id, again.attempts) == (first.id, 2)
    assert time.monotonic() - started >= 0.9
    transport.ack(again)


def test_a_task_can_be_finished_by_another_instance(harness: Harness, queue: str) -> None:
    """What the supervisor does for a child that died: portable receipts, or the server gives back."""
    transport = harness.transport
    transport.submit_task(queue, {"x": 1})
    task = transport.get_task(queue)
    assert task is not None
    other = harness.open()
    try:
        if transport.portable_receipts:
            other.nack(Task.from_dict(task.to_dict()))
            again = other.get_task(queue, timeout_s=2)
            assert again is not None and again.attempts == 2
            other.ack(Task.from_dict(again.to_dict()))
        else:
            transport.close()  # the dead process's connection closing gives the task back
            again = other.get_task(queue, timeout_s=5)
            assert again is not None and again.attempts == 2
            other.ack(again)
        assert other.stats(queue) == QueueStats()
    finally:
        other.close()


# -- dead letters, purge, stats, queues -------------------------------------------------------------


def test_dead_letter_with_reason_then_replay(transport: Transport, queue: str) -> None:
    keep_id = transport.submit_task(queue, {"n": 1})
    other_id = transport.submit_task(queue, {"n": 2})
    tasks = drain(transport, queue, 2)
    transport.nack(tasks[0])
    tasks[0] = drain(transport, queue, 1)[0]
    before = time.time()
    for task in tasks:
        transport.dead(task, f"boom {task.payload['n']}")
    stats = transport.stats(queue)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 2)
    dead = {d.payload["n"] if d.payload else None: d for d in transport.dead_tasks(queue)}
    assert set(dead) == {1, 2}
    assert dead[1].reason == "boom 1" and dead[1].attempts == 2 and dead[1].queue == queue
    assert dead[2].reason == "boom 2" and dead[2].attempts == 1
    assert before - 5 <= dead[1].dead_at <= time.time() + 5
    assert len(transport.dead_tasks(queue, limit=1)) == 1

    assert transport.replay_dead(queue, [dead[2].id]) == 1
    replayed = transport.get_task(queue, timeout_s=2)
    assert replayed is not None and replayed.payload == {"n": 2} and replayed.attempts == 1
    transport.ack(replayed)
    assert [d.payload for d in transport.dead_tasks(queue)] == [{"n": 1}]
    assert transport.replay_dead(queue) == 1
    again = transport.get_task(queue, timeout_s=2)
    assert again is not None and again.payload == {"n": 1} and again.attempts == 1
    transport.ack(again)
    assert transport.dead_tasks(queue) == []
    assert transport.stats(queue) == QueueStats()
    assert (dead[1].id, dead[2].id) == (keep_id, other_id)


def test_replay_keeps_the_priority(transport: Transport, queue: str) -> None:
    transport.submit_task(queue, {"urgent": True}, priority=7)
    task = transport.get_task(queue, timeout_s=2)
    assert task is not None
    transport.dead(task, "failed once")
    transport.submit_task(queue, {"urgent": False})
    assert transport.replay_dead(queue) == 1
    tasks = drain(transport, queue, 2)
    assert [(t.payload["urgent"], t.priority) for t in tasks] == [(True, 7), (False, 0)]
    transport.ack_tasks(tasks)


def test_purge_dead_deletes_dead_tasks_for_good(transport: Transport, queue: str) -> None:
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    for task in drain(transport, queue, 3):
        transport.dead(task, f"failed {task.payload['n']}")
    dead = {d.payload["n"] if d.payload else None: d.id for d in transport.dead_tasks(queue)}
    assert set(dead) == {0, 1, 2}
    assert transport.purge_dead(queue, [dead[1], "0" * 32]) == 1
    assert sorted(d.payload["n"] for d in transport.dead_tasks(queue) if d.payload) == [0, 2]
    assert transport.purge_dead(queue) == 2
    assert transport.dead_tasks(queue) == []
    assert transport.replay_dead(queue) == 0
    assert transport.stats(queue) == QueueStats()
    assert transport.purge_dead(queue) == 0


def test_purge_drops_ready_and_delayed_only(transport: Transport, queue: str) -> None:
    transport.submit_tasks(queue, [{"n": n} for n in range(4)])
    transport.submit_tasks(queue, [{"later": n} for n in range(2)], delay_s=60)
    held = transport.get_task(queue)
    assert held is not None
    assert transport.purge(queue) == 5
    stats = transport.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 1)
    transport.ack(held)
    assert transport.purge(queue) == 0


def test_stats_and_poll_queue(transport: Transport, queue: str) -> None:
    assert transport.stats(queue) == QueueStats()
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    transport.submit_task(queue, {"later": 1}, delay_s=60)
    held = transport.get_task(queue)
    assert held is not None
    time.sleep(0.2)
    stats = transport.stats(queue)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (2, 1, 1, 0)
    assert stats.oldest_ready_age_s is not None and 0.1 <= stats.oldest_ready_age_s < 60
    assert transport.poll_queue(queue) == 2
    transport.dead(held, "for the count")
    assert transport.stats(queue).dead == 1
    transport.purge(queue)


def test_queues_lists_queues_that_hold_tasks(transport: Transport, queue: str) -> None:
    transport.submit_task(queue, {})
    transport.submit_task(queue + "b", {}, delay_s=60)
    names = transport.queues()
    assert queue in names and queue + "b" in names
    assert names == sorted(names)
    transport.purge(queue)
    transport.purge(queue + "b")


# -- validation ---------------------------------------------------------------------------------------

BAD_QUEUE_NAMES = ["", "a", "A", "Ab", "1ab", "_ab", "ab_", "a__b", "ab\n", "a-b", "a b", "é", "x" * 101, None, 12]


@pytest.mark.parametrize("bad", BAD_QUEUE_NAMES, ids=repr)
def test_bad_queue_names_are_rejected_and_nothing_is_stored(transport: Transport, bad: object) -> None:
    before = transport.queues()
    with pytest.raises(QueueNameError) as info:
        transport.submit_task(bad, {"x": 1})  # type: ignore[arg-type]
    assert repr(bad)[:20] in str(info.value)
    assert "lowercase letter" in str(info.value)
    with pytest.raises(QueueNameError):
        transport.get_task(bad)  # type: ignore[arg-type]
    assert transport.queues() == before


def test_good_queue_names_are_accepted(transport: Transport, queue: str) -> None:
    for name in ["ab", "a1", queue + "_x_1", "q" + "x" * 99]:
        transport.submit_task(name, {})
        assert transport.purge(name) == 1


BAD_PAYLOADS = [1, "text", [1, 2], {"a": {1, 2}}, {"a": math.nan}, {1: "int key"}, {"a": object()}]


@pytest.mark.parametrize("bad", BAD_PAYLOADS, ids=repr)
def test_bad_payloads_are_rejected_and_nothing_is_stored(transport: Transport, queue: str, bad: object) -> None:
    with pytest.raises(PayloadError):
        transport.submit_task(queue, bad)  # type: ignore[arg-type]
    with pytest.raises(PayloadError):
        transport.submit_tasks(queue, [{"good": 1}, bad, {"good": 2}])  # type: ignore[list-item]
    assert transport.stats(queue) == QueueStats()
    assert queue not in transport.queues()


def test_bad_priority_and_delay_are_rejected(transport: Transport, queue: str) -> None:
    for kwargs in [{"priority": 10}, {"priority": -1}, {"priority": 1.5}, {"delay_s": -1}, {"delay_s": math.inf}]:
        with pytest.raises(PayloadError):
            transport.submit_task(queue, {}, **kwargs)  # type: ignore[arg-type]
    assert transport.stats(queue) == QueueStats()


# -- bad arguments: refused before the store is touched, the same error on every transport ------------

RULE = (
    "2 to 100 characters, a lowercase letter first, then lowercase letters, digits and single"
    " underscores, ending with a letter or digit"
)
NOT_A_LEASE = [0, -1, -0.5, math.nan, math.inf, True, "5"]
NOT_A_DELAY = [-1, -0.001, math.nan, math.inf, True, "1"]
NOT_A_LIMIT = [-1, True, False, 1.5, "5", None]
NOT_IDS = ["abc", b"ab", {"x"}, frozenset(), 5, iter(["x"])]
NOT_A_KEY = ["", None, "k" * 201, 5, b"key"]
NOT_A_TASK = ["receipt", None, {"id": "x", "receipt": "y"}, 3]

Call = Callable[[Transport, str, Task], object]
#: (call, error class, message): the message may depend on the in-flight task the call gets.
BadCall = tuple[Call, type[Exception], Callable[[Task], str]]


BAD_CALLS: list[BadCall] = []


def add(call: Call, error: type[Exception], message: str | Callable[[Task], str]) -> None:
    BAD_CALLS.append((call, error, message if callable(message) else (lambda _task, m=message: m)))


def _add_bad_consuming_calls() -> None:
    for v in NOT_A_LEASE:
        msg = f"lease_s={v!r}: a number of seconds > 0 is allowed"
        add(lambda t, q, k, v=v: t.extend(k, v), ValueError, msg)
        add(lambda t, q, k, v=v: t.get_task(q, lease_s=v), ValueError, msg)
        add(lambda t, q, k, v=v: t.get_tasks(q, 5, lease_s=v), ValueError, msg)
    for v in NOT_A_DELAY:
        msg = f"invalid delay_s {v!r}: a finite number of seconds >= 0 is allowed"
        add(lambda t, q, k, v=v: t.nack(k, delay_s=v), PayloadError, msg)
        add(lambda t, q, k, v=v: t.submit_task(q, {}, delay_s=v), PayloadError, msg)
        add(lambda t, q, k, v=v: t.submit_tasks(q, [{}], delay_s=v), PayloadError, msg)
        timeout_msg = f"invalid timeout_s {v!r}: a finite number of seconds >= 0 is allowed"
        add(lambda t, q, k, v=v: t.get_task(q, timeout_s=v), PayloadError, timeout_msg)
    for v in [1, 0, None, "no"]:
        msg = f"count_attempt={v!r}: True or False is allowed"
        add(lambda t, q, k, v=v: t.nack(k, count_attempt=v), ValueError, msg)
    for v in [0, -1, 1001, True, 1.5, None]:
        msg = f"max_count={v!r}: an integer from 1 to 1000 is allowed"
        add(lambda t, q, k, v=v: t.get_tasks(q, v), ValueError, msg)


def _add_bad_task_calls() -> None:
    for v in NOT_A_TASK:
        msg = f"task={v!r:.80}: a Task (as a fetch returned it) is allowed, not {type(v).__name__}"
        add(lambda t, q, k, v=v: t.ack(v), TypeError, msg)
        add(lambda t, q, k, v=v: t.ack_tasks([k, v]), TypeError, msg)  # the good one is not acked either
        add(lambda t, q, k, v=v: t.nack(v), TypeError, msg)
        add(lambda t, q, k, v=v: t.extend(v, 30), TypeError, msg)
        add(lambda t, q, k, v=v: t.dead(v, "reason"), TypeError, msg)
    allowed = "a list or tuple of Task is allowed"
    add(lambda t, q, k: t.ack_tasks(k), TypeError, lambda k: f"tasks={k!r:.80}: {allowed}, not Task")
    add(lambda t, q, k: t.ack_tasks({k.id: k}), TypeError, lambda k: f"tasks={ {k.id: k}!r:.80}: {allowed}, not dict")
    for v in [None, 3, b"reason"]:
        add(lambda t, q, k, v=v: t.dead(k, v), ValueError, f"reason={v!r}: a string is allowed")


def _add_bad_admin_calls() -> None:
    for v in ["A", "a__b", None]:
        msg = f"invalid queue name {v!r}: {RULE}"
        for method in ["stats", "poll_queue", "purge", "dead_tasks", "replay_dead", "purge_dead"]:
            add(lambda t, q, k, v=v, method=method: getattr(t, method)(v), QueueNameError, msg)
        add(lambda t, q, k, v=v: t.dead_tasks(v, limit=-1), QueueNameError, msg)  # the queue is checked first
        add(lambda t, q, k, v=v: t.replay_dead(v, "abc"), QueueNameError, msg)
    for v in NOT_A_LIMIT:
        add(lambda t, q, k, v=v: t.dead_tasks(q, v), ValueError, f"limit={v!r}: an integer >= 0 is allowed")
    for v in NOT_IDS:
        msg = f"ids={v!r:.80}: None or a sequence (list, tuple) of task id strings is allowed"
        add(lambda t, q, k, v=v: t.replay_dead(q, v), ValueError, msg)
        add(lambda t, q, k, v=v: t.purge_dead(q, v), ValueError, msg)
    for v in [[1], ["0" * 32, None], (b"x",)]:
        bad = next(i for i in v if not isinstance(i, str))
        msg = f"ids: task ids are strings, not {type(bad).__name__}: {bad!r}"
        add(lambda t, q, k, v=v: t.replay_dead(q, v), ValueError, msg)
        add(lambda t, q, k, v=v: t.purge_dead(q, v), ValueError, msg)


def _add_bad_claim_calls() -> None:
    for v in NOT_A_KEY:
        msg = f"claim key {v!r:.80}: a non-empty string of at most 200 characters is allowed"
        add(lambda t, q, k, v=v: t.claim_once(v, 60), ValueError, msg)
    for v in NOT_A_LEASE:
        msg = f"ttl_s={v!r}: a number of seconds > 0 is allowed"
        add(lambda t, q, k, v=v: t.claim_once(f"{q}:bad-ttl", v), ValueError, msg)


for _adding in (_add_bad_consuming_calls, _add_bad_task_calls, _add_bad_admin_calls, _add_bad_claim_calls):
    _adding()


def _snapshot(transport: Transport, queue: str) -> tuple[object, ...]:
    stats = transport.stats(queue)
    dead = sorted(d.id for d in transport.dead_tasks(queue))
    return stats.ready, stats.delayed, stats.in_flight, stats.dead, dead, queue in transport.queues()


def test_bad_arguments_raise_the_same_error_everywhere_and_change_nothing(transport: Transport, queue: str) -> None:
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    transport.submit_task(queue, {"later": 1}, delay_s=600)
    held, doomed = drain(transport, queue, 2)
    transport.dead(doomed, "for the count")
    before = _snapshot(transport, queue)
    assert before[:4] == (1, 1, 1, 1)
    wrong = []
    for n, (call, error, message) in enumerate(BAD_CALLS):
        try:
            call(transport, queue, held)
        except Exception as exc:
            if type(exc) is not error:
                wrong.append(f"call {n}: {type(exc).__name__}, not {error.__name__}: {exc}")
            elif str(exc) != message(held):
                wrong.append(f"call {n}: {str(exc)!r}, not {message(held)!r}")
        else:
            wrong.append(f"call {n} ({message(held)}): nothing raised")
    assert wrong == []
    assert _snapshot(transport, queue) == before
    assert transport.claim_once(f"{queue}:bad-ttl", 60) is True  # no bad call claimed it
    assert transport.extend(held, 30) is True  # no bad call finished or gave it back
    transport.ack(held)
    transport.purge(queue)
    assert transport.purge_dead(queue) == 1


def test_limits_and_ids_at_their_edges(transport: Transport, queue: str) -> None:
    transport.submit_tasks(queue, [{"n": n} for n in range(3)])
    for task in drain(transport, queue, 3):
        transport.dead(task, "for the edges")
    ids = [d.id for d in transport.dead_tasks(queue)]
    assert len(ids) == 3
    assert transport.dead_tasks(queue, 0) == []
    assert [d.id for d in transport.dead_tasks(queue, 2)] == ids[:2]
    assert [d.id for d in transport.dead_tasks(queue, 10**12)] == ids
    assert transport.replay_dead(queue, []) == 0 and transport.purge_dead(queue, ()) == 0
    assert transport.replay_dead(queue, [ids[0], ids[0]]) == 1  # named twice, replayed once
    assert transport.purge_dead(queue, (ids[1], "0" * 32, ids[1], ids[1])) == 1
    assert [d.id for d in transport.dead_tasks(queue)] == [ids[2]]
    replayed = drain(transport, queue, 1)
    assert [t.id for t in replayed] == [ids[0]] and replayed[0].attempts == 1
    transport.ack_tasks(replayed)
    transport.ack_tasks([])
    assert transport.purge_dead(queue, [ids[2], ids[2]]) == 1
    assert transport.stats(queue) == QueueStats()


def test_undecodable_body_goes_to_dead_letters_and_fetching_goes_on(harness: Harness, queue: str) -> None:
    transport = harness.transport
    harness.inject_garbage(queue)
    good_id = transport.submit_task(queue, {"good": True})
    task = transport.get_task(queue, timeout_s=3)
    assert task is not None and task.id == good_id
    transport.ack(task)
    dead = transport.dead_tasks(queue)
    assert len(dead) == 1
    assert dead[0].reason.startswith("undecodable task body")
    assert dead[0].payload is None
    stats = transport.stats(queue)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)


# -- competition ------------------------------------------------------------------------------------


def run_competitors(harness: Harness, mode: str, args: list[str], count: int) -> list[str]:
    """Run ``count`` competitors (processes, or threads for in-process stores); return what they emitted."""
    start_at = time.time() + (3.0 if harness.cross_process else 0.2)
    if harness.cross_process:
        script = str(Path(contract_worker.__file__))
        procs = [
            subprocess.Popen(
                [sys.executable, script, mode, harness.url, *args, str(start_at)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * count
        return [line for out in outputs for line in out.splitlines() if line]
    emitted: list[str] = []
    lock = threading.Lock()

    def emit(text: str) -> None:
        with lock:
            emitted.append(text)

    if mode == "consume":
        targets = [lambda: contract_worker.consume(harness.url, args[0], start_at, emit) for _ in range(count)]
    else:
        targets = [
            lambda: contract_worker.claim(harness.url, args[0], int(args[1]), start_at, emit) for _ in range(count)
        ]
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return emitted


def test_claim_once_is_true_once_until_the_ttl(transport: Transport, queue: str) -> None:
    key = f"{queue}:tick"
    assert transport.claim_once(key, 0.5) is True
    assert transport.claim_once(key, 0.5) is False
    assert transport.claim_once(key + ":other", 0.5) is True
    time.sleep(1.0)
    assert transport.claim_once(key, 60) is True
    assert transport.claim_once(key, 60) is False


def test_claim_once_with_competitors(harness: Harness, queue: str) -> None:
    won = run_competitors(harness, "claim", [queue, "30"], 4)
    assert Counter(won) == Counter({f"{queue}:{n}": 1 for n in range(30)})


def test_four_consumers_drain_4000_tasks_each_acked_once(harness: Harness, queue: str) -> None:
    transport = harness.transport
    ids: list[str] = []
    for start in range(0, 4000, 500):
        ids += transport.submit_tasks(queue, [{"n": n} for n in range(start, start + 500)])
    acked = run_competitors(harness, "consume", [queue], 4)
    counts = Counter(acked)
    assert len(counts) == 4000 and set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert transport.stats(queue) == QueueStats()
