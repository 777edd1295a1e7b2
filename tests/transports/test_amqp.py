"""What the contract suite does not cover on RabbitMQ: URLs, errors, raw messages, crashes, delays,
priorities, claims with changing TTLs, threads and reconnects (the shared broker on 5672)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pika
import pytest
from harness_amqp import BASE_URL, cleanup, make_url
from support import AMQP_HOST, AMQP_PORT, free_port, require_service

from asynctask.errors import TransportError, TransportUnavailableError, TransportURLError
from asynctask.message import QueueStats
from asynctask.transports import get_transport
from asynctask.transports.amqp import AmqpTransport
from asynctask.transports.amqp_consumer import qos_for
from asynctask.transports.amqp_names import (
    HDR_DUE,
    claim_expiry_ms,
    connection_parameters,
    delay_bucket_ms,
    parse_amqp_url,
)

# -- URLs and options (no server) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "vhost", "tls"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "127.0.0.1", 5672, "/", False),
        ("amqp://localhost", "localhost", 5672, "/", False),
        ("amqp://u:p@rabbit.example.org/", "rabbit.example.org", 5672, "/", False),
        ("amqp://u:p@rabbit.example.org/jobs", "rabbit.example.org", 5672, "jobs", False),
        ("amqps://u:p@rabbit.example.org/jobs", "rabbit.example.org", 5671, "jobs", True),
        ("amqps://u:p@rabbit.example.org:6000/a%2Fb", "rabbit.example.org", 6000, "a/b", True),
    ],
)
def test_url_forms(url: str, host: str, port: int, vhost: str, tls: bool) -> None:
    parsed, options = parse_amqp_url(url)
    params = connection_parameters(parsed, options)
    assert (params.host, params.port, params.virtual_host) == (host, port, vhost)
    assert (params.ssl_options is not None) == tls


def test_options_and_defaults() -> None:
    _, options = parse_amqp_url("amqp://h/?prefetch=64&heartbeat_s=0&queue_type=quorum&prefix=app.x&lease_s=12.5")
    assert (options.prefetch, options.heartbeat_s, options.queue_type, options.prefix, options.lease_s) == (
        64,
        0,
        "quorum",
        "app.x",
        12.5,
    )
    _, defaults = parse_amqp_url("amqp://h")
    assert (defaults.prefetch, defaults.heartbeat_s, defaults.queue_type, defaults.prefix) == (
        512,
        600,
        "classic",
        "asynctask",
    )


@pytest.mark.parametrize(
    "query",
    [
        "prefetch=0",
        "prefetch=x",
        "heartbeat_s=-1",
        "queue_type=stream",
        "prefix=amq.x",
        "prefix=",
        "lease_s=0",
        "bad=1",
    ],
)
def test_bad_options_name_the_option_and_mask_the_password(query: str) -> None:
    with pytest.raises(TransportURLError) as info:
        parse_amqp_url(f"amqp://user:s3cret@h/?{query}")
    assert query.split("=", maxsplit=1)[0] in str(info.value)
    assert "s3cret" not in str(info.value)


def test_delay_buckets_round_up_to_two_significant_digits() -> None:
    assert [delay_bucket_ms(d) for d in (0.0001, 0.012, 0.099, 0.2, 1.234, 61, 12345.6)] == [
        1,
        12,
        99,
        200,
        1300,
        61000,
        13_000_000,
    ]
    for delay in (0.001, 0.37, 2.5, 99.9, 3601):
        ms = delay_bucket_ms(delay)
        assert delay * 1000 <= ms <= delay * 1000 * 1.1 + 1
    assert delay_bucket_ms(10**9) == 4_000_000_000


def test_qos_follows_the_fetch_size_and_claim_expiry_covers_the_ttl() -> None:
    assert [qos_for(n, 512) for n in (1, 2, 3, 25, 32, 100, 1000)] == [2, 4, 8, 64, 128, 512, 512]
    assert qos_for(100, 64) == 64
    assert claim_expiry_ms(500) == 64_000
    assert claim_expiry_ms(100_000) == 128_000
    assert claim_expiry_ms(10**12) == 2**32 - 1


# -- with the broker ----------------------------------------------------------------------------------


@pytest.fixture
def url() -> Iterator[str]:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    made = make_url()
    yield made
    cleanup(made)


@pytest.fixture
def transport(url: str) -> Iterator[AmqpTransport]:
    made = AmqpTransport(url)
    yield made
    made.close()


def test_unreachable_broker_is_one_line_naming_host_port_without_the_password() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError) as info:
        get_transport(f"amqp://guest:s3cret@127.0.0.1:{port}/%2F")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message and "***" in message
    assert "\n" not in message
    assert time.monotonic() - started < 10


def test_a_connection_lost_mid_call_raises_unavailable_then_the_next_call_reconnects(transport: AmqpTransport) -> None:
    transport.submit_tasks("midcall", [{"n": 1}])
    transport.connection.ensure = lambda: None  # type: ignore[method-assign]  # so the break is met mid-call
    transport.connection.conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(TransportUnavailableError) as info:
        transport.get_tasks("midcall", 10, timeout_s=1)
    assert f"{AMQP_HOST}:{AMQP_PORT}" in str(info.value)
    del transport.connection.ensure
    task = transport.get_task("midcall", timeout_s=5)
    assert task is not None and task.attempts == 1
    transport.ack(task)


def test_wrong_password_is_a_transport_error_without_the_password() -> None:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    with pytest.raises(TransportError) as info:
        AmqpTransport(f"amqp://guest:wrong-s3cret@{AMQP_HOST}:{AMQP_PORT}/%2F")
    assert "wrong-s3cret" not in str(info.value) and "guest" in str(info.value)
    assert "\n" not in str(info.value)


def test_repr_masks_the_password(transport: AmqpTransport) -> None:
    assert "guest:***@" in repr(transport) and "guest:guest" not in repr(transport)


def publish_raw(url: str, queue: str, body: bytes, **properties: object) -> None:
    """Publish as a foreign producer would: plain pika, none of asynctask's headers."""
    with contextlib.closing(AmqpTransport(url)) as transport:
        name = transport.connection.ensure_work(queue)
        channel = transport.connection.conn.channel()
        channel.confirm_delivery()
        channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2, **properties))


