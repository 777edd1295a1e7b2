"""Redis transport extras beyond the contract suite: URLs, errors, raw store damage, cluster hash tags,
server restarts and killed consumers.

Most tests use a throwaway ``redis-server`` (a free port, a temporary directory, ``appendonly yes``,
a password and a unix socket) started here, so restarting it disturbs nobody; the rest use database 9
of the shared server with a key prefix of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from support import REDIS_HOST, REDIS_PORT, RedisServer, free_port, require_service

from asynctask.errors import TransportUnavailableError, TransportURLError
from asynctask.message import QueueStats
from asynctask.transports import get_transport
from asynctask.transports.redis import RedisTransport

PASSWORD = "s3cret-pw"
SRC = str(Path(__file__).resolve().parents[2])


class Server(RedisServer):
    """A throwaway redis-server with a password and a unix socket, persisting to an AOF."""

    def __init__(self, directory: Path) -> None:
        self.socket = str(directory / "redis.sock")
        super().__init__(directory, "--requirepass", PASSWORD, "--unixsocket", self.socket, "--unixsocketperm", "700")

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process

    def url(self, prefix: str = "t", **options: str) -> str:  # type: ignore[override]
        query = "&".join(f"{k}={v}" for k, v in {"key_prefix": prefix, **options}.items())
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0?{query}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    made = Server(tmp_path_factory.mktemp("redis"))
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def shared_prefix() -> Iterator[str]:
    """A key prefix of its own in database 9 of the shared server; its keys are deleted afterwards."""
    require_service("redis", REDIS_HOST, REDIS_PORT)
    prefix = "attest" + uuid.uuid4().hex[:12]
    yield prefix
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=9)
    for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


# -- URLs, options and messages --------------------------------------------------------------------


def test_url_forms_reach_the_same_store(server: Server) -> None:
    tcp = get_transport(server.url("forms"))
    unix = get_transport(f"redis+unix://:{PASSWORD}@{server.socket}?db=0&key_prefix=forms")
    other_db = get_transport(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/3?key_prefix=forms")
    try:
        assert isinstance(tcp, RedisTransport) and isinstance(unix, RedisTransport)
        task_id = tcp.submit_task("forms", {"x": 1})
        task = unix.get_task("forms", timeout_s=2)
        assert task is not None and task.id == task_id
        assert other_db.stats("forms") == QueueStats()
        unix.ack(task)
        assert tcp.stats("forms") == QueueStats()
    finally:
        for transport in (tcp, unix, other_db):
            transport.close()


def test_options() -> None:
    require_service("redis", REDIS_HOST, REDIS_PORT)
    transport = RedisTransport(
        f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix=my.app-1&lease_s=12.5&socket_timeout_s=3"
    )
    try:
        assert (transport.key_prefix, transport.lease_s, transport.socket_timeout_s) == ("my.app-1", 12.5, 3.0)
    finally:
        transport.close()
    bad = [
        ("redis://127.0.0.1/9?nope=1", "allowed options: key_prefix, lease_s, socket_timeout_s"),
        ("redis://127.0.0.1/9?key_prefix=a{b}", "key_prefix"),
        ("redis://127.0.0.1/9?lease_s=0", "lease_s"),
        ("redis://127.0.0.1/x", "database number"),
        ("redis://127.0.0.1/9?db=2", "unknown option 'db'"),
        ("redis+unix://", "socket path"),
    ]
    for url, text in bad:
        with pytest.raises(TransportURLError) as info:
            RedisTransport(url)
        assert text in str(info.value)


def test_password_is_masked_in_repr_and_errors(server: Server) -> None:
    transport = RedisTransport(server.url("mask"))
    try:
        assert PASSWORD not in repr(transport) and "***" in repr(transport)
    finally:
        transport.close()
    port = free_port()
    with pytest.raises(TransportUnavailableError) as info:
        RedisTransport(f"redis://user:{PASSWORD}@127.0.0.1:{port}/0")
    message = str(info.value)
    assert message.startswith(f"cannot reach Redis at 127.0.0.1:{port}: ")
    assert "refused" in message.lower() and PASSWORD not in message
    with pytest.raises(Exception) as wrong:
        RedisTransport(f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0")
    assert PASSWORD not in str(wrong.value)


# -- the store as it lies on the server -----------------------------------------------------------


def test_raw_undecodable_entries_go_to_the_dead_letters(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    client = transport.client
    base = f"{{{shared_prefix}:raw}}:"
    try:
        client.lpush(base + "ready:0", b"this is not an entry")
        bad_id = "f" * 32
        client.set(base + "b:" + bad_id, b"\xff\xfe{not json")
        client.lpush(base + "ready:0", f"0:0:{int(time.time() * 1e6)}:{bad_id}")
        good = transport.submit_task("raw", {"good": True})
        task = transport.get_task("raw", timeout_s=2)
        assert task is not None and task.id == good
        transport.ack(task)
        dead = transport.dead_tasks("raw")
        assert len(dead) == 2
        assert all(d.reason.startswith("undecodable task body") and d.payload is None for d in dead)
        assert {d.body for d in dead} >= {"this is not an entry"}
        assert transport.stats("raw") == QueueStats(dead=2)
    finally:
        transport.close()


def test_every_key_of_a_queue_shares_one_cluster_slot(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        transport.submit_tasks("slots", [{"n": n} for n in range(5)], priority=3)
        transport.submit_task("slots", {"late": 1}, delay_s=60)
        first, second, third = transport.get_tasks("slots", 3)
        transport.nack(first, delay_s=30)
        transport.dead(second, "for a key")
        assert transport.get_task("slots", timeout_s=0.05) is not None  # wake and seq keys too
        assert transport.claim_once("slots-tick", 5)
        keys = [k.decode() for k in transport.client.scan_iter(match=f"*{shared_prefix}*", count=1000)]
        queue_keys = [k for k in keys if k.startswith(f"{{{shared_prefix}:slots}}:")]
        others = set(keys) - set(queue_keys)
        assert others == {f"{shared_prefix}:queues", f"{shared_prefix}:claim:slots-tick"}
        kinds = {k.split("}:", 1)[1].split(":")[0] for k in queue_keys}
        assert {"b", "ready", "delayed", "leased", "dead", "deadinfo", "seq"} <= kinds
        assert len({key_slot(k.encode()) for k in queue_keys}) == 1
        del third
    finally:
        transport.close()


# -- keyed state and cancel, as they lie on the server --------------------------------------------


def raw_keys(client: redis.Redis, base: str) -> dict[str, Any]:
    """Every key under ``base`` (a queue's ``{prefix:queue}:``), by name after the base, with its content."""
    readers: dict[str, Callable[[bytes], Any]] = {
        "string": client.get,
        "list": lambda key: client.lrange(key, 0, -1),
        "zset": lambda key: client.zrange(key, 0, -1),
        "hash": client.hgetall,
        "set": client.smembers,
    }
    found = {}
    for key in client.scan_iter(match=base + "*", count=1000):
        found[key.decode()[len(base) :]] = readers[client.type(key).decode()](key)
    return found


def test_a_record_leaves_no_key_on_the_server_once_its_ttl_ran_out(server: Server) -> None:
    transport = RedisTransport(server.url("ttl").replace("/0?", "/7?"))
    client = redis.Redis(port=server.port, password=PASSWORD, db=7)
    try:
        client.flushdb()
        expired_before = client.info("stats")["expired_keys"]
        transport.state_put("results", "r.1", '{"status":"done"}', 0.3)
        assert transport.state_add("results", "lock.1", "me", 0.3) is True
        names = {b"{ttl:results}:s:r.1", b"{ttl:results}:s:lock.1"}
        assert set(client.keys("*")) == names  # under the queue's hash tag, nothing else
        assert all(0 < client.pttl(name) <= 300 for name in names)
        assert transport.state_sweep() == 0  # the server expires them itself
        # Wait for the server's own expiry cycle: DBSIZE counts keys without touching (expiring) them.
        deadline = time.monotonic() + 5
        while client.dbsize() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.dbsize() == 0
        assert client.info("stats")["expired_keys"] - expired_before == 2
        assert transport.state_keys("results") == []
    finally:
        client.flushdb()
        client.close()
        transport.close()


def test_a_cancelled_task_leaves_no_more_trace_than_an_acked_one(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        acked_id = transport.submit_task("acked", {"n": 0}, priority=5)
        (acked,) = transport.get_tasks("acked", 10, timeout_s=2)
        transport.ack(acked)
        after_ack = raw_keys(transport.client, f"{{{shared_prefix}:acked}}:")

        first = transport.submit_tasks("gone", [{"n": 1}, {"n": 2}, {"n": 3}], priority=9)
        taken = transport.get_tasks("gone", 3, timeout_s=2)
        transport.nack(taken[0])  # back to ready, attempts 1
        transport.nack(taken[1], delay_s=60)  # back, delayed
        transport.nack(taken[2], delay_s=60, count_attempt=False)
        ids = [
            *first,
            transport.submit_task("gone", {"n": 4}),
            transport.submit_task("gone", {"n": 5}, priority=7),
            transport.submit_task("gone", {"n": 6}, delay_s=60),
            transport.submit_task("gone", {"n": 7}, delay_s=60, priority=3),
            *transport.submit_tasks("gone", [{"n": 8}, {"n": 9}], priority=2),
        ]
        before = transport.stats("gone")
        assert (before.ready, before.delayed, before.in_flight) == (5, 4, 0)
        assert [transport.cancel("gone", task_id) for task_id in ids] == [True] * 9
        assert transport.stats("gone") == QueueStats()
        after_cancel = raw_keys(transport.client, f"{{{shared_prefix}:gone}}:")
        assert set(after_cancel) <= set(after_ack) <= {"wake", "seq"}
        assert len(after_cancel.get("wake", [])) <= 1
        everything = repr(after_ack) + repr(after_cancel)
        assert not any(task_id in everything for task_id in [*ids, acked_id])
        assert transport.get_tasks("gone", 10, timeout_s=0.2) == []
        assert transport.cancel("gone", ids[0]) is False
    finally:
        transport.close()


def test_cancel_finds_a_task_anywhere_in_a_long_backlog(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        high = transport.submit_tasks("long", [{"n": n} for n in range(2500)], priority=3)
        low = transport.submit_tasks("long", [{"n": n} for n in range(1200)])
        doomed = [high[0], high[999], high[1000], high[1499], high[-1], low[0], low[600], low[-1]]
        assert all(transport.cancel("long", task_id) for task_id in doomed)
        assert not any(transport.cancel("long", task_id) for task_id in doomed)
        assert transport.cancel("long", "bad*[id]") is False  # no glob or pattern reaches the server
        assert transport.stats("long").ready == 3700 - len(doomed)
        drained = []
        while batch := transport.get_tasks("long", 1000, timeout_s=0.2):
            drained += batch
            transport.ack_tasks(batch)
        assert [t.id for t in drained] == [i for i in high + low if i not in doomed]
    finally:
        transport.close()


def test_cancel_takes_back_a_task_whose_lease_ran_out(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        task_id = transport.submit_task("lapsed", {"n": 1})
        (task,) = transport.get_tasks("lapsed", 1, timeout_s=2, lease_s=0.2)
        assert transport.cancel("lapsed", task_id) is False  # held
        time.sleep(0.4)
        assert transport.cancel("lapsed", task_id) is True  # waiting again, as a fetch would see it
        transport.ack(task)  # the lost delivery: a no-op
        assert transport.stats("lapsed") == QueueStats()
        assert transport.get_tasks("lapsed", 1, timeout_s=0.2) == []
    finally:
        transport.close()


def test_state_keys_escape_glob_characters_and_stay_in_their_queue(shared_prefix: str) -> None:
    transport = RedisTransport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        for key in ("a.1", "a.2", "ab", "b:1"):
            transport.state_put("one", key, key, 60)
        transport.state_put("one_more", "a.3", "x", 60)
        assert transport.state_keys("one", "a.") == ["a.1", "a.2"]
        assert transport.state_keys("one", "a") == ["a.1", "a.2", "ab"]
        assert transport.state_keys("one", "*") == []
        assert transport.state_keys("one", "[ab]") == []
        assert transport.state_keys("one", "?.1") == []
        assert transport.state_keys("one", "b:") == ["b:1"]
        assert transport.state_get_many("one", []) == []
        transport.client.set(f"{{{shared_prefix}:one}}:s:raw", b"\xff bytes")  # not UTF-8: replaced
        assert transport.state_get("one", "raw") == "\ufffd bytes"
    finally:
        transport.close()


def test_add_delete_and_cancel_reconnect_after_a_restart_before_sending(server: Server) -> None:
    """Calls whose reply would lie when sent twice are never sent again, but a connection the
    restart closed while idle is replaced before they are sent: no error."""
    transport = RedisTransport(server.url("again"))
    try:
        task_id = transport.submit_task("again", {"n": 1})
        assert transport.state_add("again", "k", "v", 60) is True
        server.stop()
        server.start()
        assert transport.state_add("again", "k", "w", 60) is False  # the AOF kept it
        assert transport.state_add("again", "k2", "w", 60) is True
        server.stop()
        server.start()
        assert transport.state_delete("again", "k") is True
        server.stop()
        server.start()
        assert transport.cancel("again", task_id) is True
        server.stop()
        with pytest.raises(TransportUnavailableError, match="cannot reach Redis"):
            transport.state_add("again", "k3", "v", 60)
        with pytest.raises(TransportUnavailableError, match="cannot reach Redis"):
            transport.cancel("again", task_id)
    finally:
        if server.process is None:
            server.start()
        transport.close()


def test_idle_wait_blocks_on_the_server_without_polling(server: Server) -> None:
    transport = RedisTransport(server.url("idle"))
    client = redis.Redis(port=server.port, password=PASSWORD)
    try:
        transport.get_task("idle")  # scripts loaded
        client.config_resetstat()
        started = time.monotonic()
        assert transport.get_task("idle", timeout_s=1.0) is None
        assert time.monotonic() - started >= 0.95
        stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] <= 3
        assert stats["cmdstat_blpop"]["calls"] <= 2
        client.script_flush()  # NOSCRIPT is handled: scripts are loaded again
        transport.submit_task("idle", {})
        task = transport.get_task("idle")
        assert task is not None
        transport.ack(task)
    finally:
        client.close()
        transport.close()


# -- failures: a restarted server, a killed consumer ----------------------------------------------

CONSUMER = """
import sys, time
from asynctask.errors import TransportUnavailableError
from asynctask.transports import get_transport
url, queue, expected, batch, lease = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
hold = len(sys.argv) > 6
transport = None
acked = set()
deadline = time.monotonic() + 50
while len(acked) < expected and time.monotonic() < deadline:
    try:
        if transport is None:
            transport = get_transport(url)
        tasks = transport.get_tasks(queue, batch, timeout_s=1.0, lease_s=lease)
        for task in tasks:
            print("got", task.id, task.attempts, flush=True)
        if hold and tasks:
            print("holding", flush=True)
            time.sleep(600)
        time.sleep(0.002 * len(tasks))  # "work", so that a restart lands mid-run
        transport.ack_tasks(tasks)
        for task in tasks:
            print("acked", task.id, flush=True)
            acked.add(task.id)
    except TransportUnavailableError as exc:
        print("unavailable", exc, flush=True)
        time.sleep(0.2)
print("done", len(acked), flush=True)
"""


def start_consumer(
    url: str, queue: str, expected: int, batch: int, *, lease_s: float, hold: bool = False
) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", CONSUMER, url, queue, str(expected), str(batch), str(lease_s)]
    if hold:
        args.append("hold")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_server_restart_mid_run_loses_nothing_and_brings_no_acked_task_back(server: Server) -> None:
    url = server.url("restart")
    producer = get_transport(url)
    ids = set(producer.submit_tasks("work", [{"n": n} for n in range(1500)]))
    consumer = start_consumer(url, "work", 2000, 20, lease_s=5.0)
    assert consumer.stdout is not None
    lines: list[str] = []
    try:
        for line in consumer.stdout:  # wait until the consumer is well under way
            lines.append(line.split())
            if sum(1 for parts in lines if parts[0] == "acked") >= 300:
                break
        server.stop()
        time.sleep(0.5)
        server.start()
        # the producer's connection broke with the restart: the next call reconnects by itself
        ids |= set(producer.submit_tasks("work", [{"n": n} for n in range(1500, 2000)]))
        out, _ = consumer.communicate(timeout=55)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        producer.close()
    lines += [line.split() for line in out.splitlines() if line]
    assert lines[-1][0] == "done", lines[-5:]
    acked = [parts[1] for parts in lines if parts[0] == "acked"]
    assert set(acked) == ids and len(ids) == 2000
    assert max(Counter(acked).values()) == 1  # none acked twice
    done: set[str] = set()
    for parts in lines:  # no task came back after its ack succeeded
        if parts[0] == "acked":
            done.add(parts[1])
        elif parts[0] == "got":
            assert parts[1] not in done
    outages = [" ".join(parts) for parts in lines if parts[0] == "unavailable"]
    assert outages, "the consumer never saw the server down"
    assert all(f"cannot reach Redis at 127.0.0.1:{server.port}: " in text for text in outages)
    assert all(PASSWORD not in text for text in outages)
    check = get_transport(url)
    try:
        assert check.stats("work") == QueueStats()
    finally:
        check.close()


def test_killed_consumer_holding_a_batch_gives_it_back_after_the_lease(shared_prefix: str) -> None:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}"
    transport = get_transport(url)
    try:
        ids = set(transport.submit_tasks("held", [{"n": n} for n in range(30)]))
        consumer = start_consumer(url, "held", 30, 20, lease_s=1.0, hold=True)
        assert consumer.stdout is not None
        held = []
        for line in consumer.stdout:
            if line.startswith("holding"):
                break
            held.append(line.split()[1])
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=10)
        assert len(held) == 20 and transport.stats("held").in_flight == 20
        seen = {}
        deadline = time.monotonic() + 10
        while len(seen) < 30 and time.monotonic() < deadline:
            for task in transport.get_tasks("held", 30, timeout_s=1.0):
                seen[task.id] = task.attempts
                transport.ack(task)
        assert set(seen) == ids
        assert sorted(seen[i] for i in held) == [2] * 20
        assert transport.stats("held") == QueueStats()
    finally:
        transport.close()


def test_a_waiting_fetch_sees_a_delayed_task_submitted_meanwhile(shared_prefix: str) -> None:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}"
    consumer, producer = get_transport(url), get_transport(url)
    try:
        timer = threading.Timer(0.2, producer.submit_task, args=("late", {"x": 1}), kwargs={"delay_s": 0.5})
        started = time.monotonic()
        timer.start()
        task = consumer.get_task("late", timeout_s=8)
        elapsed = time.monotonic() - started
        timer.join()
        assert task is not None and 0.6 <= elapsed < 3
        consumer.ack(task)
    finally:
        consumer.close()
        producer.close()


def test_big_batches_keep_their_order_across_script_calls(shared_prefix: str) -> None:
    transport = get_transport(f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={shared_prefix}")
    try:
        ids = transport.submit_tasks("big", [{"n": n} for n in range(2500)])
        tasks = []
        while len(tasks) < 2500:
            got = transport.get_tasks("big", 1000)
            assert got
            tasks += got
        assert [t.id for t in tasks] == ids and [t.payload["n"] for t in tasks] == list(range(2500))
        transport.ack_tasks(tasks)
        assert transport.stats("big") == QueueStats()
    finally:
        transport.close()


def test_rediss_with_a_ca_file(tmp_path: Path) -> None:
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("openssl or redis-server is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                transport = get_transport(url)
                break
            except TransportUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            task_id = transport.submit_task("tls", {"secure": True})
            task = transport.get_task("tls", timeout_s=2)
            assert task is not None and task.id == task_id
            transport.ack(task)
        finally:
            transport.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
