"""The PostgreSQL transport past one server (issue 16): URLs with every libpq keyword, host lists and
socket directories; through PgBouncer in transaction mode (the session's ``pgbouncer`` fixture) with
and without ``listen_url``: the LISTEN check and its one warning, polling, wake-up latency; the
topology ``asynctask doctor`` prints.  The contract suite through PgBouncer is
``harness_pgsql_pgbouncer.py``; the restart under running workers is in
``tests/acceptance/test_workers_pgbouncer.py``."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from clusters import PgBouncerInfo
from harness_pgsql import drop_schema
from support import PGSQL_HOST, PGSQL_PORT, require_service

from asynctask.errors import TransportURLError
from asynctask.message import Task
from asynctask.transports import pgsql
from asynctask.transports.pgsql import PgsqlTransport
from asynctask.transports.pgsql_url import LIBPQ_KEYWORDS, parse_pgsql_url

pytest_plugins = ["cluster_fixtures"]

DIRECT = f"postgresql://postgres@{PGSQL_HOST}:{PGSQL_PORT}/test"


@pytest.fixture
def schema() -> Iterator[str]:
    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    name = f"asynctask_test_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(name)


# -- URLs ---------------------------------------------------------------------------------------


def test_every_libpq_keyword_is_an_option_and_the_urls_own_still_work() -> None:
    dsn, options, _ = parse_pgsql_url(
        "postgresql://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=billing"
        "&target_session_attrs=read-write&keepalives_idle=30&connect_timeout=2.5&lease_s=9&schema=s1"
    )
    assert dsn == {
        "dbname": "d",
        "host": "h",
        "user": "u",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
        "application_name": "billing",
        "target_session_attrs": "read-write",
        "keepalives_idle": "30",
        "connect_timeout": 2,
    }
    assert options == {"connect_timeout": 2.5, "lease_s": 9.0, "schema": "s1"}
    assert {"sslmode", "sslrootcert", "target_session_attrs", "host", "load_balance_hosts"} <= LIBPQ_KEYWORDS


def test_an_unknown_option_is_refused_with_the_allowed_list() -> None:
    with pytest.raises(TransportURLError) as info:
        parse_pgsql_url("postgresql://h/d?sslmod=require")
    message = str(info.value)
    assert "'sslmod'" in message and "sslmode" in message and "target_session_attrs" in message
    assert "listen_url" in message and "\n" not in message


def test_host_lists_sockets_and_masked_passwords() -> None:
    dsn, _, where = parse_pgsql_url("postgresql://bob:pw@h1:5433,h2,[::1]:5434/jobs?target_session_attrs=read-write")
    assert (dsn["host"], dsn["port"], dsn["password"]) == ("h1,h2,::1", "5433,,5434", "pw")
    assert "h1:5433,h2:5432,::1:5434" in where and "pw" not in where
    assert parse_pgsql_url("postgresql://h1:6000,h2:6000/jobs")[0]["port"] == 6000
    assert parse_pgsql_url("postgresql://%2Fvar%2Frun%2Fpostgresql/jobs")[0]["host"] == "/var/run/postgresql"
    assert parse_pgsql_url("postgresql:///jobs?host=/tmp/sock&port=6432")[0] == {
        "dbname": "jobs",
        "host": "/tmp/sock",
        "port": "6432",
        "connect_timeout": 5,
    }
    where = parse_pgsql_url("pgsql://h/d?password=s3cret&listen_url=pgsql%3A%2F%2Fu%3Apw2%40h%2Fd")[2]
    assert "s3cret" not in where and "pw2" not in where
    with pytest.raises(TransportURLError, match="port"):
        parse_pgsql_url("postgresql://h1:99999,h2/jobs")
    with pytest.raises(TransportURLError, match="listen_url"):
        parse_pgsql_url("postgresql://h/d?listen_url=redis://x")


def test_a_host_list_skips_a_dead_host_and_a_socket_directory_works(schema: str, pgbouncer: PgBouncerInfo) -> None:
    url = f"postgresql://postgres@127.0.0.1:1,{PGSQL_HOST}:{PGSQL_PORT}/test?target_session_attrs=read-write"
    with PgsqlTransport(f"{url}&schema={schema}") as transport:
        transport.submit_task("q_hosts", {"n": 1})
        topology = transport.topology()
        assert topology["connected_to"] == f"{PGSQL_HOST}:{PGSQL_PORT}" and topology["role"] == "primary"
    socket_url = f"postgresql://postgres@/test?host={pgbouncer.socket_dir}&port={pgbouncer.port}&schema={schema}"
    with PgsqlTransport(socket_url) as transport:
        task = transport.get_task("q_hosts")
        assert task is not None and task.payload == {"n": 1}
        transport.ack(task)
        assert transport.topology()["connected_to"] == f"{pgbouncer.socket_dir}:{pgbouncer.port}"


# -- through PgBouncer ------------------------------------------------------------------------


def test_many_clients_share_the_pool_without_session_state(schema: str, pgbouncer: PgBouncerInfo) -> None:
    """12 processes' worth of connections (here threads, each with a transport of its own schema
    option spelling, so each has its own connection) through a pool of 4: no statement depends on
    the server connection it lands on."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with PgsqlTransport(f"{pgbouncer.url}?schema={schema}&connect_timeout={n + 1}") as transport:
                for _ in range(20):
                    transport.submit_task("q_pool", {"n": n})
                    transport.stats("q_pool")
                    if task := transport.get_task("q_pool"):
                        transport.ack(task)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


