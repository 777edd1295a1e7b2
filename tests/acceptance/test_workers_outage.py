"""asynctask-workers survives its server going away: a throwaway redis-server on a free port is
stopped under a running supervisor, then started again; the child never dies and work resumes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workers_support import Env, RedisServer, stop, wait_for

from asynctask.transports import get_transport

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_server_outage_is_survived_and_work_resumes(tmp_path: Path, redis: RedisServer) -> None:
    world = Env(tmp_path)
    url = f"redis://127.0.0.1:{redis.port}/0"
    config = world.config({"jobs": "acc_record"}, asynctask_transport=url)
    with get_transport(url) as transport:
        transport.submit_task("jobs", {"out": world.out, "n": 1})
    process = world.start("--config", config)
    try:
        wait_for(lambda: len(world.records()) == 1, what="the first task")
        child_pids = {r["pid"] for r in world.records()}
        redis.stop()
        time.sleep(2)
        redis.start()
        with get_transport(url) as transport:
            transport.submit_task("jobs", {"out": world.out, "n": 2})
        wait_for(lambda: len(world.records()) == 2, timeout=40, what="the task submitted after the outage")
        assert process.poll() is None
    finally:
        _out, err = stop(process)
        world.close()
    assert [r["payload"]["n"] for r in world.records()] == [1, 2]
    assert {r["pid"] for r in world.records()} == child_pids, err  # the same child: it never died
    assert err.count("transport unavailable") == 1, err
    assert "transport reachable again" in err
    assert process.returncode == 0
