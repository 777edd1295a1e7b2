"""asynctask-workers as a subprocess on the filesystem transport: crashes, kills, signals, timeouts,
memory."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from workers_support import Env, stop, wait_for

from asynctask.cli.exit_codes import EXIT_FORCED, EXIT_OK


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.close()


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def test_child_exiting_mid_task_is_restarted_and_its_task_comes_back_at_once(world: Env) -> None:
    # A lease far longer than the run proves the task came back through the supervisor, not by expiry.
    url = world.url + "?lease_s=300"
    world.transport.submit_task("jobs", {"out": world.out, "marker": str(world.tmp / "exited")})
    config = world.config({"jobs": "acc_exit"}, asynctask_transport=url)
    started = time.monotonic()
    result = world.run("--config", config, "--halt-when-empty", timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    assert time.monotonic() - started < 30
    assert [r["attempts"] for r in world.records()] == [1, 1]  # a crash is not a failed attempt
    assert "worker acc_exit on queue jobs" in result.stderr and "exited with code 1; restarting in" in result.stderr
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_kill_9_of_a_child_mid_task_loses_nothing(world: Env) -> None:
    url = world.url + "?lease_s=300"
    marker = world.tmp / "started"
    world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 3, "started": str(marker)})
    world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 0})
    config = world.config({"jobs": "acc_slow"}, asynctask_transport=url)
    process = world.start("--config", config, "--halt-when-empty")
    try:
        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), what="the slow task to start"))
        os.kill(pid, signal.SIGKILL)
        _out, err = process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err
    assert "was killed by signal SIGKILL; restarting in" in err
    records = world.records()
    assert sorted(r["payload"]["sleep_s"] for r in records) == [0, 3]
    assert all(r["pid"] != pid for r in records)
    slow = next(r for r in records if r["payload"]["sleep_s"] == 3)
    assert slow["attempts"] == 1  # a crash is not a failed attempt
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_sigterm_lets_the_running_task_finish_then_exits_0(world: Env) -> None:
    marker = world.tmp / "started"
    task_id = world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 3, "started": str(marker)})
    world.transport.submit_tasks("jobs", [{"out": world.out, "sleep_s": 0} for _ in range(3)])
    config = world.config({"jobs": "acc_slow"}, asynctask_shutdown_timeout=8)
    process = world.start("--config", config)
    try:
        wait_for(marker.exists, what="the slow task to start")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
        elapsed = time.monotonic() - signalled
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err
    assert elapsed < 8
    assert [r["id"] for r in world.records()] == [task_id]
    stats = world.transport.stats("jobs")
    # the slow task was acked; the three fetched-or-not tasks are back, ready, attempts uncounted
    assert (stats.ready, stats.in_flight, stats.dead) == (3, 0, 0)
    assert all(task.attempts == 1 for task in world.transport.get_tasks("jobs", 10))


def test_second_sigterm_exits_at_once_and_the_task_comes_back(world: Env) -> None:
    marker = world.tmp / "started"
    task_id = world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 20, "started": str(marker)})
    config = world.config({"jobs": "acc_slow"}, asynctask_shutdown_timeout=30)
    process = world.start("--config", config)
    try:
        wait_for(marker.exists, what="the slow task to start")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
        elapsed = time.monotonic() - signalled
    finally:
        stop(process)
    assert process.returncode == EXIT_FORCED, err
    assert elapsed < 5
    assert world.records() == []
    back = world.transport.get_task("jobs")
    assert back is not None and back.id == task_id


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)])
def test_two_signals_back_to_back_force_the_shutdown(world: Env, signals: tuple[signal.Signals, ...]) -> None:
    """Two stop signals sent with no pause both count, though both arrive before the loop wakes.

    Two different ones, as the kernel merges two of the same number that arrive before it delivered
    the first (two SIGINTs from one ``kill`` loop often arrive as one; no program can count them).
    """
    marker = world.tmp / "started"
    task_id = world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 20, "started": str(marker)})
    process = world.start("--config", world.config({"jobs": "acc_slow"}, asynctask_shutdown_timeout=30))
    try:
        wait_for(marker.exists, what="the slow task to start")
        time.sleep(0.3)
        signalled = time.monotonic()
        for signum in signals:
            os.kill(process.pid, signum)
        _out, err = process.communicate(timeout=20)
        elapsed = time.monotonic() - signalled
    finally:
        stop(process)
    assert process.returncode == EXIT_FORCED, err[-3000:]
    assert elapsed < 5 and "second signal: killing the workers now" in err
    back = world.transport.get_task("jobs")
    assert back is not None and back.id == task_id and back.attempts == 1


@pytest.mark.parametrize("worker", ["acc_timeout_sleep", "acc_timeout_busy"])
def test_a_task_over_timeout_is_stopped_and_retried_or_dead_lettered(world: Env, worker: str) -> None:
    task_id = world.transport.submit_task("jobs", {"out": world.out})
    started = time.monotonic()
    result = world.run("--config", world.config({"jobs": worker}), "--halt-when-empty", timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    assert time.monotonic() - started < 30
    dead = world.transport.dead_tasks("jobs")
    assert [d.id for d in dead] == [task_id]
    assert "TaskTimeout" in dead[0].reason and "timeout_s=0.5" in dead[0].reason
    attempts = [r["attempts"] for r in world.records()]
    if worker == "acc_timeout_sleep":
        assert attempts == [1, 2]  # retried once (max_attempts 2), both interrupted inside the child
    else:
        assert attempts == [1]
        assert "ran past timeout_s=0.5: killing worker acc_timeout_busy" in result.stderr


@pytest.mark.slow
def test_child_memory_stays_under_60_mb_draining_10000_noop_tasks(world: Env) -> None:
    for start in range(0, 10_000, 1000):
        world.transport.submit_tasks("jobs", [{"n": n} for n in range(start, start + 1000)])
    process = world.start("--config", world.config({"jobs": "acc_noop"}), "--halt-when-empty", "-q")
    peak = 0
    try:
        while process.poll() is None:
            for child in _children(process.pid):
                try:
                    peak = max(peak, child.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)
        _out, err = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err
    assert world.transport.stats("jobs").ready == 0
    print(f"peak child RSS draining 10,000 no-op tasks: {peak / 2**20:.1f} MB")
    assert 0 < peak < 60 * 1024 * 1024, f"peak child RSS {peak / 2**20:.1f} MB"


def test_children_leave_when_the_supervisor_is_killed(world: Env) -> None:
    world.transport.submit_task("jobs", {"out": world.out, "n": 1})
    process = world.start("--config", world.config({"jobs": "acc_record"}))
    try:
        wait_for(world.records, what="the first task")
        pid = world.records()[0]["pid"]
        time.sleep(1.5)  # the child keeps running while its supervisor lives
        assert psutil.pid_exists(pid)
        process.kill()
        process.communicate(timeout=10)
        wait_for(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
            timeout=15,
            what="the orphaned child to leave",
        )
    finally:
        stop(process)
