"""Restarting the shared servers for the restart tests (files ``test_*_restart.py``, run last).

Each helper waits until its server answers again before it returns, even when the restart failed,
so the tests after it find the server up.  Skips (locally) or fails (CI) when the tool is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import psycopg2
import pytest
from support import PGSQL_HOST, PGSQL_PORT, REQUIRE_SERVICES

__all__ = [
    "pgsql_cluster_version",
    "pgsql_sql",
    "restart_pgsql",
    "restart_rabbitmq",
    "wait_for_broker",
    "wait_for_pgsql",
]


def _missing(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is needed for the restart tests")
    pytest.skip(f"{what} is not installed here")


def pgsql_sql(statement: str) -> list[tuple[object, ...]]:
    """Run one statement on the shared server's database ``test`` as ``postgres``."""
    conn = psycopg2.connect(host=PGSQL_HOST, port=PGSQL_PORT, user="postgres", dbname="test", connect_timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def wait_for_pgsql(timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pgsql_sql("SELECT 1")
            return
        except psycopg2.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pgsql_cluster_version() -> str | None:
    """The version of the local cluster ``pg_ctlcluster`` can restart, or None."""
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted((v for v in os.listdir("/etc/postgresql") if v.replace(".", "").isdigit()), key=float)
    return versions[-1] if versions and os.path.isdir(f"/etc/postgresql/{versions[-1]}/main") else None


def restart_pgsql() -> None:
    """``pg_ctlcluster <version> main restart`` of the shared server, then wait until it answers."""
    version = pgsql_cluster_version()
    if version is None:
        _missing("pg_ctlcluster and /etc/postgresql/<version>/main")
    try:
        restart = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", str(version), "main", "restart"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        wait_for_pgsql()
    assert restart.returncode == 0, restart.stderr


def wait_for_broker(url: str, timeout_s: float = 90) -> None:
    from asynctask.errors import TransportError
    from asynctask.transports.amqp import AmqpTransport  # only the AMQP tests need pika

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            AmqpTransport(url).close()
            return
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=90)


def restart_rabbitmq(url: str, down_s: float = 0.5) -> None:
    """``rabbitmqctl stop_app``, ``down_s`` seconds, ``start_app``; then wait until ``url`` connects."""
    if shutil.which("rabbitmqctl") is None:
        _missing("rabbitmqctl")
    try:
        rabbitmqctl("stop_app")
        time.sleep(down_s)
    finally:
        rabbitmqctl("start_app")
        wait_for_broker(url)
