"""AMQP harness on a 3-node RabbitMQ cluster (``shared_rabbitmq_cluster()``, tests/clusters_rabbit.py):
the URL lists every node (``amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/%2F``), queues
are quorum queues (``queue_type=quorum``, so with the ``x-delivery-limit`` guard) under a prefix of
each test's own, deleted afterwards as on the machine's broker (harness_amqp.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from harness_amqp import cleanup, new_prefix
from harnesslib import Harness

from asynctask.transports.amqp import AmqpTransport


def cluster_url(**options: object) -> str:
    """The session cluster's URL (every node) with quorum queues, a prefix of its own and ``options``."""
    from cluster_fixtures import shared_rabbitmq_cluster

    cluster = shared_rabbitmq_cluster()
    query = {"queue_type": "quorum", "prefix": new_prefix(), **options}
    return f"{cluster.url}?{'&'.join(f'{name}={value}' for name, value in query.items())}"


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    url = cluster_url()
    transport = AmqpTransport(url)

    def inject_garbage(queue: str) -> None:
        with transport.connection.guard():
            name = transport.connection.ensure_work(queue)
            transport.connection.publish([(name, None, b"\xff{this is not json")])

    try:
        # named "amqp": the contract tests' AMQP cases (state store, cancel marks, put) hold here too
        yield Harness("amqp", url, transport, cross_process=True, inject_garbage=inject_garbage)
    finally:
        transport.close()
        cleanup(url)
