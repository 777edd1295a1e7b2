"""asynctask-workers on a 3-node RabbitMQ cluster (quorum queues) survives ``kill -9`` of the node it is
connected to: the workers go on at the next node of the URL; nothing is lost, duplicates are counted
and reported (a task finished but not yet acked when its node died runs again: at least once).

The cluster is the session's (``rabbitmq_cluster``, tests/clusters_rabbit.py); the killed node is
started again at the end, so the next test finds the cluster whole.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusters import RabbitClusterInfo
from clusters_rabbit import rabbitmqctl
from workers_support import TRANSPORT_TESTS, Env, stop, wait_for

from asynctask.transports.amqp import AmqpTransport

pytest_plugins = ["cluster_fixtures"]

TASKS = 3000


def _harness_amqp() -> object:
    if str(TRANSPORT_TESTS) not in sys.path:
        sys.path.insert(0, str(TRANSPORT_TESTS))
    import harness_amqp

    return harness_amqp


@pytest.fixture
def url(rabbitmq_cluster: RabbitClusterInfo) -> Iterator[str]:
    harness_amqp = _harness_amqp()
    made = f"{rabbitmq_cluster.url}?queue_type=quorum&prefix={harness_amqp.new_prefix()}"  # type: ignore[attr-defined]
    yield made
    harness_amqp.cleanup(made)  # type: ignore[attr-defined]


def connections_by_port(cluster: RabbitClusterInfo, via: str) -> collections.Counter[int]:
    """How many client connections each node's listener holds (``rabbitmqctl list_connections``)."""
    out = rabbitmqctl(via, "list_connections", "port", "--formatter", "json", "--quiet")
    return collections.Counter(int(row["port"]) for row in json.loads(out))


def test_kill_9_of_the_node_the_workers_use_loses_nothing(
    tmp_path: Path, rabbitmq_cluster: RabbitClusterInfo, url: str
) -> None:
    cluster = rabbitmq_cluster
    world = Env(tmp_path, url, AmqpTransport(url))
    config = world.config({"jobs": "acc_record"})
    workers = [world.start("--config", config) for _ in range(2)]
    killed_at = 0.0
    try:
        # the workers (new processes) connect to the first node of the URL that answers: the node
        # holding two connections or more (the test's own transport may be on another one)
        [(port, _count)] = wait_for(
            lambda: [pc for pc in connections_by_port(cluster, cluster.nodes[-1].name).most_common(1) if pc[1] >= 2],
            30,
            "the workers' connections",
        )
        node = cluster.node(port)
        others = [n for n in cluster.nodes if n is not node]
        world.transport.submit_tasks("jobs", [{"out": world.out, "n": n} for n in range(TASKS)])
        world.transport.close()  # perhaps connected to the node about to die
        wait_for(lambda: len(world.records()) >= TASKS // 10, 30, "a tenth of the tasks to run")
        cluster.kill(node)
        killed_at = time.monotonic()
        done_before = len(world.records())
        wait_for(lambda: len({r["payload"]["n"] for r in world.records()}) == TASKS, 90, "every task to run")
        drained_s = time.monotonic() - killed_at
        assert [w.poll() for w in workers] == [None, None]  # they never stopped

        def moved_to_the_others() -> bool:  # the broker's listing of connections lags a little
            moved = connections_by_port(cluster, others[0].name)
            return moved[node.port] == 0 and sum(moved[n.port] for n in others) >= 2

        wait_for(moved_to_the_others, 15, "the workers' connections on the other nodes")
    finally:
        errors = [stop(w)[1] for w in workers]
        world.close()
        if killed_at:
            cluster.restart(node)
    records = world.records()
    runs = collections.Counter(r["payload"]["n"] for r in records)
    duplicates = sum(count - 1 for count in runs.values())
    print(
        f"\n{TASKS} tasks, node {node.name} (port {node.port}) killed after {done_before} had run; the rest drained"
        f" in {drained_s:.1f} s; {duplicates} duplicates ({len(records)} runs)"
    )
    assert set(runs) == set(range(TASKS))  # nothing lost
    assert all(w.returncode == 0 for w in workers), errors
    assert not any("restarting in" in err for err in errors), errors  # no child died
    # the workers on the killed node (both, unless one found it not answering at its start) lost it
    # and went on at another node; each reruns at most what it had fetched and not yet acked (the
    # prefetch, 512 by default): handed out before the kill, finished after it, their acks lost
    lost = [err for err in errors if f"lost the connection to RabbitMQ at 127.0.0.1:{node.port}" in err]
    assert lost, errors
    assert all("transport reachable again; resuming" in err for err in lost), lost
    assert duplicates <= 512 * len(lost), runs.most_common(3)
    with contextlib.closing(AmqpTransport(url)) as transport:
        stats = transport.stats("jobs")
        assert (stats.ready, stats.dead) == (0, 0)
