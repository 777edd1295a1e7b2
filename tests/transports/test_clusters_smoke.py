"""The throwaway clusters of ``tests/clusters.py`` work with the plain clients, their fault helpers
do what they say, and their teardown leaves no process and no directory behind."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import clusters
import psutil
from clusters import ClusterUnavailable, PgBouncerInfo

pytest_plugins = ["cluster_fixtures"]

T = TypeVar("T")


@contextlib.contextmanager
def started(manager: contextlib.AbstractContextManager[T], pids: list[int]) -> Iterator[T]:
    """Enter ``manager`` (skip or fail when it cannot start); afterwards check that nothing is left."""
    from cluster_fixtures import unavailable  # a plugin (pytest_plugins above): imported once pytest loaded it

    with contextlib.ExitStack() as stack:
        try:
            info = stack.enter_context(manager)
        except ClusterUnavailable as exc:
            unavailable(exc.reason)
        directory: Path = info.directory  # type: ignore[attr-defined]
        assert directory.is_dir()
        yield info
    assert clusters.leftovers(directory) == []
    assert not directory.exists()
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"


def test_redis_cluster_serves_every_slot_and_survives_a_master_kill() -> None:
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    pids: list[int] = []
    with started(clusters.redis_cluster(masters=3, replicas_per_master=1), pids) as cluster:
        pids += [node.pid for node in cluster.nodes.values() if node.pid is not None]
        assert len(cluster.masters) == 3 and len(cluster.replicas) == 3
        host_ports = [(h, int(p)) for h, p in (a.split(":") for a in cluster.startup_nodes.split(","))]
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in host_ports], socket_timeout=2)
        keys = [f"{{q{n}}}:k" for n in range(30)]
        for key in keys:
            client.set(key, key)
        assert {cluster.master_of(key) for key in keys} == set(cluster.masters)
        old = cluster.master_of(keys[0])
        redis.Redis(port=old).wait(1, 2000)  # the replica has every write before its master dies
        new = cluster.kill_master_of(keys[0])
        assert new != old and new in cluster.masters and cluster.master_of(keys[0]) == new
        client.close()
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in host_ports if p != old], socket_timeout=2)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        client.close()
        cluster.restart(old)
        assert cluster.topology()[new] == [old]


def test_redis_sentinel_reports_the_new_master_after_a_kill() -> None:
    import redis
    from redis.sentinel import Sentinel

    pids: list[int] = []
    with started(clusters.redis_sentinel(), pids) as sentinel:
        pids += [node.pid for node in sentinel.nodes.values() if node.pid is not None]
        assert sentinel.service_name == "mymaster" and len(sentinel.sentinel_ports) == 3
        old = sentinel.master_port()
        master = Sentinel(sentinel.sentinels, socket_timeout=2).master_for("mymaster", socket_timeout=2)
        master.set("k", "v")
        redis.Redis(port=old).wait(1, 2000)
        new = sentinel.failover()
        assert new != old
        master = Sentinel(sentinel.sentinels, socket_timeout=2).master_for("mymaster", socket_timeout=2)
        assert master.get("k") == b"v"
        assert master.connection_pool.get_master_address() == ("127.0.0.1", new)


def _backend_pids(info: PgBouncerInfo, clients: int, transactions: int) -> set[int]:
    import psycopg2

    seen: set[int] = set()
    lock = threading.Lock()

    def work() -> None:
        conn = psycopg2.connect(info.url, connect_timeout=5)
        try:
            for _ in range(transactions):
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.002)")
                    row: Any = cur.fetchone()
                    with lock:
                        seen.add(row[0])
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return seen


def test_pgbouncer_shares_a_small_pool_and_restarts_on_its_port() -> None:
    import psycopg2

    pids: list[int] = []
    with started(clusters.pgbouncer(pool_mode="transaction"), pids) as bouncer:
        assert bouncer.pid is not None
        pids.append(bouncer.pid)
        assert 1 <= len(_backend_pids(bouncer, clients=12, transactions=10)) <= bouncer.default_pool_size == 4
        admin = psycopg2.connect(bouncer.admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SHOW POOLS")
            names = [column[0] for column in cur.description or ()]
            pools = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
        admin.close()
        assert pools["test"]["pool_mode"] == "transaction"
        held = psycopg2.connect(bouncer.url)
        bouncer.restart()
        assert bouncer.pid is not None and bouncer.pid not in pids
        pids.append(bouncer.pid)
        with contextlib.suppress(psycopg2.Error), held.cursor() as cur:
            cur.execute("SELECT 1")
            raise AssertionError("a connection through the stopped PgBouncer still works")
        held.close()
        assert _backend_pids(bouncer, clients=2, transactions=2)


def test_rabbitmq_cluster_has_three_nodes_and_keeps_a_quorum_queue_when_one_is_killed() -> None:
    import pika

    pids: list[int] = []
    with started(clusters.rabbitmq_cluster(nodes=3), pids) as rabbit:
        pids += [node.pid for node in rabbit.nodes if node.pid is not None]
        assert rabbit.running_nodes() == sorted(node.name for node in rabbit.nodes)
        assert len({node.port for node in rabbit.nodes} | {5672}) == 4
        queue = f"smoke-{uuid.uuid4().hex[:8]}"
        channels = []
        for node in rabbit.nodes:
            connection = pika.BlockingConnection(pika.URLParameters(node.url))
            channels.append(connection.channel())
        channels[0].queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channels[1].basic_publish("", queue, b"one", pika.BasicProperties(delivery_mode=2))
        assert _get(channels[2], queue) == b"one"
        for channel in channels:
            channel.connection.close()
        rabbit.kill(rabbit.nodes[0])
        assert rabbit.running_nodes() == sorted(node.name for node in rabbit.nodes[1:])
        connection = pika.BlockingConnection(pika.URLParameters(rabbit.nodes[1].url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"two", pika.BasicProperties(delivery_mode=2))
        assert _get(channel, queue) == b"two"
        connection.close()
        rabbit.restart(rabbit.nodes[0])
        assert rabbit.nodes[0].pid is not None
        pids.append(rabbit.nodes[0].pid)
        assert len(rabbit.running_nodes()) == 3


def _get(channel: Any, queue: str, timeout_s: float = 10) -> bytes | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _method, _props, body = channel.basic_get(queue, auto_ack=True)
        if body is not None:
            return bytes(body)
        time.sleep(0.05)
    return None


def test_the_session_fixture_shares_one_pgbouncer(pgbouncer: PgBouncerInfo) -> None:
    import cluster_fixtures

    assert cluster_fixtures.shared_pgbouncer() is pgbouncer
    assert _backend_pids(pgbouncer, clients=2, transactions=2)
