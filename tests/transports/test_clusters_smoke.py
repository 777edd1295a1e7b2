"""The throwaway PgBouncer of ``tests/clusters.py`` works with the plain client, its restart does
what it says, and its teardown leaves no process and no directory behind.

The Redis Cluster, Sentinel and RabbitMQ cluster are proven by what runs on them (the contract suite
on ``redis+cluster://`` and ``redis+sentinel://``, the fault tests that kill their nodes); a smoke
test of each starting a second cluster of its own cost 25 s of the suite's budget and, for RabbitMQ,
six broker nodes at once on two cores: they were removed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import clusters
import psutil
from clusters import ClusterUnavailable, PgBouncerInfo

pytest_plugins = ["cluster_fixtures"]

T = TypeVar("T")


@contextlib.contextmanager
def started(manager: contextlib.AbstractContextManager[T], pids: list[int]) -> Iterator[T]:
    """Enter ``manager`` (skip or fail when it cannot start); afterwards check that nothing is left."""
    from cluster_fixtures import unavailable  # a plugin (pytest_plugins above): imported once pytest loaded it

    with contextlib.ExitStack() as stack:
        try:
            info = stack.enter_context(manager)
        except ClusterUnavailable as exc:
            unavailable(exc.reason)
        directory: Path = info.directory  # type: ignore[attr-defined]
        assert directory.is_dir()
        yield info
    assert clusters.leftovers(directory) == []
    assert not directory.exists()
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"


def _backend_pids(info: PgBouncerInfo, clients: int, transactions: int) -> set[int]:
    import psycopg2

    seen: set[int] = set()
    lock = threading.Lock()

    def work() -> None:
        conn = psycopg2.connect(info.url, connect_timeout=5)
        try:
            for _ in range(transactions):
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.002)")
                    row: Any = cur.fetchone()
                    with lock:
                        seen.add(row[0])
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return seen


def test_pgbouncer_shares_a_small_pool_and_restarts_on_its_port() -> None:
    import psycopg2

    pids: list[int] = []
    with started(clusters.pgbouncer(pool_mode="transaction"), pids) as bouncer:
        assert bouncer.pid is not None
        pids.append(bouncer.pid)
        assert 1 <= len(_backend_pids(bouncer, clients=12, transactions=10)) <= bouncer.default_pool_size == 4
        admin = psycopg2.connect(bouncer.admin_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SHOW POOLS")
            names = [column[0] for column in cur.description or ()]
            pools = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
        admin.close()
        assert pools["test"]["pool_mode"] == "transaction"
        held = psycopg2.connect(bouncer.url)
        bouncer.restart()
        assert bouncer.pid is not None and bouncer.pid not in pids
        pids.append(bouncer.pid)
        with contextlib.suppress(psycopg2.Error), held.cursor() as cur:
            cur.execute("SELECT 1")
            raise AssertionError("a connection through the stopped PgBouncer still works")
        held.close()
        assert _backend_pids(bouncer, clients=2, transactions=2)


def test_the_session_fixture_shares_one_pgbouncer(pgbouncer: PgBouncerInfo) -> None:
    import cluster_fixtures

    assert cluster_fixtures.shared_pgbouncer() is pgbouncer
    assert _backend_pids(pgbouncer, clients=2, transactions=2)
