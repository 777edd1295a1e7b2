"""asynctask-workers through a server restart mid-drain, on every server transport: 3,000 tasks of
2 ms, 2 processes; nothing lost, and at most 1 % run twice (the tasks done but not yet acked when
the server went away: the ack window, :attr:`Transport.ack_window_s`).

Redis runs as a server of the test's own with every write persisted (the shared one keeps nothing);
PostgreSQL and RabbitMQ are the shared servers, restarted (so this file runs last).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from server_restarts import restart_pgsql, restart_rabbitmq
from workers_support import Env, RedisServer, stop, transport_world, wait_for

from asynctask.cli.exit_codes import EXIT_OK
from asynctask.transports import get_transport

pytestmark = pytest.mark.slow

TASKS = 3000


def drain_through(world: Env, restart: Callable[[], None]) -> None:
    ids = set()
    for start in range(0, TASKS, 1000):
        ids |= set(
            world.transport.submit_tasks(
                "jobs", [{"out": world.out, "sleep_s": 0.002, "n": n} for n in range(start, start + 1000)]
            )
        )
    config = world.config({"jobs": {"worker": "acc_sleep", "processes": 2}})
    process = world.start("--config", config, "--halt-when-empty")
    try:
        wait_for(lambda: len(world.records()) >= 600, timeout=60, what="600 tasks before the restart")
        restart()
        done_at_restart = len(world.records())
        _out, err = process.communicate(timeout=240)
    finally:
        stop(process)
    runs = Counter(r["id"] for r in world.records())
    twice = sum(count - 1 for count in runs.values())
    name = world.url.split(":")[0]
    print(f"{name}: {len(runs)} of {TASKS} tasks processed, {twice} run twice ({twice / TASKS:.2%})")
    assert process.returncode == EXIT_OK, err[-3000:]
    assert done_at_restart < TASKS and "transport unavailable" in err  # the restart came mid-drain
    assert set(runs) == ids, f"{len(ids - set(runs))} tasks lost"
    assert twice <= TASKS // 100, f"{twice} tasks ran twice"
    with get_transport(world.url) as check:  # the test's own connection may have died with the server
        assert check.dead_tasks("jobs") == []


def test_redis_restart_mid_drain(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here")
    server = RedisServer(tmp_path, "--appendfsync", "always")
    server.start()
    world = Env(tmp_path, server.url, get_transport(server.url))

    def restart() -> None:
        server.stop()
        time.sleep(1.0)  # long enough for every worker to notice
        server.start()

    try:
        drain_through(world, restart)
    finally:
        world.close()
        server.stop()


@pytest.mark.parametrize("name", ["pgsql", "amqp"])
def test_shared_server_restart_mid_drain(tmp_path: Path, name: str) -> None:
    with transport_world(name, tmp_path) as world:
        drain_through(world, restart_pgsql if name == "pgsql" else lambda: restart_rabbitmq(world.url))
