# ruff: noqa: E402  (the imports below need psycopg2: importorskip comes first)
"""PostgreSQL transport extras beyond the contract suite: URLs, errors, schema, faults, scale, wake-up.

Needs the server at 127.0.0.1:5432 (trust auth, user postgres, database test); each test uses a schema
of its own, dropped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg2 = pytest.importorskip("psycopg2")

from support import PGSQL_HOST, PGSQL_PORT, require_service

from asynctask.errors import TransportError, TransportUnavailableError, TransportURLError
from asynctask.message import encode_body
from asynctask.transports import get_transport, pgsql, pgsql_connection, pgsql_state
from asynctask.transports.pgsql import SCHEMA_VERSION, PgsqlTransport, parse_pgsql_url

BASE = "postgresql://postgres@127.0.0.1:5432/test"
HERE = Path(__file__).parent
ALL_VERSIONS = [(version,) for version in range(1, SCHEMA_VERSION + 1)]


def sql(statement: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement on a connection of its own; return its rows (if any)."""
    conn = psycopg2.connect(host=PGSQL_HOST, port=PGSQL_PORT, user="postgres", dbname="test", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def schema() -> Iterator[str]:
    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    name = f"asynctask_test_{uuid.uuid4().hex[:12]}"
    yield name
    sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def url(schema: str) -> str:
    return f"{BASE}?schema={schema}"


@pytest.fixture
def transport(url: str) -> Iterator[PgsqlTransport]:
    with PgsqlTransport(url) as made:
        yield made


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- URLs and options ---------------------------------------------------------------------------


def test_url_forms_parse_to_connection_keywords() -> None:
    dsn, options, where = parse_pgsql_url("pgsql://alice:s3cret@db.example:6543/jobs?schema=q1&lease_s=12")
    assert dsn == {
        "dbname": "jobs",
        "host": "db.example",
        "port": 6543,
        "user": "alice",
        "password": "s3cret",
        "connect_timeout": 5,
    }
    assert options == {"schema": "q1", "lease_s": 12.0}
    assert "db.example:6543" in where and "'jobs'" in where and "s3cret" not in where and "***" in where
    assert parse_pgsql_url("pgsql:jobs")[0] == {"dbname": "jobs", "connect_timeout": 5}
    for scheme in ("postgresql", "postgres"):
        assert parse_pgsql_url(f"{scheme}://h/d")[0] == {"dbname": "d", "host": "h", "connect_timeout": 5}
    assert parse_pgsql_url("pgsql://h/d?sslmode=require&connect_timeout=2")[0]["sslmode"] == "require"


@pytest.mark.parametrize(
    "bad",
    [
        "pgsql://h/d?schema=Bad-Name",
        "pgsql://h/d?schema=" + "x" * 41,
        "pgsql://h/d?lease_s=0",
        "pgsql://h/d?colour=red",
        "pgsql://h/",
        "pgsql:",
    ],
)
def test_bad_urls_are_rejected(bad: str) -> None:
    with pytest.raises(TransportURLError):
        PgsqlTransport(bad)


@pytest.mark.parametrize("scheme", ["pgsql", "postgresql", "postgres"])
def test_every_scheme_reaches_the_server(scheme: str, schema: str) -> None:
    with get_transport(f"{scheme}://postgres@127.0.0.1:5432/test?schema={schema}&lease_s=7") as transport:
        assert isinstance(transport, PgsqlTransport)
        assert transport.lease_s == 7.0 and transport.schema == schema
        task_id = transport.submit_task("q_url", {"a": 1})
        task = transport.get_task("q_url")
        assert task is not None and task.id == task_id
        transport.ack(task)


def test_pgsql_dbname_form_uses_libpq_environment(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", PGSQL_HOST)
    monkeypatch.setenv("PGPORT", str(PGSQL_PORT))
    monkeypatch.setenv("PGUSER", "postgres")
    with get_transport(f"pgsql:test?schema={schema}") as transport:
        transport.submit_task("q_env")
        assert transport.stats("q_env").ready == 1
        assert f"{PGSQL_HOST}:{PGSQL_PORT}" in transport.where


def test_lease_s_option_is_the_default_lease(schema: str) -> None:
    with PgsqlTransport(f"{BASE}?schema={schema}&lease_s=0.3") as transport:
        transport.submit_task("q_lease")
        first = transport.get_task("q_lease")
        assert first is not None and transport.get_task("q_lease") is None
        again = transport.get_task("q_lease", timeout_s=3)
        assert again is not None and again.id == first.id and again.attempts == 2


def test_default_schema_is_asynctask() -> None:
    assert PgsqlTransport(BASE).schema == "asynctask"


# -- errors -------------------------------------------------------------------------------------


def test_password_is_masked_in_repr_and_errors() -> None:
    transport = PgsqlTransport("pgsql://bob:hunter2@127.0.0.1:1/nowhere?connect_timeout=2")
    assert "hunter2" not in repr(transport) and "***" in repr(transport)
    with pytest.raises(TransportUnavailableError) as info:
        transport.submit_task("q_err")
    assert "hunter2" not in str(info.value)


def test_unreachable_server_is_one_line_naming_host_port_database() -> None:
    transport = PgsqlTransport("pgsql://postgres:pw@127.0.0.1:1/somedb?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError) as info:
        transport.get_task("q_err")
    message = str(info.value)
    assert "\n" not in message and "127.0.0.1:1" in message and "somedb" in message and "pw@" not in message
    assert time.monotonic() - started < 10
    with pytest.raises(TransportUnavailableError):  # still unavailable, after a short backoff
        transport.stats("q_err")


def test_missing_database_is_one_line_naming_it() -> None:
    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    transport = PgsqlTransport(f"postgresql://postgres@{PGSQL_HOST}:{PGSQL_PORT}/asynctask_no_such_db")
    with pytest.raises(TransportUnavailableError) as info:
        transport.submit_task("q_err")
    message = str(info.value)
    assert "\n" not in message and f"{PGSQL_HOST}:{PGSQL_PORT}" in message
    assert "asynctask_no_such_db" in message and "does not exist" in message


def test_a_killed_connection_is_reopened_transparently(transport: PgsqlTransport) -> None:
    transport.submit_task("q_kill")
    conn = transport._link.conn
    assert conn is not None
    pid = conn.get_backend_pid()
    sql("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)
    assert transport.stats("q_kill").ready == 1  # reconnected and retried once
    assert transport._link.conn is not None and transport._link.conn.get_backend_pid() != pid


def test_instances_of_one_process_share_one_connection(url: str) -> None:
    first, second = PgsqlTransport(url), PgsqlTransport(url)
    first.submit_task("q_share")
    assert second.stats("q_share").ready == 1
    assert first._link is second._link and first._link.conn is not None
    first.close()
    assert second._link.conn is not None and not second._link.conn.closed  # still used by second
    assert second.get_task("q_share") is not None
    second.close()
    assert second._link.conn is None
    assert first.stats("q_share").in_flight == 1  # a closed instance reconnects when used again
    first.close()


# -- schema -------------------------------------------------------------------------------------


def tables_of(schema: str) -> set[str]:
    return {str(row[0]) for row in sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


def counts(transport: PgsqlTransport, queue: str) -> tuple[int, int, int, int]:
    """Ready, delayed, in flight, dead."""
    stats = transport.stats(queue)
    return stats.ready, stats.delayed, stats.in_flight, stats.dead


def versions_of(schema: str) -> list[tuple[object, ...]]:
    return sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')


def test_schema_version_rows_and_tables(transport: PgsqlTransport, schema: str) -> None:
    transport.queues()
    assert versions_of(schema) == ALL_VERSIONS  # a row per version applied, in order
    assert tables_of(schema) == {"schema_version", "queues", "tasks", "dead", "waiters", "claims", "state"}
    indexes = {row[0] for row in sql("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))}
    assert {"tasks_fetch_order", "dead_queue_order", "state_expiry", "tasks_id"} <= indexes


#: dead() as releases of schema versions 1 and 2 ran it (this release's bury names columns of version 3)
OLD_BURY = """
    WITH d AS (
        DELETE FROM @schema@.tasks WHERE rowid = %s AND receipt = %s RETURNING id, queue, priority, attempts, body
    )
    INSERT INTO @schema@.dead (id, queue, priority, attempts, reason, body)
    SELECT id, queue, priority, attempts, %s, body FROM d
    ON CONFLICT (id) DO UPDATE SET
        queue = excluded.queue, priority = excluded.priority, attempts = excluded.attempts,
        reason = excluded.reason, body = excluded.body, dead_at = excluded.dead_at
"""


def old_schema(url: str, version: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create the schema at ``version`` as that release did (the same files up to it); its name."""
    monkeypatch.setattr(pgsql_connection, "SCHEMA_VERSION", version)
    with PgsqlTransport(url) as old:
        old.queues()
        schema = old.schema
    monkeypatch.setattr(pgsql_connection, "SCHEMA_VERSION", SCHEMA_VERSION)
    return schema


def old_task(
    schema: str, queue: str, payload: dict[str, object], *, priority: int = 0, delay_s: float = 0, leased: bool = False
) -> tuple[str, str]:
    """A task stored as releases before schema version 4 stored one (plain SQL: their statements were
    PREPAREd, not the functions of version 4): its id and, when ``leased``, its receipt."""
    task_id, token = uuid.uuid4().hex, 4242
    sql(f'INSERT INTO "{schema}".queues (name) VALUES (%s) ON CONFLICT DO NOTHING', (queue,))
    ((rowid,),) = sql(
        f'INSERT INTO "{schema}".tasks (id, queue, priority, visible_at, body, receipt, attempts)'
        " VALUES (%s, %s, %s, now() + %s * interval '1 second', %s, %s, %s) RETURNING rowid",
        (
            task_id,
            queue,
            priority,
            60 if leased else delay_s,
            encode_body(payload),
            token if leased else None,
            int(leased),
        ),
    )
    return task_id, f"{rowid}.{token}" if leased else ""


def make_version_1(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The schema as a release of version 1 made it (its pgsql_schema_1.sql is this one, its dead()
    OLD_BURY), holding a task of each kind: name -> task id."""
    schema = old_schema(url, 1, monkeypatch)
    ids = {}
    ids["leased"], ids["leased_receipt"] = old_task(schema, "q_mig", {"n": "leased"}, priority=5, leased=True)
    ids["dead"], receipt = old_task(schema, "q_mig", {"n": "dead"}, priority=4, leased=True)
    rowid, token = map(int, receipt.split("."))
    sql(OLD_BURY.replace("@schema@", f'"{schema}"'), (rowid, token, "for the test"))
    ids["ready"] = old_task(schema, "q_mig", {"n": "ready"})[0]
    ids["delayed"] = old_task(schema, "q_mig", {"n": "delayed"}, delay_s=60)[0]
    return ids


def test_a_version_1_schema_migrates_and_keeps_its_tasks(
    url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = make_version_1(url, monkeypatch)
    assert versions_of(schema) == [(1,)] and "state" not in tables_of(schema)
    with PgsqlTransport(url) as new:
        assert counts(new, "q_mig") == (1, 1, 1, 1)  # connecting migrated the schema
        assert versions_of(schema) == ALL_VERSIONS and "state" in tables_of(schema)
        new.state_put("q_mig", "r.1", "one", 60)
        assert new.state_add("q_mig", "r.1", "two", 60) is False
        assert new.state_get_many("q_mig", ["r.1", "r.2"]) == ["one", None]
        assert new.cancel("q_mig", ids["leased"]) is False
        assert new.cancel("q_mig", ids["delayed"]) is True
        (ready,) = new.get_tasks("q_mig", 10)
        assert (ready.id, ready.payload) == (ids["ready"], {"n": "ready"})
        new.ack_tasks([ready])
        leased = type(ready)(ids["leased"], "q_mig", {}, receipt=ids["leased_receipt"])
        new.ack(leased)  # a delivery made before the migration is acked after it
        assert new.replay_dead("q_mig") == 1
        (dead,) = new.get_tasks("q_mig", 10)
        assert (dead.id, dead.payload) == (ids["dead"], {"n": "dead"})
        new.ack(dead)
        assert counts(new, "q_mig") == (0, 0, 0, 0)


def test_a_newer_schema_version_is_refused(transport: PgsqlTransport, schema: str) -> None:
    transport.queues()
    sql(f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', (SCHEMA_VERSION + 1,))
    transport.close()  # the next instance opens a new connection, which checks the version
    with PgsqlTransport(transport.url) as other, pytest.raises(TransportError, match="newer"):
        other.queues()


RACER = """
    import sys, time
    from asynctask.transports import get_transport
    transport = get_transport(sys.argv[1])
    time.sleep(max(float(sys.argv[2]) - time.time(), 0))
    transport.submit_task("q_race")
    print(transport.state_add("q_race", "winner", "me", 60))
"""


@pytest.mark.parametrize("start", ["empty", "version 1"])
def test_schema_creation_and_migration_race_between_processes(
    url: str, schema: str, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = 0
    if start == "version 1":
        make_version_1(url, monkeypatch)
        before = 3  # leased, ready, delayed
    start_at = time.time() + 1.5
    procs = [run_python(RACER, url, str(start_at)) for _ in range(6)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, [err for _, err in outputs]
    assert versions_of(schema) == ALL_VERSIONS
    assert sql(f'SELECT count(*) FROM "{schema}".tasks') == [(6 + before,)]
    assert sorted(out.strip() for out, _ in outputs) == ["False"] * 5 + ["True"]  # state_add: one winner


# -- keyed state and cancel ---------------------------------------------------------------------


def test_expired_records_leave_no_row_after_a_sweep(
    transport: PgsqlTransport, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgsql_state, "SWEEP_BATCH", 2)  # several statements per sweep
    for key in ("r.1", "r.2", "r.3"):
        transport.state_put("q_sweep", key, "short", 0.3)
    transport.state_put("q_other", "r.1", "short", 0.3)
    assert transport.state_add("q_sweep", "claim", "short", 0.3) is True
    transport.state_put("q_sweep", "long", "kept", 60)
    assert transport.state_sweep() == 0  # nothing expired yet
    time.sleep(0.6)
    assert sql(f'SELECT count(*) FROM "{schema}".state') == [(6,)]  # expired, not yet removed
    assert transport.state_sweep() == 5
    assert sql(f'SELECT queue, key, value FROM "{schema}".state') == [("q_sweep", "long", "kept")]
    assert transport.state_sweep() == 0
    transport.state_put("q_sweep", "gone", "v", 0.2)
    time.sleep(0.4)
    assert transport.state_delete("q_sweep", "gone") is False  # expired: not live, but removed all the same
    assert sql(f'SELECT key FROM "{schema}".state') == [("long",)]


def test_state_keys_prefix_is_literal_and_values_are_exact(transport: PgsqlTransport) -> None:
    for key in ("a_b", "axb", "a", "a_bz", "a-", "b"):
        transport.state_put("q_keys", key, key, 60)
    assert transport.state_keys("q_keys", "a_") == ["a_b", "a_bz"]  # "_" is no wildcard
    assert transport.state_keys("q_keys", "a%") == [] and transport.state_keys("q_keys", "z") == []
    assert transport.state_keys("q_keys", "a") == ["a", "a-", "a_b", "a_bz", "axb"]
    assert transport.state_keys("q_keys", "\x00") == []
    value = "quote ' backslash \\ percent %s %(x)s tab\t \u2603"
    transport.state_put("q_keys", "v", value, 1e15)  # a TTL beyond timestamptz: kept (cut to MAX_TTL_S)
    assert transport.state_get("q_keys", "v") == value
    with pytest.raises(ValueError, match="NUL"):
        transport.state_put("q_keys", "v", "a\x00b", 60)
    assert transport.state_get("q_keys", "v") == value


def test_a_cancelled_task_leaves_no_row(transport: PgsqlTransport, schema: str) -> None:
    ready = transport.submit_task("q_cancel", {"n": "ready"})
    delayed = transport.submit_task("q_cancel", {"n": "delayed"}, delay_s=60)
    leased_id = transport.submit_task("q_cancel", {"n": "leased"}, priority=9)
    lapsed_id = transport.submit_task("q_cancel", {"n": "lapsed"}, priority=8)
    leased = transport.get_task("q_cancel", lease_s=60)
    lapsed = transport.get_task("q_cancel", lease_s=0.2)
    assert leased is not None and lapsed is not None and (leased.id, lapsed.id) == (leased_id, lapsed_id)
    time.sleep(0.4)
    assert counts(transport, "q_cancel") == (2, 1, 1, 0)  # the lapsed lease counts as ready again

    assert transport.cancel("q_cancel", leased_id) is False
    assert transport.cancel("other_queue", ready) is False  # the queue must match
    assert transport.cancel("q_cancel", "not-a-task-id") is False
    for task_id in (ready, delayed, lapsed_id):  # ready, delayed, and ready again after its lease ran out
        assert transport.cancel("q_cancel", task_id) is True
        assert transport.cancel("q_cancel", task_id) is False

    rows = sql(f"SELECT translate(id::text, '-', '') FROM \"{schema}\".tasks")
    assert rows == [(leased_id,)]
    assert counts(transport, "q_cancel") == (0, 0, 1, 0)
    transport.ack(lapsed)  # the lapsed delivery: a no-op
    transport.ack(leased)
    assert sql(f'SELECT count(*) FROM "{schema}".tasks') == [(0,)]
    assert transport.cancel("q_cancel", leased_id) is False  # done


# -- bad data -----------------------------------------------------------------------------------


def test_undecodable_rows_injected_in_the_table_go_to_dead_letters(transport: PgsqlTransport, schema: str) -> None:
    transport.submit_task("q_bad", {"n": 1})
    for body in ("not json at all", "[1, 2, 3]", '"a string"'):
        sql(f'INSERT INTO "{schema}".tasks (id, queue, body) VALUES (%s, %s, %s)', (uuid.uuid4().hex, "q_bad", body))
    transport.submit_task("q_bad", {"n": 2})
    tasks = transport.get_tasks("q_bad", 2)
    assert [t.payload for t in tasks] == [{"n": 1}, {"n": 2}]
    dead = transport.dead_tasks("q_bad")
    assert sorted(d.body for d in dead) == sorted(["not json at all", "[1, 2, 3]", '"a string"'])
    assert all(d.reason.startswith("undecodable task body") and d.attempts == 1 for d in dead)
    assert transport.stats("q_bad").dead == 3


def test_receipts_that_are_not_ours_are_ignored(transport: PgsqlTransport) -> None:
    transport.submit_task("q_rcpt")
    task = transport.get_task("q_rcpt")
    assert task is not None
    for receipt in ("", "junk", "1.2.3", f"{task.receipt}0"):
        forged = type(task)(task.id, task.queue, task.payload, task.attempts, task.enqueued_at, task.priority, receipt)
        transport.ack(forged)
        transport.nack(forged)
        assert transport.extend(forged, 5) is False
    assert transport.stats("q_rcpt").in_flight == 1
    assert transport.replay_dead("q_rcpt", ["not-an-id"]) == 0


# -- faults and scale ---------------------------------------------------------------------------


CONSUMER_HOLDING_A_BATCH = """
    import sys, time
    from asynctask.transports import get_transport
    transport = get_transport(sys.argv[1])
    tasks = transport.get_tasks("q_kill9", 10, lease_s=float(sys.argv[2]))
    print(" ".join(t.id for t in tasks), flush=True)
    time.sleep(60)
"""


def test_kill_9_of_a_consumer_holding_a_batch(transport: PgsqlTransport, url: str) -> None:
    ids = transport.submit_tasks("q_kill9", [{"n": n} for n in range(15)])
    proc = run_python(CONSUMER_HOLDING_A_BATCH, url, "1.5")
    try:
        assert proc.stdout is not None
        held = proc.stdout.readline().split()
        assert held == ids[:10]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert transport.stats("q_kill9").in_flight == 10
    rest = transport.get_tasks("q_kill9", 100)
    assert [t.id for t in rest] == ids[10:]
    back = transport.get_tasks("q_kill9", 100, timeout_s=5)
    assert sorted(t.id for t in back) == sorted(ids[:10]) and {t.attempts for t in back} == {2}
    transport.ack_tasks(rest + back)
    assert transport.stats("q_kill9") == type(transport.stats("q_kill9"))()


CONSUMER = """
    import sys, time
    from asynctask.transports import get_transport
    with get_transport(sys.argv[1]) as transport:
        time.sleep(max(float(sys.argv[2]) - time.time(), 0))
        idle = 0
        while idle < 2:
            tasks = transport.get_tasks("q_many", 100, timeout_s=0.5)
            if not tasks:
                idle += 1
                continue
            idle = 0
            transport.ack_tasks(tasks)
            sys.stdout.write("".join(t.id + "\\n" for t in tasks))
        sys.stdout.flush()
"""


@pytest.mark.slow
def test_four_consumer_processes_on_20000_tasks_each_acked_exactly_once(transport: PgsqlTransport, url: str) -> None:
    ids: list[str] = []
    for start in range(0, 20_000, 1000):
        ids += transport.submit_tasks("q_many", [{"n": n} for n in range(start, start + 1000)])
    start_at = time.time() + 1.0
    procs = [run_python(CONSUMER, url, str(start_at)) for _ in range(4)]
    outputs = [proc.communicate(timeout=150) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    acked = Counter(line for out, _ in outputs for line in out.split())
    assert len(acked) == 20_000 and set(acked) == set(ids)
    assert max(acked.values()) == 1
    assert all(out.count("\n") > 0 for out, _ in outputs), "every consumer took a share"
    assert transport.stats("q_many") == type(transport.stats("q_many"))()


# -- waiting ------------------------------------------------------------------------------------


def test_notify_wakes_a_blocked_get_task_quickly(transport: PgsqlTransport, url: str) -> None:
    latencies = []
    with PgsqlTransport(url) as producer:
        for _ in range(15):
            got: list[float] = []

            def consume(got: list[float] = got) -> None:
                task = transport.get_task("q_wake", timeout_s=10)
                got.append(time.perf_counter())
                assert task is not None
                transport.ack(task)

            thread = threading.Thread(target=consume)
            thread.start()
            time.sleep(0.1)  # the consumer is blocked (registered as a waiter, listening)
            submitted = time.perf_counter()
            producer.submit_task("q_wake", {"at": submitted})
            thread.join(timeout=10)
            assert got, "the blocked get_task did not return"
            latencies.append(got[0] - submitted)
    median = statistics.median(latencies)
    print(f"submit-to-get latency: median {median * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms")
    assert median < 0.1  # the safety poll is 2 s: only a notification explains this


def test_blocked_get_task_wakes_at_the_delayed_due_time(
    transport: PgsqlTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No safety poll and a long timeout: only waking at the due time returns the task in time.
    monkeypatch.setattr(pgsql, "SAFETY_POLL_S", 600.0)
    transport.submit_task("q_due", delay_s=0.6)
    started = time.monotonic()
    task = transport.get_task("q_due", timeout_s=60)
    assert task is not None and 0.5 <= time.monotonic() - started < 30


def test_producers_do_not_notify_when_no_consumer_waits(transport: PgsqlTransport, url: str, schema: str) -> None:
    transport.submit_task("q_quiet")
    assert sql(f'SELECT count(*) FROM "{schema}".waiters') == [(0,)]
    assert transport.get_task("q_quiet", timeout_s=0.2) is not None
    assert transport.get_task("q_quiet", timeout_s=0.2) is None  # waited: now registered
    assert sql(f'SELECT queue FROM "{schema}".waiters') == [("q_quiet",)]
    transport.submit_task("q_quiet")
    assert transport.get_task("q_quiet", timeout_s=1) is not None  # busy again: unregistered
    assert sql(f'SELECT count(*) FROM "{schema}".waiters') == [(0,)]


def test_threads_share_one_transport(transport: PgsqlTransport) -> None:
    transport.submit_tasks("q_threads", [{"n": n} for n in range(400)])
    seen: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        while tasks := transport.get_tasks("q_threads", 7, timeout_s=0.3):
            transport.ack_tasks(tasks)
            with lock:
                seen.extend(t.id for t in tasks)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(seen) == len(set(seen)) == 400


def test_payloads_round_trip_exactly(transport: PgsqlTransport) -> None:
    payload = {"text": "héllo 'quoted' %s %(x)s \\ \u2603", "nested": {"list": [1, 2.5, None, True]}}
    transport.submit_tasks("q_rt", [payload, payload])
    transport.submit_task("q_rt", payload, priority=3, delay_s=0)
    tasks = transport.get_tasks("q_rt", 3)
    assert [t.payload for t in tasks] == [payload] * 3 and tasks[0].priority == 3
    assert json.loads(json.dumps(tasks[0].payload)) == payload
