"""The PostgreSQL floor: bare psycopg2 loops on a scratch table, autocommit, server defaults.

A scratch schema ``asynctask_floor_<hex>`` holds ``jobs (id bigserial PRIMARY KEY, queue, priority,
run_at, body)`` with the index ``(queue, priority DESC, run_at, id)`` that a hand-written queue
needs to take the oldest job first: the smallest table a job queue can be.  It is dropped by close().

* submit: one-row ``INSERT`` per item (``cursor.execute``, one round trip and one commit each);
* submit_batch: ``psycopg2.extras.execute_values`` (one multi-row INSERT and commit per batch);
* drain: one-row ``DELETE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING body``
  per item, the loop a hand-made SKIP LOCKED consumer runs.
"""

from __future__ import annotations

import time
import uuid

import psycopg2
import psycopg2.extras

from asynctask.transports.pgsql import parse_pgsql_url
from bench.floors import BODY

_QUEUE = "floor"


class Floor:
    def __init__(self, url: str) -> None:
        dsn, _, _ = parse_pgsql_url(url)
        self.conn = psycopg2.connect(application_name="asynctask-bench-floor", **dsn)
        self.conn.autocommit = True
        self.schema = f"asynctask_floor_{uuid.uuid4().hex[:12]}"
        self.table = f'"{self.schema}".jobs'
        self.body = BODY.decode()
        with self.conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{self.schema}"')
            cur.execute(
                f"CREATE TABLE {self.table} (id bigserial PRIMARY KEY, queue text NOT NULL,"
                " priority smallint NOT NULL DEFAULT 0, run_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL)"
            )
            cur.execute(f"CREATE INDEX ON {self.table} (queue, priority DESC, run_at, id)")

    def _clear(self, queue: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {self.table} WHERE queue = %s", (queue,))

    def submit(self, n: int) -> float:
        sql = f"INSERT INTO {self.table} (queue, body) VALUES (%s, %s)"
        body = self.body
        with self.conn.cursor() as cur:
            started = time.perf_counter()
            for _ in range(n):
                cur.execute(sql, ("submit", body))
            elapsed = time.perf_counter() - started
        self._clear("submit")
        return elapsed

    def submit_batch(self, n: int, batch: int) -> float:
        sql = f"INSERT INTO {self.table} (queue, body) VALUES %s"
        body = self.body
        with self.conn.cursor() as cur:
            started = time.perf_counter()
            for start in range(0, n, batch):
                rows = [("submit", body)] * min(batch, n - start)
                psycopg2.extras.execute_values(cur, sql, rows, page_size=batch)
            elapsed = time.perf_counter() - started
        self._clear("submit")
        return elapsed

    def fill(self, n: int) -> None:
        sql = f"INSERT INTO {self.table} (queue, body) VALUES %s"
        with self.conn.cursor() as cur:
            for start in range(0, n, 1000):
                psycopg2.extras.execute_values(cur, sql, [(_QUEUE, self.body)] * min(1000, n - start), page_size=1000)

    def drain(self, n: int) -> float:
        sql = (
            f"DELETE FROM {self.table} WHERE id = (SELECT id FROM {self.table} WHERE queue = %s"
            " ORDER BY priority DESC, run_at, id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING body"
        )
        with self.conn.cursor() as cur:
            started = time.perf_counter()
            for _ in range(n):
                cur.execute(sql, (_QUEUE,))
                if cur.fetchone() is None:
                    raise RuntimeError("the floor's queue ran dry")
            return time.perf_counter() - started

    def close(self) -> None:
        if self.conn.closed:
            return
        with self.conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.conn.close()