def test_undecodable_raw_message_goes_to_dead_letters_and_the_fetch_goes_on(url: str, transport: AmqpTransport) -> None:
    publish_raw(url, "raw", b"\x00\xffnot json")
    publish_raw(url, "raw", b"[1, 2]")
    publish_raw(url, "raw", b'{"from": "outside"}', message_id="outside-1")
    task = transport.get_task("raw", timeout_s=5)
    assert task is not None and task.payload == {"from": "outside"} and task.id == "outside-1"
    assert task.attempts == 1
    transport.ack(task)
    dead = transport.dead_tasks("raw")
    assert len(dead) == 2 and all(d.reason.startswith("undecodable task body") for d in dead)
    assert all(d.id and d.payload is None and d.attempts == 1 for d in dead)
    assert transport.stats("raw") == QueueStats(dead=2)


def test_early_message_is_delayed_again(url: str, transport: AmqpTransport) -> None:
    due_ms = round((time.time() + 3600) * 1000)
    publish_raw(url, "early", b'{"x": 1}', message_id="early-1", headers={HDR_DUE: due_ms})
    assert transport.get_task("early", timeout_s=1.5) is None
    stats = transport.stats("early")
    assert (stats.ready, stats.delayed) == (0, 1)
    assert transport.purge("early") == 1


CRASHER = textwrap.dedent(
    """
    import sys, time
    from asynctask.transports import get_transport
    transport = get_transport(sys.argv[1])
    tasks = transport.get_tasks(sys.argv[2], int(sys.argv[3]), timeout_s=10)
    print(" ".join(f"{t.id}:{t.attempts}" for t in tasks), flush=True)
    time.sleep(60)
    """
)


