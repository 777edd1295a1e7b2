"""``asynctask export`` / ``import`` / ``migrate`` as a user runs them, on the real stores.

The migrate tests kill the command with SIGKILL while it moves, run it again once the batch it held
is given back, and count: every task in the target exactly once with its payload, meta, priority
and delay, nothing left in the source.  10,000 tasks by default; ``ASYNCTASK_MIGRATE_KILL_TASKS=100000``
runs them on the issue's 100,000 (about 2 minutes).  The rate: ``python -m bench migrate``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workers_support import transport_world, wait_for

from asynctask.message import Task
from asynctask.transports.base import Transport
from asynctask.transports.transfer import TaskRecord

ADMIN = str(Path(sys.executable).parent / "asynctask")
QUEUE = "moving"
#: task id -> every enqueued_at (dead_at for dead letters) read of it
ENQUEUED_AT: dict[str, list[float]] = collections.defaultdict(list)


def _admin(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ADMIN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _fill(transport: Transport, count: int, dead: int = 3) -> None:
    """``count`` tasks: priorities 0..9, every 10th delayed 600 s, every 7th with meta; ``dead``
    dead letters; and the first task delivered once and given back (attempts 1)."""
    for start in range(0, count, 1000):
        for priority in range(10):
            chunk = [{"n": i} for i in range(start, min(start + 1000, count)) if i % 10 == priority and i % 7]
            if chunk:
                transport.submit_tasks(QUEUE, chunk, priority=priority, delay_s=600 if priority == 9 else 0)
        with_meta = [{"n": i} for i in range(start, min(start + 1000, count)) if i % 7 == 0]
        transport.submit_tasks(QUEUE, with_meta, priority=4, meta={"fn": "app.f", "n": start})
    (first,) = transport.get_tasks(QUEUE, 1, timeout_s=5)
    transport.nack(first)
    transport.submit_tasks(QUEUE, [{"dead": i} for i in range(dead)], priority=9)
    letters: list[Task] = []
    while len(letters) < dead:  # the highest priority ready: the three
        letters += transport.get_tasks(QUEUE, dead - len(letters), timeout_s=5)
    for task in letters:
        assert "dead" in task.payload
        transport.dead(task, f"ValueError: dead {task.payload['dead']}")


def _waiting(transport: Transport) -> dict[str, tuple[object, ...]]:
    out = {}
    cursor = ""
    while True:
        page, cursor = transport.peek_tasks(QUEUE, after=cursor, limit=5000)
        for r in page:
            out[r.id] = (r.payload, r.meta, r.priority, r.attempts, r.delay_s > 300)
            ENQUEUED_AT[r.id].append(r.enqueued_at)
        if not cursor:
            return out


def _dead(transport: Transport) -> dict[str, tuple[object, ...]]:
    found = transport.dead_tasks(QUEUE, 1000)
    for d in found:
        ENQUEUED_AT[d.id].append(d.dead_at)
    return {d.id: (d.payload, d.reason, d.attempts) for d in found}


def _times_kept() -> None:
    """Every id read more than once (source, then target) had the same enqueued_at / dead_at
    (to the millisecond: a store may keep no finer)."""
    spread = max((max(times) - min(times) for times in ENQUEUED_AT.values()), default=0.0)
    assert spread < 0.002, spread
    ENQUEUED_AT.clear()


@pytest.mark.parametrize("name", ["filesystem", "redis", "pgsql"])
def test_export_then_import_round_trips_a_queue_exactly(name: str, tmp_path: Path) -> None:
    with transport_world(name, tmp_path / "a") as source, transport_world(name, tmp_path / "b") as target:
        _fill(source.transport, 200)
        for dead in ("", "--dead"):
            path = tmp_path / f"export{dead}.jsonl"
            done = _admin("export", QUEUE, "-o", str(path), *([dead] if dead else []), "--transport", source.url)
            assert done.returncode == 0, done.stderr
            done = _admin("import", QUEUE, str(path), "--json", *([dead] if dead else []), "--transport", target.url)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert report["duplicates_skipped"] == 0 and report["stored"] == len(path.read_text().splitlines())
        assert _waiting(target.transport) == _waiting(source.transport)
        assert _dead(target.transport) == _dead(source.transport)
        _times_kept()
        lines = [TaskRecord.from_json(json.loads(x)) for x in (tmp_path / "export.jsonl").read_text().splitlines()]
        assert {r.id for r in lines} == set(_waiting(source.transport))
        again = _admin("import", QUEUE, str(tmp_path / "export.jsonl"), "--transport", target.url)
        assert again.returncode == 0 and "0 into moving; 200 duplicates skipped" in again.stdout, again.stdout


@pytest.mark.parametrize(("source_name", "target_name"), [("filesystem", "redis"), ("redis", "pgsql")])
def test_migrate_killed_at_a_random_moment_and_run_again_loses_nothing(
    source_name: str, target_name: str, tmp_path: Path
) -> None:
    count = int(os.environ.get("ASYNCTASK_MIGRATE_KILL_TASKS", "10000"))  # 100000: as the issue asks, 2 min
    with transport_world(source_name, tmp_path / "s") as source, transport_world(target_name, tmp_path / "t") as target:
        _fill(source.transport, count)
        waiting, dead = _waiting(source.transport), _dead(source.transport)
        assert len(waiting) == count and len(dead) == 3
        command = [ADMIN, "migrate", "--from", source.url, "--to", target.url, "--dead", "--lease-s", "2"]
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        moved_before_kill = random.randint(1000, count // 2)
        wait_for(lambda: target.transport.stats(QUEUE).ready >= moved_before_kill, timeout=60, what="tasks moving")
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
        time.sleep(2.5)  # the batch the killed run held comes back in the source
        done = _admin(*command[1:], "--json")
        assert done.returncode == 0, done.stderr
        (summary,) = json.loads(done.stdout)["queues"]
        assert summary["in_flight_left"] == 0
        assert _waiting(target.transport) == waiting
        assert _dead(target.transport) == dead
        _times_kept()
        stats = source.transport.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
        print(
            f"killed after {moved_before_kill}+; the re-run moved {summary['moved']}, {summary['skipped']} were there"
        )


def test_migrate_errors_are_one_line(tmp_path: Path) -> None:
    same = f"filesys:{tmp_path / 'x'}"
    done = _admin("migrate", "--from", same, "--to", same)
    assert done.returncode == 2 and "same store" in done.stderr and len(done.stderr.splitlines()) == 1
    done = _admin("migrate", "--from", same, "--to", "redis://127.0.0.1:1/0", "--queue", "Bad-Name")
    assert done.returncode == 2 and "Bad-Name" in done.stderr, done.stderr
