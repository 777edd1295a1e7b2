# ruff: noqa: E402  (the imports below need psycopg2: importorskip comes first)
"""PostgreSQL restarts while consumers drain: nothing lost, nothing acked twice, consumers reconnect.

This restarts the SHARED server on 127.0.0.1:5432 (``pg_ctlcluster --skip-systemctl-redirect <version>
main restart``), so it is short, and it waits until the server answers again before it ends, whatever
happens.  Other tests running at that moment see a second or two of connection errors; run this file
last (or alone).  Skipped when pg_ctlcluster or the cluster is not on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg2 = pytest.importorskip("psycopg2")

from server_restarts import pgsql_sql, restart_pgsql, wait_for_pgsql
from support import PGSQL_HOST, PGSQL_PORT, require_service

from asynctask.transports.pgsql import PgsqlTransport

BASE = "postgresql://postgres@127.0.0.1:5432/test"

CONSUMER = """
    import logging, os, sys, time
    from asynctask.errors import TransportError
    from asynctask.transports import get_transport
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    url, stop_file = sys.argv[1], sys.argv[2]
    transport = get_transport(url)
    pending = []  # processed, ack not yet confirmed: retried until it is
    errors = 0
    while not os.path.exists(stop_file) or pending:
        try:
            if pending:
                transport.ack_tasks(pending)
                sys.stdout.write("".join(t.id + "\\n" for t in pending))
                sys.stdout.flush()
                pending = []
            tasks = transport.get_tasks("q_restart", 20, timeout_s=0.3, lease_s=15)
            for task in tasks:
                time.sleep(0.002)  # "work"
            pending = tasks
        except TransportError as exc:
            errors += 1
            print("consumer error:", type(exc).__name__, exc, file=sys.stderr, flush=True)
            time.sleep(0.05)
    transport.close()
    print(f"errors={errors}", file=sys.stderr)
"""


IDLE_CONSUMER = """
    import sys, time
    from asynctask.errors import TransportError
    from asynctask.transports import get_transport
    transport = get_transport(sys.argv[1])
    print("waiting", flush=True)
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up:
        try:
            task = transport.get_task("q_idle", timeout_s=1)
        except TransportError as exc:
            print("idle consumer error:", exc, file=sys.stderr, flush=True)
            continue
        if task is not None:
            transport.ack(task)
            print(task.id, flush=True)
            break
"""


@pytest.fixture
def schema() -> Iterator[str]:
    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    name = f"asynctask_test_{uuid.uuid4().hex[:12]}"
    yield name
    wait_for_pgsql()
    pgsql_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.mark.slow
def test_server_restart_mid_drain(schema: str, tmp_path: Path) -> None:
    url = f"{BASE}?schema={schema}"
    total = 3000
    with PgsqlTransport(url) as producer:
        ids = []
        for start in range(0, total, 1000):
            ids += producer.submit_tasks("q_restart", [{"n": n} for n in range(start, start + 1000)])
    stop_file = tmp_path / "stop"
    code = textwrap.dedent(CONSUMER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(stop_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    idle = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(IDLE_CONSUMER), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(idle)  # blocked on an empty queue through the restart
    try:
        assert idle.stdout is not None and idle.stdout.readline() == "waiting\n"
        time.sleep(1.0)  # draining has begun
        restart_pgsql()
        restarted_at = time.monotonic()
        with PgsqlTransport(url) as watcher:  # wait until every task is acked (lost fetches: after their lease)
            while True:
                stats = watcher.stats("q_restart")
                if stats.ready + stats.in_flight + stats.delayed == 0:
                    break
                assert time.monotonic() - restarted_at < 60, f"not drained: {stats}"
                time.sleep(0.2)
            assert stats.dead == 0
            idle_id = watcher.submit_task("q_idle")
            assert idle.stdout.readline().strip() == idle_id  # woke up after reconnecting by itself
    finally:
        stop_file.touch()
        outputs = []
        for proc in procs:
            try:
                outputs.append(proc.communicate(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                outputs.append(proc.communicate())
        wait_for_pgsql()
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-3000:] for _, err in outputs]
    acked = Counter(line for out, _ in outputs[:2] for line in out.split())
    assert set(acked) == set(ids), f"{len(set(ids) - set(acked))} tasks never acked"
    assert max(acked.values()) == 1, [i for i, n in acked.items() if n > 1][:5]
    errors = "".join(err for _, err in outputs)
    assert "lost the connection" in errors and "reconnected" in errors, errors[-3000:]
    for _, err in outputs:  # logged once per loss, not once per retry
        assert err.count("lost the connection") <= 2, err[-3000:]