def _wake_after_submit(transport: PgsqlTransport, producer: PgsqlTransport, queue: str) -> float:
    """Seconds from a submit to the return of a get_task that was already waiting for it."""
    got: list[tuple[float, Task | None]] = []
    waiter = threading.Thread(target=lambda: got.append((0.0, transport.get_task(queue, timeout_s=5))))
    waiter.start()
    time.sleep(0.3)  # blocked in get_task by now
    submitted = time.monotonic()
    producer.submit_task(queue, {"at": submitted})
    waiter.join(10)
    woke = time.monotonic()
    task = got[0][1]
    assert task is not None
    transport.ack(task)
    return woke - submitted


def test_without_listen_url_one_warning_and_polling_wakes_within_0_2_s(
    schema: str, pgbouncer: PgBouncerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{pgbouncer.url}?schema={schema}&application_name=nolisten"
    pgsql._warned.clear()
    caplog.set_level(logging.WARNING, logger="asynctask.transports.pgsql")
    with PgsqlTransport(url) as consumer, PgsqlTransport(url) as other, PgsqlTransport(url) as producer:
        assert consumer.get_task("q_poll", timeout_s=0.7) is None  # the check, then polling
        assert other.get_task("q_poll", timeout_s=0.7) is None  # another instance: no second warning
        waits = [_wake_after_submit(consumer, producer, "q_poll") for _ in range(3)]
        assert consumer.topology()["listen"]["notify_reaches_listener"] is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "listen_url" in warnings[0] and "did not reach" in warnings[0]
    assert max(waits) < 0.2, waits


def test_with_listen_url_a_waiting_consumer_wakes_at_once(
    schema: str, pgbouncer: PgBouncerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{pgbouncer.url}?schema={schema}&listen_url={quote(DIRECT, safe='')}"
    caplog.set_level(logging.WARNING, logger="asynctask.transports.pgsql")
    with PgsqlTransport(url) as consumer, PgsqlTransport(url) as producer:
        waits = [_wake_after_submit(consumer, producer, "q_listen") for _ in range(5)]
        topology = consumer.topology()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert topology["listen"] == {"via": "listen_url", "notify_reaches_listener": True, "waiting": "woken by NOTIFY"}
    assert statistics.median(waits) < 0.05, waits  # the notification, not the 2 s safety poll


LATENCY_CONSUMER = """
    import json, sys, time
    from asynctask.transports import get_transport
    transport = get_transport(sys.argv[1])
    transport.get_task("q_lat", timeout_s=0.1)  # LISTEN checked and registered before the first sample
    print("ready", flush=True)
    for _ in range(int(sys.argv[2])):
        task = transport.get_task("q_lat", timeout_s=10)
        print(time.time() - task.payload["t"], flush=True)
        transport.ack(task)
"""


def test_submit_to_start_latency_through_pgbouncer_with_listen_url(schema: str, pgbouncer: PgBouncerInfo) -> None:
    """The consumer is another process, as a worker is; p50 is printed (issue 16 wants < 5 ms: the
    bound asserted is looser, the machine being shared while the suite runs)."""
    url = f"{pgbouncer.url}?schema={schema}&listen_url={quote(DIRECT, safe='')}"
    samples = 40
    consumer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LATENCY_CONSUMER), url, str(samples)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == "ready"
        with PgsqlTransport(url) as producer:
            for _ in range(samples):
                time.sleep(0.03)
                producer.submit_task("q_lat", {"t": time.time()})
        out, _ = consumer.communicate(timeout=30)
    finally:
        consumer.kill()
    latencies = sorted(float(line) for line in out.split())
    assert len(latencies) == samples
    p50 = statistics.median(latencies)
    print(
        f"submit-to-start through PgBouncer with listen_url: p50 {p50 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert p50 < 0.015, latencies


def test_topology_names_the_server_and_detects_pgbouncer(schema: str, pgbouncer: PgBouncerInfo) -> None:
    with PgsqlTransport(f"{DIRECT}?schema={schema}") as direct:
        seen = direct.topology()
    assert seen["server"] == f"{PGSQL_HOST}:{PGSQL_PORT}" and seen["connected_to"] == f"{PGSQL_HOST}:{PGSQL_PORT}"
    assert seen["pooler"] is None and seen["listen"]["notify_reaches_listener"] is True
    with PgsqlTransport(f"{pgbouncer.url}?schema={schema}&listen_url={quote(DIRECT, safe='')}") as pooled:
        seen = pooled.topology()
    assert seen["server"] == f"{PGSQL_HOST}:{PGSQL_PORT}" and seen["connected_to"] == f"{PGSQL_HOST}:{pgbouncer.port}"
    assert str(seen["pooler"]).startswith("PgBouncer 1.") and seen["role"] == "primary"
    assert seen["listen"]["via"] == "listen_url" and seen["listen"]["notify_reaches_listener"] is True


def test_doctor_prints_pgbouncer_detected(
    schema: str,
    pgbouncer: PgBouncerInfo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from asynctask.cli.admin import main

    monkeypatch.chdir(tmp_path)  # no asynctask.yaml there
    url = f"{pgbouncer.url}?schema={schema}&listen_url={quote(DIRECT, safe='')}"
    assert main(["doctor", "--transport", url, "--json"]) in (0, 1)
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    topology = json.loads(checks["topology"]["detail"])
    assert topology["pooler"].startswith("PgBouncer") and topology["listen"]["notify_reaches_listener"] is True
