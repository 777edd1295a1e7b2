"""A throwaway PgBouncer (Debian's ``pgbouncer``) on a free loopback port, run as ``postgres``, in
front of the machine's PostgreSQL at 127.0.0.1:5432.  See ``clusters.py`` for the contract."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clusters_base import (
    HOST,
    ClusterUnavailable,
    ServerProcess,
    chown_tree,
    cluster_dir,
    free_ports,
    port_answers,
    require_binaries,
    require_user,
    wait_until,
)

PGSQL_PORT = 5432
POOL_MODES = ("session", "transaction", "statement")


@dataclass
class PgBouncerInfo:
    """A running PgBouncer: ``url`` reaches database ``test`` through it; ``admin_url`` its console."""

    port: int
    pool_mode: str
    default_pool_size: int
    directory: Path
    process: ServerProcess = field(repr=False)
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/test"

    @property
    def admin_url(self) -> str:
        """The admin console (``SHOW POOLS``, ``SHOW SERVERS``; autocommit only)."""
        return f"postgresql://postgres@{HOST}:{self.port}/pgbouncer"

    @property
    def socket_dir(self) -> Path:
        """Where its unix socket ``.s.PGSQL.<port>`` is (for ``host=/path`` URLs)."""
        return self.directory

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def restart(self, hard: bool = False, down_s: float = 0.0, timeout_s: float = 20) -> None:
        """Stop it by pid (SIGTERM: it closes every connection at once; ``hard``: SIGKILL), stay down
        ``down_s`` seconds, start it again on the same port and wait until a query passes through."""
        if hard:
            self.process.kill()
        else:
            self.process.stop()
        time.sleep(down_s)
        self.process.start()
        _wait_ready(self, timeout_s)


def _query(url: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    finally:
        conn.close()


def _wait_ready(info: PgBouncerInfo, timeout_s: float) -> None:
    process = info.process
    wait_until(
        lambda: process.exited() or _query(info.url), timeout_s, f"pgbouncer did not pass a query on {info.port}"
    )
    if process.exited():
        raise ClusterUnavailable(f"pgbouncer exited: {process.log_tail()}")


@contextlib.contextmanager
def pgbouncer(
    pool_mode: str = "transaction", default_pool_size: int = 4, max_client_conn: int = 200
) -> Iterator[PgBouncerInfo]:
    """Start PgBouncer in ``pool_mode`` with ``default_pool_size`` server connections per pool.

    Databases: ``test`` (and any other, ``*``) on 127.0.0.1:5432; trust auth for ``postgres`` and
    ``root``, who are also its admins.  Raises ClusterUnavailable when pgbouncer is missing, the user
    ``postgres`` does not exist, PostgreSQL does not answer, or the start fails.
    """
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode {pool_mode!r}: expected one of {', '.join(POOL_MODES)}")
    require_binaries("pgbouncer")
    owner = require_user("postgres")
    if not port_answers(PGSQL_PORT):
        raise ClusterUnavailable(f"PostgreSQL does not answer at {HOST}:{PGSQL_PORT}")
    started = time.monotonic()
    with cluster_dir("pgbouncer", owner) as directory:
        (port,) = free_ports(1)
        (directory / "userlist.txt").write_text('"postgres" ""\n"root" ""\n')
        settings = {
            "listen_addr": HOST,
            "listen_port": port,
            "unix_socket_dir": directory,
            "auth_type": "trust",
            "auth_file": directory / "userlist.txt",
            "admin_users": "postgres, root",
            "pool_mode": pool_mode,
            "default_pool_size": default_pool_size,
            "max_client_conn": max_client_conn,
            "pidfile": directory / "pgbouncer.pid",
            "logfile": directory / "pgbouncer.log",
            "ignore_startup_parameters": "extra_float_digits",
        }
        ini = ["[databases]", f"test = host={HOST} port={PGSQL_PORT} dbname=test", f"* = host={HOST} port={PGSQL_PORT}"]
        ini += ["", "[pgbouncer]", *(f"{name} = {value}" for name, value in settings.items())]
        (directory / "pgbouncer.ini").write_text("\n".join(ini) + "\n")
        chown_tree(directory, owner)
        argv = ["pgbouncer", str(directory / "pgbouncer.ini")]
        process = ServerProcess(argv, marker_dir=directory, log=directory / "stdout.log", user=owner)
        info = PgBouncerInfo(port, pool_mode, default_pool_size, directory, process)
        try:
            process.start()
            _wait_ready(info, 20)
            info.start_seconds = time.monotonic() - started
            yield info
        finally:
            process.stop()
