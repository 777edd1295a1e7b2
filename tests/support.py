"""Helpers any test may import (``from support import require_service``): tests/ is on sys.path.

Server tests skip with a reason when a server does not answer, unless ASYNCTASK_REQUIRE_SERVICES=1
(CI), where a missing server fails the run instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free loopback port, persisting to an AOF in
    ``directory`` (``extra_args``: more options, e.g. a password or a unix socket)."""

    def __init__(self, directory: Path, *extra_args: str) -> None:
        self.directory, self.port, self.extra_args = directory, free_port(), extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it accepts connections (10 s at most)."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--save", "", *self.extra_args]
        self.process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_answers("127.0.0.1", self.port, 0.2):
            if time.monotonic() > deadline:
                raise RuntimeError("throwaway redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM: the AOF is flushed), as an orderly restart does."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None
