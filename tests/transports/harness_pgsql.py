"""PostgreSQL transport harness: a schema of its own per test (dropped at the end); other consumers
may be other processes.  Needs the server at 127.0.0.1:5432 (trust auth, user postgres, db test)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness, default_inject_garbage

BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def drop_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it (through a connection of its own)."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    from support import PGSQL_HOST, PGSQL_PORT, require_service

    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    from asynctask.transports.pgsql import PgsqlTransport

    schema = f"asynctask_test_{uuid.uuid4().hex[:12]}"
    url = f"{BASE_URL}?schema={schema}"
    transport = PgsqlTransport(url)
    try:
        yield Harness("pgsql", url, transport, cross_process=True, inject_garbage=default_inject_garbage(transport))
    finally:
        transport.close()
        drop_schema(schema)
