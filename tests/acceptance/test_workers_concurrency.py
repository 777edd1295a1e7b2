"""``concurrency``: one worker child runs N tasks at once (``def process`` on N threads, ``async def
process`` as N coroutines on one loop), on every transport with a store other processes reach:
asynctask-workers as a subprocess, draining, killed, stopped, and tasks overrunning ``timeout_s``.

Each test counts records: every task processed (exactly once where nothing crashed, at least once
where a child was killed), nothing dead-lettered, and what is left in the queue.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workers_support import SERVER_TRANSPORTS, Env, stop, transport_world, wait_for

from asynctask.cli.exit_codes import EXIT_OK
from asynctask.message import Task

#: what a user gets without setting them (``workers_support.Env.config`` sets the FAST ones)
DEFAULTS: dict[str, Any] = {
    "asynctask_workers_poll_interval": 500,
    "asynctask_workers_check_child_interval": 1000,
    "asynctask_shutdown_timeout": 30,
}


@pytest.fixture(params=SERVER_TRANSPORTS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with transport_world(request.param, tmp_path) as env:
        yield env


def assert_nothing_left(world: Env) -> None:
    assert world.transport.dead_tasks("jobs") == []
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def fetch_all(world: Env, count: int) -> list[Task]:
    """Lease ``count`` tasks of the queue (and no more: waits briefly for an extra one)."""
    tasks: list[Task] = []
    deadline = time.monotonic() + 10
    while len(tasks) < count and time.monotonic() < deadline:
        tasks += world.transport.get_tasks("jobs", 50, timeout_s=0.5)
    tasks += world.transport.get_tasks("jobs", 50, timeout_s=0.2)
    return tasks


# -- 1, 2: draining -------------------------------------------------------------------------------


@pytest.mark.parametrize(("worker", "lanes"), [("acc_threads8", 8), ("acc_async50", 50)])
def test_a_drain_runs_every_task_once_with_tasks_overlapping_at_the_defaults(
    world: Env, worker: str, lanes: int
) -> None:
    count, sleep_s = 400, 0.02
    ids = world.transport.submit_tasks("jobs", [{"out": world.out, "n": n, "sleep_s": sleep_s} for n in range(count)])
    process = world.start("--config", world.config({"jobs": worker}, **DEFAULTS), "--halt-when-empty")
    try:
        wait_for(lambda: os.path.exists(world.out), what="the first task to finish")
        first_done = time.monotonic()  # the interpreter's start-up is not the drain
        _out, err = process.communicate(timeout=90)
        took_s = time.monotonic() - first_done
    finally:
        stop(process)
    print(f"{world.url.split(':')[0]} {worker}: {count} tasks of {sleep_s * 1000:.0f} ms in {took_s:.2f} s")
    assert process.returncode == EXIT_OK, err[-3000:]
    assert f"concurrency {lanes} ({'async' if worker == 'acc_async50' else 'threads'})" in err
    records = world.records()
    assert Counter(r["id"] for r in records) == dict.fromkeys(ids, 1)  # every task exactly once
    assert all(r["task_matches"] for r in records)  # self.task is each lane's own
    assert len({r["pid"] for r in records}) == 1  # one child ran them all
    # they overlapped: from the first task done to the exit (the halting poll included) took under
    # half the serial time, and records were written while other tasks of the child still slept
    assert took_s < count * sleep_s / 2
    assert max(r["running"] for r in records) >= 2
    assert_nothing_left(world)


# -- 3: kill -9 mid-drain ---------------------------------------------------------------------


@pytest.mark.parametrize(("worker", "sleep_s"), [("acc_threads8", 0.05), ("acc_async50", 0.2)])
def test_kill_9_of_a_concurrent_child_mid_drain_loses_nothing_at_the_defaults(
    world: Env, worker: str, sleep_s: float
) -> None:
    count, marker = 300, world.tmp / "started"
    payloads = [{"out": world.out, "n": n, "sleep_s": sleep_s} for n in range(count)]
    payloads[count // 3] = {**payloads[count // 3], "sleep_s": 1.0, "started": str(marker)}
    ids = world.transport.submit_tasks("jobs", payloads)
    long_id = ids[count // 3]
    # the fixture workers have max_attempts 1, the default: a crash must not use it up
    process = world.start("--config", world.config({"jobs": worker}, **DEFAULTS), "--halt-when-empty")
    try:
        killed = int(wait_for(lambda: marker.exists() and marker.read_text(), what="the long task to start"))
        os.kill(killed, signal.SIGKILL)
        _out, err = process.communicate(timeout=90)
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err[-3000:]
    assert f"(pid {killed}) was killed by signal SIGKILL" in err
    records = world.records()
    runs = Counter(r["id"] for r in records)
    crashed = re.search(
        rf"(\d+) tasks on jobs crashed their worker: worker child \(pid {killed}\) was killed by signal SIGKILL", err
    )
    assert crashed is not None, err[-3000:]  # the tasks running in the child when it died went back
    print(f"{world.url.split(':')[0]} {worker}: {crashed[1]} running at the kill, {len(records) - count} reruns")
    assert int(crashed[1]) >= 2
    assert set(runs) == set(ids)  # nothing lost (those finished just before the kill may run twice)
    assert {r["pid"] for r in records if r["id"] == long_id} - {killed}  # its replacement ran the long one
    assert all(r["task_matches"] for r in records)
    assert_nothing_left(world)


# -- 4: SIGTERM with every lane busy --------------------------------------------------------------


def test_sigterm_with_8_threads_busy_lets_them_finish_and_leaves_the_rest_ready_at_the_defaults(
    world: Env,
) -> None:
    count = 30
    markers = world.tmp / "started"
    markers.mkdir()
    ids = world.transport.submit_tasks(
        "jobs", [{"out": world.out, "n": n, "sleep_s": 2, "started": str(markers / str(n))} for n in range(count)]
    )
    process = world.start("--config", world.config({"jobs": "acc_threads8"}, **DEFAULTS))
    try:
        wait_for(lambda: len(os.listdir(markers)) >= 8, what="8 tasks to start")
        started = {ids[int(name)] for name in os.listdir(markers)}
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err[-3000:]
    assert len(started) == 8
    assert {int(name) for name in os.listdir(markers)} == {ids.index(i) for i in started}  # no 9th started
    records = world.records()
    assert Counter(r["id"] for r in records) == dict.fromkeys(started, 1)  # the 8 running finished
    assert all(r["task_matches"] for r in records)
    assert world.transport.dead_tasks("jobs") == []
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (count - 8, 0, 0, 0)
    # the ready ones are those not started, given back uncounted (their next delivery is the first)
    left = fetch_all(world, count - 8)
    assert {task.id for task in left} == set(ids) - started
    assert {task.attempts for task in left} == {1}


# -- 5: timeout_s -------------------------------------------------------------------------------


def test_async_timeout_cancels_the_overrunning_coroutine_and_keeps_the_child(world: Env) -> None:
    overrun = world.transport.submit_task("jobs", {"out": world.out, "overrun": True})
    others = world.transport.submit_tasks("jobs", [{"out": world.out, "n": n, "sleep_s": 0.2} for n in range(12)])
    started = time.monotonic()
    result = world.run("--config", world.config({"jobs": "acc_async_timeout"}), "--halt-when-empty", timeout=90)
    took_s = time.monotonic() - started
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    records = world.records()
    starts = Counter(r["id"] for r in records if r.get("started"))
    finishes = Counter(r["id"] for r in records if not r.get("started"))
    assert starts == {overrun: 2, **dict.fromkeys(others, 1)}  # the overrun ran again: a failed attempt
    assert finishes == dict.fromkeys([overrun, *others], 1)  # nothing lost, the cancelled one never finished
    assert [r["attempts"] for r in records if r["id"] == overrun] == [1, 2, 2]
    assert len({r["pid"] for r in records}) == 1  # the same child ran both attempts
    assert f"task {overrun} on jobs failed (attempt 1 of 2), retrying in" in result.stderr
    assert "TaskTimeout: the task ran longer than timeout_s=0.5" in result.stderr
    assert "killed by signal" not in result.stderr and "recycled" not in result.stderr
    assert took_s < 30  # cancelled, not waited for
    assert_nothing_left(world)


def test_thread_timeout_fails_the_overrunning_task_and_replaces_the_child(world: Env) -> None:
    overrun = world.transport.submit_task("jobs", {"out": world.out, "overrun": True})
    others = world.transport.submit_tasks("jobs", [{"out": world.out, "n": n, "sleep_s": 0.2} for n in range(12)])
    started = time.monotonic()
    result = world.run("--config", world.config({"jobs": "acc_threads_timeout"}), "--halt-when-empty", timeout=90)
    took_s = time.monotonic() - started
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "ran past timeout_s=0.5 in thread lane" in result.stderr
    assert f"task {overrun} on jobs failed (attempt 1 of 2), retrying in" in result.stderr
    assert "is recycled (timeout_s)" in result.stderr  # it left on its own once its other lanes finished
    assert "killed by signal" not in result.stderr  # the supervisor did not have to kill it
    records = world.records()
    starts = Counter(r["id"] for r in records if r.get("started"))
    finishes = Counter(r["id"] for r in records if not r.get("started"))
    assert starts == {overrun: 2, **dict.fromkeys(others, 1)}  # none of the others ran twice
    assert finishes == dict.fromkeys([overrun, *others], 1)  # nothing lost, the overrun finished once
    first, second = [r for r in records if r["id"] == overrun and r.get("started")]
    assert (first["attempts"], second["attempts"]) == (1, 2)  # the overrun counted a failed attempt
    assert first["pid"] != second["pid"]  # and its second attempt ran in the replacement child
    assert took_s < 30  # the abandoned thread's 30 s sleep was not waited for
    assert_nothing_left(world)
