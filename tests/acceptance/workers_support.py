"""Helpers for the asynctask-workers subprocess tests: a filesystem store in a temp dir, a config
file, the CLI started as a subprocess with the fixture workers importable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from asynctask.transports import get_transport
from asynctask.transports.base import Transport

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "asynctask-workers")

FAST = {
    "asynctask_workers_poll_interval": 50,
    "asynctask_workers_check_child_interval": 100,
    "asynctask_shutdown_timeout": 10,
}


class Env:
    """One test's world: a store under tmp_path, a config file, helpers to run the CLI."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.url = f"filesys:{tmp_path / 'store'}"
        self.out = str(tmp_path / "out.jsonl")
        self.transport: Transport = get_transport(self.url)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "ASYNCTASK_HOME": str(tmp_path / "home"),
        }
        self.env.pop("ASYNCTASK_TRANSPORT", None)
        self.env.pop("ASYNCTASK_CONFIG", None)

    def config(self, workers: dict[str, Any], **settings: Any) -> str:
        data = {"asynctask_transport": self.url, "asynctask_require": ["workers_fixture"],
                "asynctask_workers": workers, **FAST, **settings}
        path = self.tmp / "asynctask.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([CLI, *args], env=self.env, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], env=self.env, cwd=self.tmp, capture_output=True, text=True,
                              timeout=timeout, check=False)

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
