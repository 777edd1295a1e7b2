"""Helpers any test may import (``from support import require_service``): tests/ is on sys.path.

Server tests skip with a reason when a server does not answer, unless ASYNCTASK_REQUIRE_SERVICES=1
(CI), where a missing server fails the run instead.
"""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("ASYNCTASK_REQUIRE_SERVICES") == "1"

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PGSQL_HOST, PGSQL_PORT = "127.0.0.1", 5432
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


def port_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) the calling test when ``name`` does not answer at host:port."""
    if port_answers(host, port):
        return
    message = f"{name} does not answer at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and ASYNCTASK_REQUIRE_SERVICES=1")
    pytest.skip(f"{message} (set ASYNCTASK_REQUIRE_SERVICES=1 to make this a failure)")
