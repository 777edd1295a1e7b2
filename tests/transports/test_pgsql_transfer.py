# ruff: noqa: E402  (the imports below need psycopg2: importorskip comes first)
"""PostgreSQL transfer beyond the contract suite (:mod:`asynctask.transports.pgsql_transfer`): schema
version 3 over a version 2 schema, dead_page on 100,000 dead letters, order by dead_at, concurrent
puts of one id, refused records, the oldest-ready age of put tasks.

Needs the server at 127.0.0.1:5432 (trust auth, user postgres, database test).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

psycopg2 = pytest.importorskip("psycopg2")

from support import PGSQL_HOST, PGSQL_PORT, require_service
from test_pgsql import BASE, OLD_BURY, old_schema, old_task, sql

from asynctask.errors import PayloadError
from asynctask.message import encode_body, new_task_ids
from asynctask.transports.pgsql import SCHEMA_VERSION, PgsqlTransport
from asynctask.transports.transfer import TaskRecord


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


def test_a_version_2_schema_migrates_and_keeps_its_dead_letters(
    url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_schema(url, 2, monkeypatch)
    task_id, receipt = old_task(schema, "q_old", {"n": 1}, priority=3, leased=True)
    rowid, token = map(int, receipt.split("."))
    sql(OLD_BURY.replace("@schema@", f'"{schema}"'), (rowid, token, "old"))
    with PgsqlTransport(url) as new:
        ((dead,), cursor) = new.dead_page("q_old")
        assert (dead.id, dead.reason, dead.priority, dead.enqueued_at, cursor) == (task_id, "old", 3, 0.0, "")
        assert new.dead_tasks("q_old") == [dead]
        # the same id may now be dead in two queues; put_dead keeps what it is given
        record = TaskRecord.from_dead(dead)
        assert new.put_dead("q_copy", [record]) == [True]
        assert new.put_dead("q_copy", [record]) == [False]
        assert new.put_tasks("q_old", [record]) == [False], "an id dead in the queue is not put back waiting"
        (copy,) = new.dead_tasks("q_copy")
        assert (copy.id, copy.priority, copy.body, abs(copy.dead_at - dead.dead_at) < 1e-5) == (
            dead.id,
            3,
            dead.body,
            True,
        )
    assert sql(f'SELECT max(version) FROM "{schema}".schema_version') == [(SCHEMA_VERSION,)]
    index = sql("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'dead_queue_order'", (schema,))
    assert "(queue, dead_at, n)" in str(index[0][0])


def test_dead_page_follows_dead_at_not_insertion(transport: PgsqlTransport) -> None:
    ids = new_task_ids(3)
    now = time.time()
    records = [
        TaskRecord(ids[0], encode_body({"n": 0}), enqueued_at=now - 50, reason="young", dead_at=now - 10),
        TaskRecord(ids[1], encode_body({"n": 1}), priority=7, enqueued_at=now - 99, reason="old", dead_at=now - 30),
    ]
    assert transport.put_dead("q_dead", records) == [True, True]
    transport.submit_task("q_dead", {"n": 2})
    task = transport.get_task("q_dead")
    assert task is not None
    transport.dead(task, "now")
    reasons, cursor = [], ""
    while True:
        page, cursor = transport.dead_page("q_dead", after=cursor, limit=1)
        reasons += [(d.reason, d.priority, round(d.enqueued_at)) for d in page]
        if not cursor:
            break
    assert reasons == [("old", 7, round(now - 99)), ("young", 0, round(now - 50)), ("now", 0, round(task.enqueued_at))]
    with pytest.raises(ValueError, match="after='junk'"):
        transport.dead_page("q_dead", after="junk")
    with pytest.raises(ValueError, match="after='1:2'"):
        transport.peek_tasks("q_dead", after="1:2")


def test_dead_page_stays_fast_with_100000_dead_letters(transport: PgsqlTransport, schema: str) -> None:
    transport.queues()  # creates the schema
    sql(
        f'INSERT INTO "{schema}".dead (id, queue, priority, attempts, reason, body, dead_at)'
        " SELECT gen_random_uuid(), 'q_many', 0, 1, 'r', '{\"n\": ' || i || '}',"
        " now() - (100000 - i) * interval '1 millisecond' FROM generate_series(1, 100000) AS i"
    )
    sql(f'ANALYZE "{schema}".dead')
    (deep,) = sql(
        f'SELECT (extract(epoch FROM dead_at) * 1000000)::bigint, n FROM "{schema}".dead'
        " ORDER BY dead_at, n OFFSET 90000 LIMIT 1"
    )
    timings = []
    for after in ["", f"{deep[0]}:{deep[1]}"]:
        cursor = after
        for _ in range(10):
            start = time.perf_counter()
            page, cursor = transport.dead_page("q_many", after=cursor, limit=100)
            timings.append(time.perf_counter() - start)
            assert len(page) == 100 and cursor
    assert page[-1].payload == {"n": 90001 + 1000}  # the 1,000 after the cursor's row
    assert statistics.median(timings) < 0.02, timings


def test_concurrent_puts_of_the_same_records_store_each_once(url: str, schema: str) -> None:
    records = [TaskRecord(i, encode_body({"k": 1})) for i in new_task_ids(1000)]
    results: list[list[bool]] = []
    # other connect_timeout values: other connections (a process shares one per DSN)
    transports = [PgsqlTransport(f"{url}&connect_timeout={n}") for n in (5, 6, 7)]
    transports[0].queues()
    barrier = threading.Barrier(len(transports))

    def put(transport: PgsqlTransport) -> None:
        barrier.wait()
        results.append(transport.put_tasks("q_race", records))

    threads = [threading.Thread(target=put, args=(t,)) for t in transports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for each in transports:
        each.close()
    assert len(results) == 3
    assert [sum(flags) for flags in zip(*results, strict=True)] == [1] * 1000
    assert sql(f'SELECT count(*), count(DISTINCT id) FROM "{schema}".tasks') == [(1000, 1000)]


def test_put_refuses_records_it_cannot_store_and_stores_none(transport: PgsqlTransport) -> None:
    good = TaskRecord(new_task_ids(1)[0], encode_body({"k": 1}))
    with pytest.raises(PayloadError, match=r"'not-hex'.*32 lowercase hex"):
        transport.put_tasks("q_bad", [good, TaskRecord("not-hex", encode_body({}))])
    with pytest.raises(PayloadError, match="NUL"):
        transport.put_dead("q_bad", [good, TaskRecord(new_task_ids(1)[0], "a\x00b")])
    assert transport.stats("q_bad").ready == transport.stats("q_bad").dead == 0
    # the same id twice in one batch: the first is stored
    assert transport.put_tasks("q_bad", [good, good]) == [True, False]


def test_put_keeps_enqueued_at_for_the_oldest_ready_age(transport: PgsqlTransport) -> None:
    old = TaskRecord(new_task_ids(1)[0], encode_body({"k": 1}), attempts=4, enqueued_at=time.time() - 3600)
    unknown = TaskRecord(new_task_ids(1)[0], encode_body({"k": 2}))  # enqueued_at 0: now
    assert transport.put_tasks("q_age", [old, unknown]) == [True, True]
    age = transport.stats("q_age").oldest_ready_age_s
    assert age is not None and 3590 < age < 3610
    ((taken, task), (other, _)) = transport.take_tasks("q_age", 10, lease_s=30)
    assert (taken.id, taken.attempts, task.attempts, round(taken.enqueued_at)) == (
        old.id,
        4,
        4,
        round(old.enqueued_at),
    )
    assert other.id == unknown.id and abs(other.enqueued_at - time.time()) < 60
    transport.ack(task)
