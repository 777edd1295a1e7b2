"""Crashes are not failures, on every transport with a store other processes reach: asynctask-workers
as a subprocess, its children killed or exiting mid-task, a poison task, signals to the whole group.

Each test counts: every task processed, nothing dead-lettered that should not be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from workers_support import CLI, SERVER_TRANSPORTS, Env, stop, transport_world, wait_for

from asynctask.cli.exit_codes import EXIT_OK

ADMIN = str(Path(CLI).parent / "asynctask")


@pytest.fixture(params=SERVER_TRANSPORTS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with transport_world(request.param, tmp_path) as env:
        yield env


def test_kill_9_of_a_child_mid_task_runs_it_again_at_the_defaults(world: Env) -> None:
    marker = world.tmp / "started"
    long_id = world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 2, "started": str(marker)})
    ids = {long_id} | set(
        world.transport.submit_tasks("jobs", [{"out": world.out, "sleep_s": 0.02, "n": n} for n in range(59)])
    )
    # acc_sleep has max_attempts 1, the default: a crash must not use it up
    process = world.start(
        "--config", world.config({"jobs": {"worker": "acc_sleep", "processes": 2}}), "--halt-when-empty"
    )
    try:
        killed = int(wait_for(lambda: marker.exists() and marker.read_text(), what="the long task to start"))
        os.kill(killed, signal.SIGKILL)
        _out, err = process.communicate(timeout=90)
    finally:
        stop(process)
    assert process.returncode == EXIT_OK, err[-3000:]
    assert "was killed by signal SIGKILL" in err
    records = world.records()
    assert {r["id"] for r in records} == ids  # nothing lost
    assert [r["pid"] != killed for r in records if r["id"] == long_id] == [True]  # the replacement ran it
    assert world.transport.dead_tasks("jobs") == []
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_a_child_exiting_on_task_1_once_runs_both_tasks_in_the_same_run(world: Env) -> None:
    first = world.transport.submit_task("jobs", {"out": world.out, "marker": str(world.tmp / "exited")})
    second = world.transport.submit_task("jobs", {"out": world.out})
    result = world.run("--config", world.config({"jobs": "acc_exit"}), "--halt-when-empty", timeout=90)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "exited with code 1; restarting in" in result.stderr
    assert Counter(r["id"] for r in world.records()) == {first: 2, second: 1}
    assert world.transport.dead_tasks("jobs") == []


def test_a_poison_task_is_quarantined_after_max_crashes_and_the_others_flow(world: Env) -> None:
    poison = world.transport.submit_task("jobs", {"out": world.out, "poison": True})
    healthy = world.transport.submit_tasks("jobs", [{"out": world.out, "n": n} for n in range(5)])
    started = time.monotonic()
    process = world.start("--config", world.config({"jobs": "acc_poison"}))
    try:
        wait_for(
            lambda: {r["id"] for r in world.records()} >= set(healthy),
            timeout=15,
            what="the 5 healthy tasks behind the poison task",
        )
        healthy_after_s = time.monotonic() - started
        dead = wait_for(lambda: world.transport.dead_tasks("jobs"), timeout=60, what="the poison task's quarantine")
        time.sleep(1.5)  # a fourth run would show up here
        assert process.poll() is None  # the supervisor is still running
    finally:
        _out, err = stop(process)
    print(f"{world.url.split(':')[0]}: 5 healthy tasks done {healthy_after_s:.1f} s after the start")
    assert [d.id for d in dead] == [poison]
    assert dead[0].reason.startswith("quarantined: 3 worker children died while running the task (max_crashes=3)")
    assert dead[0].reason.count("was killed by signal SIGKILL") == 3 and ", host " in dead[0].reason
    runs = Counter(r["id"] for r in world.records())
    assert runs == {poison: 3, **{task_id: 1 for task_id in healthy}}, err[-3000:]
    assert process.returncode == EXIT_OK
    shown = subprocess.run(
        [ADMIN, "dead", "show", "jobs", poison, "--transport", world.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=world.env,
    )
    assert shown.returncode == 0, shown.stderr
    deaths = [line for line in shown.stdout.splitlines() if line.startswith("  #")]
    assert [line[:22] for line in deaths] == [f"  #{n} worker child (pid" for n in (1, 2, 3)], shown.stdout
    assert all("was killed by signal SIGKILL, rss " in line and ", host " in line for line in deaths)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("transport", ["filesystem", "redis"])
def test_a_signal_to_the_whole_process_group_lets_the_running_task_finish(
    tmp_path: Path, transport: str, signum: signal.Signals
) -> None:
    """systemd (KillMode=control-group), ``timeout`` and Ctrl-C signal every process of the group."""
    with transport_world(transport, tmp_path) as world:
        marker = world.tmp / "started"
        task_id = world.transport.submit_task("jobs", {"out": world.out, "sleep_s": 3, "started": str(marker)})
        process = world.start("--config", world.config({"jobs": "acc_sleep"}), own_group=True)
        try:
            wait_for(marker.exists, what="the 3 s task to start")
            time.sleep(0.5)
            os.killpg(process.pid, signum)
            _out, err = process.communicate(timeout=30)
        finally:
            stop(process)
        assert process.returncode == EXIT_OK, err[-3000:]
        assert [r["id"] for r in world.records()] == [task_id]  # it finished
        assert world.transport.dead_tasks("jobs") == []
        stats = world.transport.stats("jobs")
        assert (stats.ready, stats.delayed, stats.in_flight) == (0, 0, 0)  # and was acked
        assert "exited with code 255" not in err