def test_attempts_after_a_consumer_holding_a_batch_is_killed(url: str, transport: AmqpTransport) -> None:
    ids = transport.submit_tasks("crash", [{"n": n} for n in range(5)])
    first = transport.get_task("crash", timeout_s=5)
    assert first is not None and first.id == ids[0]
    transport.nack(first)  # the copy carries attempts 1 in its header
    time.sleep(0.3)  # settled: no delivery in transit while close() gives the prefetched back
    transport.close()
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, url, "crash", "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        held = dict(item.split(":") for item in line)
        assert set(held) == set(ids) and held[ids[0]] == "2" and {held[i] for i in ids[1:]} == {"1"}
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.closing(AmqpTransport(url)) as again:
        tasks = again.get_tasks("crash", 10, timeout_s=5)
        while len(tasks) < 5 and (more := again.get_tasks("crash", 10, timeout_s=2)):
            tasks += more
        attempts = {t.id: t.attempts for t in tasks}
        assert attempts == {ids[0]: 3, **{i: 2 for i in ids[1:]}}
        again.ack_tasks(tasks)
        assert again.stats("crash") == QueueStats()


def test_delays_use_rounded_holding_queues(transport: AmqpTransport) -> None:
    started = time.monotonic()
    transport.submit_task("late", {"d": 0.6}, delay_s=0.6)
    transport.submit_task("late", {"d": 0.3}, delay_s=0.3)
    transport.submit_task("late", {"d": 0.301}, delay_s=0.301)  # 301 ms: its own bucket (two digits: 310)
    for ms in (300, 310, 600):
        assert transport.connection.passive(transport.connection.names.delay("late", ms)) == 1
    order = []
    while len(order) < 3 and time.monotonic() - started < 10:
        task = transport.get_task("late", timeout_s=5)
        assert task is not None
        assert time.monotonic() - started >= task.payload["d"] - 0.05
        order.append(task.payload["d"])
        transport.ack(task)
    assert order == [0.3, 0.301, 0.6]
    assert transport.stats("late") == QueueStats()


def test_priorities_also_order_what_the_consumer_already_holds(transport: AmqpTransport) -> None:
    transport.submit_task("prio", {"n": "first"})
    (first,) = transport.get_tasks("prio", 10, timeout_s=5)  # the consumer now exists, with room for 32
    transport.submit_tasks("prio", [{"n": p} for p in range(3)], priority=0)
    transport.submit_task("prio", {"n": "urgent"}, priority=9)
    transport.submit_task("prio", {"n": "mid"}, priority=4)
    time.sleep(0.2)  # all five are pushed into this instance's buffer
    tasks = transport.get_tasks("prio", 10, timeout_s=2)
    while len(tasks) < 5 and (more := transport.get_tasks("prio", 10, timeout_s=1)):
        tasks += more
    assert [t.payload["n"] for t in tasks] == ["urgent", "mid", 0, 1, 2]
    transport.ack_tasks([first, *tasks])


def test_claim_with_a_very_different_ttl_on_the_same_key(transport: AmqpTransport) -> None:
    assert transport.claim_once("k:ttl", 0.5) is True  # queue with x-expires 64 s
    assert transport.claim_once("k:ttl", 1000) is False  # x-expires 1024 s: 406, held, so False
    time.sleep(0.8)
    assert transport.claim_once("k:ttl", 1000) is True  # empty: deleted and declared again
    assert transport.claim_once("k:ttl", 0.5) is False
    long_key = "k:" + "é" * 190
    assert transport.claim_once(long_key, 5) is True and transport.claim_once(long_key, 5) is False
    assert ".sha1-" in transport.connection.names.claim(long_key)


def test_extend_from_another_thread_while_the_owner_waits(transport: AmqpTransport) -> None:
    transport.submit_task("threads", {})
    task = transport.get_task("threads", timeout_s=5, lease_s=0.5)
    assert task is not None
    results: list[bool] = []
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.is_set():
            results.append(transport.extend(task, 0.5))
            time.sleep(0.05)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        assert transport.get_task("threads", timeout_s=1.2) is None  # kept alive by the other thread
    finally:
        stop.set()
        thread.join()
    assert results and all(results)
    transport.ack(task)
    assert transport.extend(task, 5) is False


