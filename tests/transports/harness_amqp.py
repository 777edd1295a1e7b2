"""AMQP harness: the shared RabbitMQ on 127.0.0.1:5672, queues under a prefix of each test's own.

Every name this test creates starts with ``asynctask_test_<run>_<n>.``; at the end the harness
deletes what the registry lists (work, dead and delay queues, the registry and the lock).  Claim
queues are not registered: they expire on their own (``x-expires``, at least 64 s).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness
from support import AMQP_HOST, AMQP_PORT, require_service

from asynctask.transports.amqp import AmqpTransport

RUN = uuid.uuid4().hex[:8]
_numbers = itertools.count()
BASE_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"


def make_url(**options: object) -> str:
    """A URL with a prefix no other test uses (plus ``options``)."""
    query = "&".join(f"{name}={value}" for name, value in {"prefix": new_prefix(), **options}.items())
    return f"{BASE_URL}?{query}"


def new_prefix() -> str:
    return f"asynctask_test_{RUN}_{next(_numbers)}"


def cleanup(url: str) -> None:
    """Delete every queue the registry of ``url``'s prefix knows."""
    with contextlib.closing(AmqpTransport(url)) as transport:
        names = transport.admin.registered_names()
        channel = transport.connection.conn.channel()
        for name in names:
            channel.queue_delete(name)
        channel.close()


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    url = make_url()
    transport = AmqpTransport(url)

    def inject_garbage(queue: str) -> None:
        with transport.connection.guard():
            name = transport.connection.ensure_work(queue)
            transport.connection.publish([(name, None, b"\xff{this is not json")])

    try:
        yield Harness("amqp", url, transport, cross_process=True, inject_garbage=inject_garbage)
    finally:
        transport.close()
        cleanup(url)
