"""Helpers for the asynctask-workers subprocess tests: a store (a filesystem one in a temp dir, or
any transport's test harness from tests/transports), a config file, the CLI started as a
subprocess with the fixture workers importable."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from support import RedisServer

__all__ = ["CLI", "SERVER_TRANSPORTS", "Env", "RedisServer", "stop", "transport_world", "wait_for"]

from asynctask.transports import get_transport
from asynctask.transports.base import Transport

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "asynctask-workers")
TRANSPORT_TESTS = HERE.parent / "transports"
#: the transports with a store another process can reach, in the order their tests run
SERVER_TRANSPORTS = ("filesystem", "redis", "pgsql", "amqp")

FAST = {
    "asynctask_workers_poll_interval": 50,
    "asynctask_workers_check_child_interval": 100,
    "asynctask_shutdown_timeout": 10,
}


class Env:
    """One test's world: a store under tmp_path, a config file, helpers to run the CLI."""

    def __init__(self, tmp_path: Path, url: str | None = None, transport: Transport | None = None) -> None:
        self.tmp = tmp_path
        self.url = url or f"filesys:{tmp_path / 'store'}"
        self.out = str(tmp_path / "out.jsonl")
        self.transport: Transport = transport or get_transport(self.url)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "ASYNCTASK_HOME": str(tmp_path / "home"),
        }
        self.env.pop("ASYNCTASK_TRANSPORT", None)
        self.env.pop("ASYNCTASK_CONFIG", None)

    def config(self, workers: dict[str, Any], **settings: Any) -> str:
        data = {
            "asynctask_transport": self.url,
            "asynctask_require": ["workers_fixture"],
            "asynctask_workers": workers,
            **FAST,
            **settings,
        }
        path = self.tmp / "asynctask.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def start(self, *args: str, own_group: bool = False) -> subprocess.Popen[str]:
        """The CLI in the background (``own_group``: in a process group of its own, as systemd runs it)."""
        return subprocess.Popen(
            [CLI, *args],
            env=self.env,
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_group,
        )

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args], env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=timeout, check=False
        )

    def records(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.out):
            return []
        with open(self.out, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream if line.strip()]

    def close(self) -> None:
        self.transport.close()


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(process: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


@contextlib.contextmanager
def transport_world(name: str, tmp_path: Path) -> Iterator[Env]:
    """An Env on the test harness of transport ``name`` (tests/transports/harness_<name>.py): its
    own key prefix, schema or queue prefix on the shared server, removed afterwards."""
    if str(TRANSPORT_TESTS) not in sys.path:
        sys.path.insert(0, str(TRANSPORT_TESTS))  # the harnesses import harnesslib from there
    spec = importlib.util.spec_from_file_location(f"acceptance_harness_{name}", TRANSPORT_TESTS / f"harness_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.harness(tmp_path) as made:
        yield Env(tmp_path, made.url, made.transport)
