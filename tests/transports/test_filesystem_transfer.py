"""Filesystem transfer hooks beyond the contract: what a page or batch lists, names it cannot store,
dead letters with everything kept, a take's lease."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from asynctask.errors import PayloadError
from asynctask.message import encode_body
from asynctask.transports import filesystem, filesystem_transfer
from asynctask.transports.filesystem import FilesystemTransport
from asynctask.transports.transfer import TaskRecord

QUEUE = "jobs"


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory listed from now on (by the fetch and by the transfer hooks)."""
    listed: list[str] = []
    for module in (filesystem, filesystem_transfer):
        real: Callable[[str], list[str]] = module.listdir

        def counting(path: str, real: Callable[[str], list[str]] = real) -> list[str]:
            listed.append(path)
            return real(path)

        monkeypatch.setattr(module, "listdir", counting)
    return listed


def _settle() -> None:
    """Let directory mtimes fall behind the clock (a listing of a directory changed within the
    same clock tick is not reused)."""
    time.sleep(filesystem_transfer._SETTLED_NS / 1e9 + 0.01)


def test_take_lists_each_bucket_once_not_once_per_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        for _ in range(3):
            transport.submit_tasks(QUEUE, [{"n": n} for n in range(1000)])
        listed = _count_listings(monkeypatch)
        taken = []
        while batch := transport.take_tasks(QUEUE, 1000, lease_s=60):
            taken += batch
        assert len(taken) == 3000 and len({record.id for record, _ in taken}) == 3000
        buckets = Counter(path for path in listed if len(path.rsplit("/", 1)[-1]) == 12)
        assert len(listed) < 80, "a few listings a batch (priority directories, delayed/, inflight/), not one a task"
        assert buckets and max(buckets.values()) <= 3, "a bucket is listed when its names run out, not per batch"
        transport.ack_tasks([task for _, task in taken])
        assert transport.stats(QUEUE).in_flight == 0


def test_dead_pages_list_dead_only_when_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        records = [
            TaskRecord(f"d{n:04d}", encode_body({"n": n}), 3, 2, 1700000000.25, 0.0, f"boom {n}", 1700000100.0 + n)
            for n in range(250)
        ]
        assert transport.put_dead(QUEUE, records) == [True] * 250
        _settle()
        listed = _count_listings(monkeypatch)
        seen, cursor = [], ""
        while True:
            page, cursor = transport.dead_page(QUEUE, after=cursor, limit=100)
            seen += page
            if not cursor:
                break
        assert [d.id for d in seen] == [r.id for r in records], "oldest first, each once"
        assert listed.count(f"{tmp_path}/queues/{QUEUE}/dead") == 1, "listed once for three pages"
        first = seen[0]
        assert (first.reason, first.attempts, first.priority, first.enqueued_at) == ("boom 0", 2, 3, 1700000000.25)
        assert abs(first.dead_at - 1700000100.0) < 1e-6
        assert transport.dead_tasks(QUEUE, 1)[0] == first, "dead_tasks fills priority and enqueued_at too"
        transport.put_dead(QUEUE, [TaskRecord("late", encode_body({}), reason="later", dead_at=1800000000.0)])
        *_, last = transport.dead_page(QUEUE, after="", limit=10_000)[0]
        assert last.id == "late", "a changed dead/ is listed again"
        with pytest.raises(ValueError, match="after="):
            transport.dead_page(QUEUE, after="nonsense")


def test_put_skips_ids_held_in_flight_or_dead_and_refuses_unnamable_ids(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.submit_tasks(QUEUE, [{"n": 1}, {"n": 2}])
        held, dying = transport.get_tasks(QUEUE, 2, timeout_s=1)
        transport.dead(dying, "gone")
        records = [TaskRecord(task.id, encode_body(task.payload)) for task in (held, dying)]
        fresh = TaskRecord("f" * 32, encode_body({"n": 3}), priority=7)
        assert transport.put_tasks(QUEUE, [*records, fresh, fresh]) == [False, False, True, False]
        before = dataclasses.replace(transport.stats(QUEUE), oldest_ready_age_s=None)
        with pytest.raises(PayloadError, match="ids of 1 to 64"):
            transport.put_tasks(QUEUE, [TaskRecord("g" * 32, "{}"), TaskRecord("a.b", "{}")])
        with pytest.raises(PayloadError, match="priority"):
            transport.put_tasks(QUEUE, [TaskRecord("h" * 32, "{}", priority=10)])
        assert dataclasses.replace(transport.stats(QUEUE), oldest_ready_age_s=None) == before, (
            "nothing stored when one record is refused"
        )
        transport.ack(held)


def test_an_expired_take_of_a_delayed_task_comes_back_ready_with_its_count(tmp_path: Path) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        transport.put_tasks(QUEUE, [TaskRecord("e" * 32, encode_body({"k": 1}), 2, 4, 1700000000.0, delay_s=600)])
        ((record, _),) = transport.take_tasks(QUEUE, 10, lease_s=0.2)
        assert (record.attempts, record.priority, record.enqueued_at) == (4, 2, 1700000000.0)
        assert 590 < record.delay_s <= 600
        (task,) = transport.get_tasks(QUEUE, 1, timeout_s=5)
        assert (task.id, task.attempts, task.priority, task.enqueued_at) == ("e" * 32, 5, 2, 1700000000.0)
        transport.ack(task)
        assert not os.listdir(tmp_path / "queues" / QUEUE / "inflight")


def test_peek_pages_delayed_then_ready_by_priority_and_lists_a_bucket_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FilesystemTransport(f"filesys:{tmp_path}") as transport:
        late = transport.submit_tasks(QUEUE, [{"d": 1}], delay_s=60)
        low = transport.submit_tasks(QUEUE, [{"n": n} for n in range(300)], priority=1)
        high = transport.submit_tasks(QUEUE, [{"n": n} for n in range(5)], priority=8)
        _settle()
        listed = _count_listings(monkeypatch)
        seen, cursor = [], ""
        while True:
            page, cursor = transport.peek_tasks(QUEUE, after=cursor, limit=50)
            seen += page
            if not cursor:
                break
        assert [r.id for r in seen] == late + high + low
        assert len(listed) == len(set(listed)) <= 15, "delayed/, the priority directories and the buckets, once each"
        with pytest.raises(ValueError, match="after="):
            transport.peek_tasks(QUEUE, after="r1/oops")
