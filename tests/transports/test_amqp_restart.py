"""RabbitMQ restarting mid-drain (``rabbitmqctl stop_app`` / ``start_app`` on the SHARED broker).

Short on purpose, and it waits for the broker to answer AMQP again before it ends, even when it
fails, so the tests after it find the broker up.  Run it last (it is marked ``slow``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

import pytest
from harness_amqp import cleanup, make_url
from server_restarts import restart_rabbitmq
from support import AMQP_HOST, AMQP_PORT, require_service

from asynctask.errors import TransportUnavailableError
from asynctask.message import QueueStats
from asynctask.transports.amqp import AmqpTransport

pytestmark = pytest.mark.slow

TASKS = 1500


def assert_reconnects_to_an_empty_queue(producer: AmqpTransport) -> None:
    """The producer's connection died too: one error at most, then it works."""
    for _ in range(3):
        with contextlib.suppress(TransportUnavailableError):
            assert producer.stats("restart") == QueueStats()
            return
    pytest.fail("the producer did not reconnect")


def test_broker_restart_mid_drain_loses_nothing_and_acks_no_delivery_twice() -> None:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    url = make_url()
    producer = AmqpTransport(url)
    ids = set()
    for start in range(0, TASKS, 500):
        ids |= set(producer.submit_tasks("restart", [{"n": n} for n in range(start, start + 500)]))
    acked: dict[str, list[int]] = defaultdict(list)  # id -> attempts of each delivery acked
    outages = []
    done = threading.Event()

    def consume() -> None:
        consumer = None
        idle = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and idle < 3:
            try:
                consumer = consumer or AmqpTransport(url)
                tasks = consumer.get_tasks("restart", 50, timeout_s=0.5)
                time.sleep(0.002 * len(tasks))  # "work", so the drain lasts through the restart
                consumer.ack_tasks(tasks)
            except TransportUnavailableError as exc:
                outages.append(str(exc))
                time.sleep(0.2)
                continue
            for task in tasks:
                acked[task.id].append(task.attempts)
            idle = 0 if tasks or len(acked) < len(ids) else idle + 1
        if consumer is not None:
            consumer.close()
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        while len(acked) < 300 and thread.is_alive():
            time.sleep(0.01)
        restart_rabbitmq(url)
    finally:
        thread.join(150)
    try:
        assert done.is_set()
        assert outages, "the consumer never noticed the restart"
        assert set(acked) == ids  # every task processed
        twice = {task_id: attempts for task_id, attempts in acked.items() if len(attempts) > 1}
        # A task is acked again only through a later delivery (its first ack died with the broker).
        assert all(attempts[-1] >= 2 for attempts in twice.values()), twice
        assert len(twice) <= 200
        assert_reconnects_to_an_empty_queue(producer)
    finally:
        producer.close()
        cleanup(url)
