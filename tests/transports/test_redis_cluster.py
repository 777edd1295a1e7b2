"""The Redis transport on a Redis Cluster and behind Redis Sentinel, beyond the contract suite (which
runs on both through harness_redis_cluster.py and harness_redis_sentinel.py): queues on every
master at once, a stale slot map (MOVED) followed, errors naming the node, a ``redis://`` URL on a
cluster node explained, URL mistakes, ``topology()``, a Sentinel switchover (the old master demoted:
READONLY) followed without reopening.

The servers are the session's (tests/clusters_redis.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import harness_redis_cluster
import harness_redis_sentinel
import pytest
from clusters import RedisClusterInfo, SentinelInfo
from clusters_redis import client
from redis.crc import key_slot

from asynctask.errors import TransportError, TransportURLError
from asynctask.transports import get_transport
from asynctask.transports.redis import RedisTransport

pytest_plugins = ["cluster_fixtures"]


@pytest.fixture
def cluster_transport(redis_cluster: RedisClusterInfo) -> Iterator[RedisTransport]:
    prefix = "attest" + uuid.uuid4().hex[:12]
    transport = RedisTransport(f"{redis_cluster.url}?key_prefix={prefix}")
    yield transport
    transport.close()
    harness_redis_cluster.delete_prefix(redis_cluster.masters, prefix)


def queue_per_master(transport: RedisTransport, cluster: RedisClusterInfo) -> dict[int, str]:
    """A queue name whose hash tag lands on each master: {master port: queue}."""
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < len(cluster.masters):
        name = f"q{n}"
        chosen.setdefault(cluster.master_of(transport._base(name)), name)
        n += 1
    return chosen


def test_queues_on_every_master_work_at_once(
    cluster_transport: RedisTransport, redis_cluster: RedisClusterInfo
) -> None:
    transport = cluster_transport
    queues = queue_per_master(transport, redis_cluster)
    assert len(queues) == 3
    for queue in queues.values():
        transport.submit_tasks(queue, [{"n": n} for n in range(5)])
        transport.submit_task(queue, {"n": 5})
        transport.state_put(queue, "k.1", "v", ttl_s=60)
    assert set(transport.queues()) == set(queues.values())
    fetched = [task for queue in queues.values() for task in transport.get_tasks(queue, 10, timeout_s=1)]
    assert len(fetched) == 18
    transport.ack_tasks(fetched)  # one call, three masters
    for queue in queues.values():
        assert transport.stats(queue).ready == transport.stats(queue).in_flight == 0
        assert transport.state_keys(queue, "k.") == ["k.1"]

    # a waiting consumer on each master wakes on its submit
    got: dict[str, float] = {}

    def consume(queue: str) -> None:
        task = transport.get_task(queue, timeout_s=5)
        assert task is not None
        got[queue] = time.monotonic()
        transport.ack(task)

    threads = [threading.Thread(target=consume, args=(queue,)) for queue in queues.values()]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    submitted = time.monotonic()
    for queue in queues.values():
        transport.submit_task(queue, {"late": True})
    for thread in threads:
        thread.join(10)
    assert set(got) == set(queues.values()) and max(got.values()) - submitted < 2


def test_a_stale_slot_map_is_followed_and_errors_name_the_node(
    cluster_transport: RedisTransport, redis_cluster: RedisClusterInfo
) -> None:
    transport = cluster_transport
    queues = queue_per_master(transport, redis_cluster)
    (master_a, queue_a), (master_b, _queue_b) = list(queues.items())[:2]
    transport.submit_task(queue_a, {"n": 1})
    slot = int(key_slot(transport._base(queue_a)))
    transport._conn._routes[slot] = f"127.0.0.1:{master_b}"  # type: ignore[attr-defined]  # as after a resharding
    transport.submit_task(queue_a, {"n": 2})  # MOVED from master_b, sent again to master_a
    assert transport._conn._routes[slot] == f"127.0.0.1:{master_a}"  # type: ignore[attr-defined]
    assert transport.stats(queue_a).ready == 2

    transport._conn.command(b"SET", transport._base(queue_a) + b"ready:0", b"not a list")
    with pytest.raises(TransportError, match=f"Redis at 127.0.0.1:{master_a} failed: .*WRONGTYPE"):
        transport.get_task(queue_a)


def test_a_redis_url_on_a_cluster_node_says_to_use_redis_cluster(redis_cluster: RedisClusterInfo) -> None:
    port = redis_cluster.masters[0]
    with RedisTransport(f"redis://127.0.0.1:{port}/0?key_prefix=attest{uuid.uuid4().hex[:12]}") as transport:
        queue = next(f"q{n}" for n in range(100) if redis_cluster.master_of(transport._base(f"q{n}")) != port)
        with pytest.raises(
            TransportError, match=r"is a Redis Cluster node \(slot \d+ is served by .*redis\+cluster://"
        ):
            transport.submit_task(queue, {})


def test_cluster_topology_lists_masters_slots_and_replicas(
    cluster_transport: RedisTransport, redis_cluster: RedisClusterInfo
) -> None:
    topology = cluster_transport.topology()
    assert topology["kind"] == "redis-cluster"
    masters = {int(m["node"].rsplit(":", 1)[1]): m for m in topology["masters"]}
    assert sorted(masters) == redis_cluster.masters
    for port, replicas in redis_cluster.topology().items():
        assert masters[port]["replicas"] == [f"127.0.0.1:{r}" for r in replicas]
    spans = [tuple(map(int, span.split("-"))) for m in masters.values() for span in m["slots"]]
    assert sum(end - start + 1 for start, end in spans) == 16384


def test_the_contract_suite_used_every_master(redis_cluster: RedisClusterInfo) -> None:
    if harness_redis_cluster.RUNS[0] < 30:
        pytest.skip("run with tests/transports/test_contract*.py (the redis_cluster harness's tests)")
    used = harness_redis_cluster.MASTERS_USED
    print(f"\n{harness_redis_cluster.RUNS[0]} contract tests used masters {sorted(used)}")
    assert used >= set(redis_cluster.masters), "the failover tests may have swapped a master: ports of all 6 nodes"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:1,127.0.0.1:2/3", "database 0 only"),
        ("redis+cluster://127.0.0.1:1,,127.0.0.1:2", "host list item ''"),
        ("redis+sentinel://127.0.0.1:1,127.0.0.1:2", "/service_name or /service_name/db"),
        ("redis+sentinel://127.0.0.1:1/mymaster/x", "/service_name or /service_name/db"),
        ("redis+sentinel://127.0.0.1:1/mymaster?ssl_ca_certs=x", "allowed options: key_prefix, lease_s, sentinel"),
    ],
)
def test_url_mistakes_are_named(url: str, message: str) -> None:
    with pytest.raises(TransportURLError, match=message.replace("+", r"\+")):
        get_transport(url)


def in_sync(master: int, timeout_s: float = 20) -> None:
    """Wait until ``master`` has a replica that has all it was sent so far."""

    def caught_up() -> bool:
        info = client(master).info("replication")
        replicas = [value for name, value in info.items() if name.startswith("slave") and isinstance(value, dict)]
        return bool(replicas) and all(r["offset"] >= info["master_repl_offset"] for r in replicas)

    deadline = time.monotonic() + timeout_s
    while not caught_up():
        assert time.monotonic() < deadline, f"the replica of port {master} did not catch up"
        time.sleep(0.05)


def test_sentinel_topology_and_a_switchover_followed(redis_sentinel: SentinelInfo) -> None:
    prefix = "attest" + uuid.uuid4().hex[:12]
    transport = RedisTransport(f"{redis_sentinel.url}?key_prefix={prefix}")
    try:
        old = redis_sentinel.master_port()
        topology = transport.topology()
        assert topology["kind"] == "redis-sentinel" and topology["master"] == f"127.0.0.1:{old}"
        assert topology["service"] == "mymaster" and len(topology["sentinels"]) == 3
        transport.submit_task("jobs", {"n": 1})
        new = redis_sentinel.failover(kill=False)  # SENTINEL FAILOVER: the old master becomes a replica
        assert new != old
        deadline = time.monotonic() + 10
        while True:  # the first call may see the demotion (READONLY) and say unavailable once
            try:
                transport.submit_task("jobs", {"n": 2})
                break
            except TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        tasks = transport.get_tasks("jobs", 10, timeout_s=1)
        assert sorted(t.payload["n"] for t in tasks) == [1, 2]
        transport.ack_tasks(tasks)
        assert transport.topology()["master"] == f"127.0.0.1:{new}"
        in_sync(new)  # the demoted master caught up: the next test finds the pair whole
    finally:
        transport.close()
        harness_redis_sentinel.delete_prefix(redis_sentinel.master_port(), prefix)


def test_wait_replicas_waits_for_the_replica_or_says_it_did_not(
    redis_cluster: RedisClusterInfo, redis_sentinel: SentinelInfo
) -> None:
    prefix = "attest" + uuid.uuid4().hex[:12]
    for base_url in (redis_cluster.url, redis_sentinel.url):
        with RedisTransport(f"{base_url}?key_prefix={prefix}&wait_replicas=1") as transport:
            queues = queue_per_master(transport, redis_cluster) if "cluster" in base_url else {0: "jobs"}
            for queue in queues.values():
                transport.submit_task(queue, {"n": 1})
                transport.submit_tasks(queue, [{"n": 2}, {"n": 3}])
                assert transport.stats(queue).ready == 3
        url = f"{base_url}?key_prefix={prefix}&wait_replicas=2&wait_timeout_s=0.05"
        with (
            RedisTransport(url) as transport,
            pytest.raises(TransportError, match=r"only 1 of 2 replica\(s\) acknowledged"),
        ):
            transport.submit_task("jobs", {"n": 4})
    harness_redis_cluster.delete_prefix(redis_cluster.masters, prefix)
    harness_redis_sentinel.delete_prefix(redis_sentinel.master_port(), prefix)
