"""asynctask-workers (2 children) drains 3,000 tasks while Redis fails over under it: a Redis Cluster
master killed (``kill -9``) and its replica promoted; the Sentinels' master killed and its replica
promoted.  Nothing is lost, duplicates are counted and printed (a task run but whose ack the dead
master never passed on runs again: at least once), and the children never restart.

The servers are the session's (``redis_cluster``, ``redis_sentinel``: tests/clusters_redis.py); the
killed node is started again at the end (as a replica), so the next test finds the cluster whole.
Submits are waited for on the replica before the kill (Redis replication is asynchronous: a write
the master acknowledged but had not sent on is lost with it, see docs/scaling.rst), so "nothing
lost" holds exactly.
"""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clusters import RedisClusterInfo, SentinelInfo
from clusters_redis import client
from workers_support import CLI, Env, stop, transport_world, wait_for

from asynctask.errors import TransportError, TransportUnavailableError
from asynctask.transports.base import Transport

pytest_plugins = ["cluster_fixtures"]

TASKS = 3000
QUEUE = "jobs"
#: A lease lost with the dead master's last replies comes back this soon.
LEASE_S = 3


def replicated(master: int) -> None:
    """Wait until every replica of ``master`` has all it was sent so far (INFO replication offsets)."""

    def caught_up() -> bool:
        info = client(master).info("replication")
        replicas = [value for name, value in info.items() if name.startswith("slave") and isinstance(value, dict)]
        return bool(replicas) and all(r["offset"] >= info["master_repl_offset"] for r in replicas)

    wait_for(caught_up, 20, f"the replicas of port {master} to catch up")


def submitted(world: Env, numbers: range) -> bool:
    """Submit a task for each of ``numbers``; False when the transport is not reachable yet."""
    try:
        world.transport.submit_tasks(QUEUE, [{"out": world.out, "n": n} for n in numbers])
    except TransportUnavailableError:
        return False
    return True


def settled(transport: Transport) -> bool:
    """Nothing waiting, delayed or held in QUEUE (False while the transport cannot tell)."""
    try:
        stats = transport.stats(QUEUE)
    except TransportError:
        return False
    return stats.ready == stats.delayed == stats.in_flight == 0


@pytest.fixture
def cluster_world(tmp_path: Path, redis_cluster: RedisClusterInfo) -> Iterator[Env]:
    with transport_world("redis_cluster", tmp_path) as world:
        world.url += f"&lease_s={LEASE_S}"
        yield world


@pytest.fixture
def sentinel_world(tmp_path: Path, redis_sentinel: SentinelInfo) -> Iterator[Env]:
    with transport_world("redis_sentinel", tmp_path) as world:
        world.url += f"&lease_s={LEASE_S}"
        yield world


def drain_through(world: Env, master: int, fail_over: Callable[[], int], what: str) -> None:
    """Submit half of TASKS, start 2 children, fail over (``fail_over`` returns the new master's port)
    once a tenth ran, submit the other half, wait for every task; print and check what ran."""
    config = world.config({QUEUE: {"worker": "acc_record", "processes": 2}})
    half = TASKS // 2
    world.transport.submit_tasks(QUEUE, [{"out": world.out, "n": n} for n in range(half)])
    replicated(master)
    # stderr to a file: the failover makes the children log a lot, and a full pipe would stall them
    log = world.tmp / "workers.log"
    with log.open("w", encoding="utf-8") as stream:
        process = subprocess.Popen(
            [CLI, "--config", config], env=world.env, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=stream, text=True
        )
    failed_at = done_before = 0
    try:
        wait_for(lambda: len(world.records()) >= TASKS // 10, 30, "a tenth of the tasks to run")
        started = time.monotonic()
        new_master = fail_over()
        failed_at = time.monotonic()
        done_before = len(world.records())
        # the second half through the promoted master (this producer follows the failover too)
        wait_for(lambda: submitted(world, range(half, TASKS)), 20, "a submit after the failover")
        wait_for(lambda: len({r["payload"]["n"] for r in world.records()}) == TASKS, 60, "every task to run")
        drained_s = time.monotonic() - failed_at
        wait_for(lambda: settled(world.transport), 30, "every ack to go through (the queue empty)")
        assert process.poll() is None
    finally:
        stop(process)
        err = log.read_text(encoding="utf-8")
    records = world.records()
    runs = collections.Counter(r["payload"]["n"] for r in records)
    duplicates = sum(count - 1 for count in runs.values())
    print(
        f"\n{TASKS} tasks, {what}: master {master} killed after {done_before} had run, port {new_master} promoted"
        f" in {failed_at - started:.1f} s; the rest drained in {drained_s:.1f} s; {duplicates} duplicates"
        f" ({len(records)} runs)"
    )
    assert set(runs) == set(range(TASKS))  # nothing lost
    assert len({r["pid"] for r in records}) <= 2, "a child was restarted"
    assert process.returncode == 0, err[-3000:]
    assert "transport reachable again" in err, err[-3000:]  # they saw the master go and followed the promotion
    stats = world.transport.stats(QUEUE)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0), stats


def test_a_cluster_master_killed_and_its_replica_promoted_loses_nothing(
    cluster_world: Env, redis_cluster: RedisClusterInfo
) -> None:
    base = cluster_world.transport._base(QUEUE)  # type: ignore[attr-defined]
    master = redis_cluster.master_of(base)
    try:
        drain_through(cluster_world, master, lambda: redis_cluster.kill_master_of(base), "Redis Cluster")
        topology = cluster_world.transport.topology()
        assert master not in {int(m["node"].rsplit(":", 1)[1]) for m in topology["masters"]}, topology
    finally:
        if not redis_cluster.nodes[master].alive():
            redis_cluster.restart(master)


def test_a_sentinel_failover_loses_nothing(sentinel_world: Env, redis_sentinel: SentinelInfo) -> None:
    master = redis_sentinel.master_port()
    try:
        drain_through(sentinel_world, master, redis_sentinel.failover, "Sentinel")
        assert sentinel_world.transport.topology()["master"] == f"127.0.0.1:{redis_sentinel.master_port()}"
    finally:
        if not redis_sentinel.nodes[master].alive():
            redis_sentinel.restart(master)
