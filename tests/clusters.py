"""Throwaway clusters for the tests of issue 16, started on loopback from the installed servers.

Each is a context manager that starts its servers on free ports, waits until they work, yields an
info object (ports, URLs, fault helpers) and at the end kills what it started, by pid, and removes
its temp directory::

    with redis_cluster(masters=3, replicas_per_master=1) as cluster:   # RedisClusterInfo
        cluster.startup_nodes          # "127.0.0.1:p1,127.0.0.1:p2,..."
        cluster.kill_master_of("key")  # kill -9 its master; returns the promoted replica's port
    with redis_sentinel() as sentinel:  # SentinelInfo: master, replica, 3 Sentinels, "mymaster"
        sentinel.failover()            # kill -9 of the master; returns the new master's port
    with pgbouncer(pool_mode="transaction") as bouncer:  # PgBouncerInfo, in front of 127.0.0.1:5432
        bouncer.url; bouncer.restart()
    with rabbitmq_cluster(nodes=3) as rabbit:  # RabbitClusterInfo, beside the machine's own broker
        rabbit.url                     # amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/%2F
        rabbit.kill(rabbit.nodes[0]); rabbit.restart(rabbit.nodes[0])

Every kill has a ``restart`` that puts the cluster back together, so a test sharing a cluster
(``cluster_fixtures.py``) can leave it whole for the next one.  Each info has ``start_seconds``.

When a server is not installed or does not start, they raise :class:`ClusterUnavailable` with the
reason; ``cluster_fixtures.unavailable`` turns it into a skip, or a failure under
ASYNCTASK_REQUIRE_SERVICES=1.  PgBouncer and RabbitMQ run as ``postgres`` and ``rabbitmq``, so
they need root.  Ports: every node's (and the Redis Cluster bus ports, given with
``--cluster-port``) are picked by binding port 0, never fixed.  ``leftovers(directory)`` lists the
processes of a cluster still alive (the teardown leaves none).

Start times measured on this 2-core machine: Redis Cluster (3+3) about 2 s, Sentinel about 2 s,
PgBouncer under 0.1 s, RabbitMQ (3 nodes) 10-13 s (boot about 7.5 s when three boot at once, then
``stop_app``/``join_cluster``/``start_app`` about 3.5 s).
"""

from __future__ import annotations

from clusters_base import ClusterUnavailable, leftovers
from clusters_pgbouncer import PgBouncerInfo, pgbouncer
from clusters_rabbit import RabbitClusterInfo, RabbitNode, rabbitmq_cluster, rabbitmqctl
from clusters_redis import RedisClusterInfo, SentinelInfo, redis_cluster, redis_sentinel

__all__ = [
    "ClusterUnavailable",
    "PgBouncerInfo",
    "RabbitClusterInfo",
    "RabbitNode",
    "RedisClusterInfo",
    "SentinelInfo",
    "leftovers",
    "pgbouncer",
    "rabbitmq_cluster",
    "rabbitmqctl",
    "redis_cluster",
    "redis_sentinel",
]