def test_a_lost_connection_is_replaced_and_old_receipts_are_stale(transport: AmqpTransport) -> None:
    transport.submit_tasks("lost", [{"n": 1}])
    task = transport.get_task("lost", timeout_s=5)
    assert task is not None
    transport.connection.conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)  # the connection breaks
    again = transport.get_task("lost", timeout_s=5)  # noticed, reconnected; the broker gave it back
    assert transport.extend(task, 5) is False
    assert again is not None and again.id == task.id and again.attempts == 2
    transport.ack(task)  # stale: a no-op
    transport.nack(task)
    assert transport.stats("lost").in_flight == 1
    transport.ack(again)
    assert transport.stats("lost") == QueueStats()


def test_close_gives_back_prefetched_tasks_without_counting_an_attempt(url: str, transport: AmqpTransport) -> None:
    transport.submit_tasks("giveback", [{"n": n} for n in range(20)])
    held = transport.get_tasks("giveback", 5, timeout_s=5)
    time.sleep(0.2)  # up to 16 held (the qos for fetches of 5)
    transport.close()
    with contextlib.closing(AmqpTransport(url)) as other:
        tasks = other.get_tasks("giveback", 25, timeout_s=5)
        while len(tasks) < 20 and (more := other.get_tasks("giveback", 25, timeout_s=2)):
            tasks += more
        attempts = {t.id: t.attempts for t in tasks}
        assert len(attempts) == 20
        assert {attempts[t.id] for t in held} == {2}  # handed out: an attempt
        assert set(attempts.values()) - {2} <= {1}
        assert sum(1 for a in attempts.values() if a == 1) == 15
        other.ack_tasks(tasks)


def test_a_deleted_queue_is_consumed_again_once_recreated(url: str, transport: AmqpTransport) -> None:
    transport.submit_task("gone", {"n": 1})
    task = transport.get_task("gone", timeout_s=5)
    assert task is not None
    transport.ack(task)
    with contextlib.closing(AmqpTransport(url)) as admin:
        admin.connection.admin_channel().queue_delete(admin.connection.names.work("gone"))
    assert transport.get_task("gone", timeout_s=0.3) is None
    with contextlib.closing(AmqpTransport(url)) as producer:
        producer.submit_task("gone", {"n": 2})
    again = transport.get_task("gone", timeout_s=5)
    assert again is not None and again.payload == {"n": 2}
    transport.ack(again)


def test_quorum_queues(url: str) -> None:
    quorum_url = url + "&queue_type=quorum"
    with contextlib.closing(AmqpTransport(quorum_url)) as transport:
        transport.submit_task("quorum", {"n": 1})
        transport.submit_task("quorum", {"n": 2}, delay_s=0.3)
        task = transport.get_task("quorum", timeout_s=5)
        assert task is not None and task.payload == {"n": 1}
        transport.nack(task)
        tasks = transport.get_tasks("quorum", 5, timeout_s=5)
        while len(tasks) < 2 and (more := transport.get_tasks("quorum", 5, timeout_s=2)):
            tasks += more
        assert sorted((t.payload["n"], t.attempts) for t in tasks) == [(1, 2), (2, 1)]
        transport.dead(tasks[0], "quorum dead")
        transport.ack(tasks[1])
        assert transport.stats("quorum").dead == 1
        assert transport.replay_dead("quorum") == 1
        again = transport.get_task("quorum", timeout_s=5)
        assert again is not None and again.attempts == 1
        transport.ack(again)
    with contextlib.closing(AmqpTransport(quorum_url)) as producer:  # a killed holder's delivery comes
        producer.submit_task("quorum", {"n": 3})  # back with x-delivery-count
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, quorum_url, "quorum", "1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().split()[0].endswith(":1")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with contextlib.closing(AmqpTransport(quorum_url)) as transport:
        task = transport.get_task("quorum", timeout_s=5)
        assert task is not None and task.attempts == 2
        transport.ack(task)


def test_base_url_is_the_shared_broker() -> None:
    assert BASE_URL.startswith(f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/")
