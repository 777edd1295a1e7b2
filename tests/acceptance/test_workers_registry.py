"""Issue 17, the worker registry through the command line: two ``asynctask-workers`` supervisors on
one transport (filesystem, Redis) with a heartbeat of 0.5 s, listed by ``asynctask workers --json``
with their queues, pids and what their children run; one killed with ``kill -9`` is dropped within
3 heartbeat periods, the other stopped with SIGTERM is gone as soon as it has exited.

The record's content, its expiry and the heartbeat thread are unit-tested in tests/unit/test_registry.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from workers_support import CLI, Env, transport_world, wait_for

from asynctask.cli.exit_codes import EXIT_OK
from asynctask.registry import list_supervisors

pytestmark = pytest.mark.slow

ADMIN = str(Path(CLI).parent / "asynctask")
HEARTBEAT_S = 0.5


def start(world: Env, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``asynctask-workers ARGS`` in the background, its stdout and stderr in ``log``."""
    with open(log, "w", encoding="utf-8") as stream:
        return subprocess.Popen(
            [CLI, *args], env=env or world.env, cwd=world.tmp, stdout=stream, stderr=subprocess.STDOUT, text=True
        )


def listed(world: Env, config: str) -> list[dict[str, Any]]:
    """``asynctask workers --json``."""
    done = subprocess.run(
        [ADMIN, "workers", "--json", "--config", config],
        env=world.env,
        cwd=world.tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    records: list[dict[str, Any]] = json.loads(done.stdout)
    return records


def by_pid(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {record["pid"]: record for record in records}


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL to each (its fork server and worker children, after their supervisor), and reap them."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def family_of(pid: int) -> list[psutil.Process]:
    """The processes ``pid`` started (its fork server and worker children), or [] when it is gone."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def check_listing(world: Env, config: str, pids: tuple[int, int], slow_id: str) -> None:
    """``asynctask workers --json`` lists both supervisors, their queues and what their children do."""
    found = by_pid(listed(world, config))
    assert set(found) == set(pids), found
    one, two = found[pids[0]], found[pids[1]]
    assert (one["queues"], two["queues"]) == (["reg_a", "reg_slow"], ["reg_b"])
    assert one["heartbeat_s"] == two["heartbeat_s"] == HEARTBEAT_S and one["state"] == "running"
    assert one["host"] == two["host"] and one["id"] != two["id"]
    assert "password" not in json.dumps(found) and world.url.split("?")[0] in one["transport"]
    children = {child["queue"]: child for child in one["children"]}
    assert children["reg_a"]["worker"] == "acc_record" and children["reg_a"]["done"] == 1
    [running] = children["reg_slow"]["running"]
    assert running["task_id"] == slow_id and time.time() - 60 < running["started_at"] <= time.time()
    assert {child["pid"] for child in one["children"]} <= {child.pid for child in family_of(pids[0])}
    [child_two] = two["children"]
    assert (child_two["worker"], child_two["queue"], child_two["concurrency"]) == ("acc_noop", "reg_b", 1)


def seconds_until_dropped(world: Env, pid: int, killed: float) -> tuple[float, float]:
    """Seconds from ``killed`` (monotonic) to the start of the last read that found supervisor
    ``pid`` and of the first that did not; fails when a read begun 3 heartbeat periods after
    ``killed`` still finds it."""
    deadline = killed + 3 * HEARTBEAT_S
    seen = killed
    while True:
        began = time.monotonic()
        if pid not in by_pid(list_supervisors(world.transport)):
            return seen - killed, began - killed
        seen = began
        assert began < deadline, "the killed supervisor is still listed 3 heartbeat periods after kill -9"
        time.sleep(0.02)


@pytest.mark.parametrize("transport", ["filesystem", "redis"])
def test_workers_lists_two_supervisors_and_drops_a_killed_one(tmp_path: Path, transport: str) -> None:
    with transport_world(transport, tmp_path) as world:
        config = world.config({"reg_a": "acc_record", "reg_slow": "acc_sleep"})
        first = start(world, tmp_path / "first.log", "--config", config, "--heartbeat-s", str(HEARTBEAT_S))
        # the second: other queues (--set), its period from the environment
        env = {**world.env, "ASYNCTASK_HEARTBEAT_S": str(HEARTBEAT_S)}
        second = start(
            world, tmp_path / "second.log", "--config", config, "--set", "asynctask_workers={reg_b: acc_noop}", env=env
        )
        family: list[psutil.Process] = []
        try:

            def both_ready() -> bool:
                found = by_pid(list_supervisors(world.transport))
                return {first.pid, second.pid} <= set(found) and all(
                    child["pid"] and child["last_fetch_at"] for record in found.values() for child in record["children"]
                )

            wait_for(both_ready, timeout=60, what="both supervisors' children to fetch")
            slow_id = world.transport.submit_task("reg_slow", {"out": world.out, "sleep_s": 60})
            world.transport.submit_task("reg_a", {"out": world.out})

            def first_busy() -> bool:
                record = by_pid(list_supervisors(world.transport)).get(first.pid)
                children = {child["queue"]: child for child in record["children"]} if record else {}
                return bool(children) and children["reg_a"]["done"] == 1 and bool(children["reg_slow"]["running"])

            wait_for(first_busy, timeout=30, what="the first supervisor's record to show the tasks")
            check_listing(world, config, (first.pid, second.pid), slow_id)

            # kill -9 the first supervisor (then, once it is dropped, its children: nothing may outlive the test)
            family = family_of(first.pid)
            os.kill(first.pid, signal.SIGKILL)
            killed = time.monotonic()
            seen, gone = seconds_until_dropped(world, first.pid, killed)
            first.wait(timeout=10)
            kill_all(family)
            assert list(by_pid(listed(world, config))) == [second.pid]

            # SIGTERM the second: its record goes when it exits
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == EXIT_OK, (tmp_path / "second.log").read_text()[-3000:]
            assert list_supervisors(world.transport) == []
            assert listed(world, config) == []
            print(f"{transport}: the killed supervisor was listed {seen:.2f} s after kill -9, gone at {gone:.2f} s")
        finally:
            for process in (first, second):
                if process.poll() is None:
                    kill_all([psutil.Process(process.pid), *family_of(process.pid)])
                    process.wait()
            kill_all(family)


def test_on_amqp_the_records_live_in_the_state_store(tmp_path: Path) -> None:
    with transport_world("amqp", tmp_path) as world:
        store = f"filesys:{tmp_path / 'state'}"
        config = world.config({"reg_amqp": "acc_noop"}, asynctask_state_store=store)
        supervisor = start(world, tmp_path / "amqp.log", "--config", config, "--heartbeat-s", str(HEARTBEAT_S))
        try:
            wait_for(lambda: listed(world, config), timeout=60, what="the supervisor's record")
            [record] = listed(world, config)
            assert (record["pid"], record["queues"]) == (supervisor.pid, ["reg_amqp"])
            assert record["transport"].startswith("amqp://guest:***@") and ":guest@" not in json.dumps(record)
            no_store = subprocess.run(
                [ADMIN, "workers", "--config", config, "--set", "asynctask_state_store=null"],
                env=world.env,
                cwd=world.tmp,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert no_store.returncode == 2 and len(no_store.stderr.splitlines()) == 1, no_store.stderr
            assert "asynctask_state_store" in no_store.stderr
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=30) == EXIT_OK, (tmp_path / "amqp.log").read_text()[-3000:]
            assert listed(world, config) == []
        finally:
            if supervisor.poll() is None:
                kill_all([psutil.Process(supervisor.pid), *family_of(supervisor.pid)])
                supervisor.wait()
