"""PostgreSQL through PgBouncer in transaction mode (the session's ``shared_pgbouncer()``: a pool of
4 server connections), LISTEN on a direct connection (``listen_url`` to 127.0.0.1:5432).  A schema of
its own per test, dropped at the end; the competition tests run 4 consumer processes at once through
the pooler."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from harnesslib import Harness, default_inject_garbage

DIRECT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    from cluster_fixtures import shared_pgbouncer
    from harness_pgsql import drop_schema
    from support import PGSQL_HOST, PGSQL_PORT, require_service

    require_service("PostgreSQL", PGSQL_HOST, PGSQL_PORT)
    bouncer = shared_pgbouncer()
    from asynctask.transports.pgsql import PgsqlTransport

    schema = f"asynctask_test_{uuid.uuid4().hex[:12]}"
    url = f"{bouncer.url}?schema={schema}&listen_url={quote(DIRECT_URL, safe='')}"
    transport = PgsqlTransport(url)
    try:
        yield Harness(
            "pgsql_pgbouncer", url, transport, cross_process=True, inject_garbage=default_inject_garbage(transport)
        )
    finally:
        transport.close()
        drop_schema(schema)
