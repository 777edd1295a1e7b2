"""``asynctask-workers --metrics-port N`` as a subprocess on the filesystem transport.

* the metrics endpoint is scraped and shows the counts of the run the test just made;
* a worker that segfaults on one task: the task is dead-lettered with the signal after max_attempts,
  the other tasks keep flowing, and the metrics count the killed attempts and the restarts;
* /healthz fails (503) when a child is stuck in a task while its queue has ready tasks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import free_port

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from asynctask.transports import get_transport
from asynctask.transports.base import Transport

CLI = str(Path(sys.executable).parent / "asynctask-workers")

WORKERS = """
import json
import os
import signal
import time

from asynctask.workers import AsyncTaskWorker


def record(payload):
    with open(os.environ["METRICS_TEST_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps(payload) + "\\n")


class Steady(AsyncTaskWorker):
    name = "steady"
    max_attempts = 2
    retry_delay_s = 0.05

    def process(self, payload):
        if payload.get("fail"):
            raise ValueError("told to fail")
        if payload.get("hang"):
            time.sleep(payload["hang"])
        record(payload)


class Crashy(AsyncTaskWorker):
    name = "crashy"
    max_attempts = 2

    def process(self, payload):
        if payload.get("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        record(payload)
"""


class Sample:
    """One scrape: ``value(name, **labels)`` is a sample's value, 0 when absent."""

    def __init__(self, samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        self.samples = samples

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Run:
    """A store, a config and a running ``asynctask-workers --metrics-port``."""

    def __init__(self, tmp_path: Path, workers: dict[str, Any]) -> None:
        self.tmp = tmp_path
        self.url = f"filesys:{tmp_path / 'store'}"
        self.out = tmp_path / "out.jsonl"
        (tmp_path / "metricsworkers.py").write_text(WORKERS)
        config = {
            "asynctask_transport": self.url,
            "asynctask_require": ["metricsworkers"],
            "asynctask_workers": workers,
            "asynctask_workers_poll_interval": 50,
            "asynctask_workers_check_child_interval": 100,
            "asynctask_shutdown_timeout": 10,
        }
        (tmp_path / "asynctask.yaml").write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_")}
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
            ASYNCTASK_HOME=str(tmp_path / "home"),
            METRICS_TEST_OUT=str(self.out),
            ASYNCTASK_HEALTHZ_STALE_S="1.5",
        )
        self.port = free_port()
        self.transport: Transport = get_transport(self.url)
        self.process: subprocess.Popen[str] | None = None

    def start(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [
                CLI,
                "--config",
                str(self.tmp / "asynctask.yaml"),
                "--metrics-port",
                str(self.port),
                "--log-level",
                "WARNING",
                *options,
            ],
            env=self.env,
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return found

    def wait_metrics(self, condition: Callable[[Sample], bool], timeout: float = 45) -> Sample:
        """Scrape until ``condition(value)`` holds; ``value(name, **labels)`` reads one sample (0 if absent)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.stop()
            try:
                value = Sample(self.metrics())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
                continue
            if condition(value):
                return value
            time.sleep(0.2)
        raise AssertionError(f"metrics never matched; last scrape: {self.get('/metrics')[1][-3000:]}")

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def stop(self, *, force: bool = False) -> str:
        """SIGTERM (and with ``force`` a second one: kill the children now); returns stderr."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if force:
                time.sleep(0.3)
                self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Run]]:
    runs: list[Run] = []

    def make(workers: dict[str, Any]) -> Run:
        run = Run(tmp_path, workers)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()
        run.transport.close()


def test_metrics_show_the_counts_of_a_run(make_run: Callable[[dict[str, Any]], Run]) -> None:
    run = make_run({"jobs": "steady"})
    run.transport.submit_tasks("jobs", [{"n": n} for n in range(20)])
    run.transport.submit_tasks("jobs", [{"fail": True, "n": 100}, {"fail": True, "n": 101}])
    run.start()
    labels = {"queue": "jobs", "worker": "steady"}
    value = run.wait_metrics(
        lambda v: (
            v("asynctask_tasks_processed_total", **labels) == 20
            and v("asynctask_tasks_dead_lettered_total", **labels) == 2
            and v("asynctask_queue_depth", queue="jobs", state="dead") == 2
        )
    )
    assert value("asynctask_tasks_retried_total", **labels) == 2  # each failing task: 1 retry, then dead
    assert value("asynctask_tasks_failed_total", **labels) == 4
    assert value("asynctask_task_processing_seconds_count", **labels) == 24
    assert value("asynctask_tasks_in_flight", **labels) == 0
    assert value("asynctask_children", **labels) == 1
    assert value("asynctask_child_restarts_total", **labels) == 0
    assert value("asynctask_queue_depth", queue="jobs", state="ready") == 0
    assert value("asynctask_transport_up") == 1
    status, body = run.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert len(run.records()) == 20
    run.stop()
    assert run.process is not None and run.process.returncode == 0


def test_segfaulting_task_is_dead_lettered_and_others_flow(make_run: Callable[[dict[str, Any]], Run]) -> None:
    run = make_run({"crashes": "crashy"})
    run.transport.submit_tasks("crashes", [{"n": n} for n in range(5)])
    run.transport.submit_task("crashes", {"crash": True})
    run.transport.submit_tasks("crashes", [{"n": n} for n in range(5, 10)])
    run.start()
    labels = {"queue": "crashes", "worker": "crashy"}
    value = run.wait_metrics(
        lambda v: (
            v("asynctask_tasks_dead_lettered_total", **labels) == 1
            and {r["n"] for r in run.records()} == set(range(10))
            and v("asynctask_tasks_processed_total", **labels) >= 10
        )
    )
    # a crash is not a failed attempt: quarantined after max_crashes (3) deaths, attempts untouched
    assert value("asynctask_tasks_killed_total", **labels, signal="SIGSEGV") == 3
    assert value("asynctask_child_restarts_total", **labels) == 3
    assert all("crash" not in r for r in run.records())  # the crashing one never completed
    [dead] = run.transport.dead_tasks("crashes")
    assert dead.payload == {"crash": True} and dead.attempts == 1
    assert dead.reason.startswith("quarantined: 3 worker children") and dead.reason.count("SIGSEGV") == 3
    stats = run.transport.stats("crashes")
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)
    run.stop()


def test_healthz_fails_for_a_stuck_child(make_run: Callable[[dict[str, Any]], Run]) -> None:
    run = make_run({"jobs": "steady"})
    run.transport.submit_task("jobs", {"hang": 30})
    run.start()
    run.wait_metrics(lambda v: v("asynctask_tasks_in_flight", queue="jobs", worker="steady") == 1)
    status, _ = run.get("/healthz")
    assert status == 200  # busy, but nothing waits
    run.transport.submit_tasks("jobs", [{"n": 1}, {"n": 2}])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = run.get("/healthz")
        if status == 503:
            break
        time.sleep(0.2)
    assert status == 503, body
    [stuck] = json.loads(body)["stuck"]
    assert stuck["queue"] == "jobs" and stuck["queue_ready"] == 2 and stuck["seconds_since_fetch"] >= 1.5
    run.stop(force=True)


def test_recycled_children_are_counted(make_run: Callable[[dict[str, Any]], Run]) -> None:
    run = make_run({"jobs": "steady"})
    config = run.tmp / "asynctask.yaml"
    config.write_text(config.read_text() + "asynctask_max_tasks_per_child: 5\n")
    run.transport.submit_tasks("jobs", [{"n": n} for n in range(12)])
    run.start()
    labels = {"queue": "jobs", "worker": "steady"}
    value = run.wait_metrics(
        lambda v: (
            v("asynctask_tasks_processed_total", **labels) == 12 and v("asynctask_child_recycles_total", **labels) == 2
        )
    )
    assert value("asynctask_child_restarts_total", **labels) == 0  # a recycle is not a crash
    assert value("asynctask_children", **labels) == 1
    assert sorted(r["n"] for r in run.records()) == list(range(12))
    run.stop()


@pytest.mark.parametrize(("options", "address"), [((), "127.0.0.1"), (("--metrics-bind", "0.0.0.0"), "0.0.0.0")])
def test_metrics_listen_on_this_machine_only_unless_told(
    make_run: Callable[[dict[str, Any]], Run], options: tuple[str, ...], address: str
) -> None:
    psutil = pytest.importorskip("psutil")
    run = make_run({"jobs": "steady"})
    run.start(*options)
    value = run.wait_metrics(lambda v: v("asynctask_children", queue="jobs", worker="steady") == 1)
    # every family of the pair is there before anything happened
    assert ("asynctask_tasks_dead_lettered_total", (("queue", "jobs"), ("worker", "steady"))) in value.samples
    assert run.process is not None
    listening = [
        c.laddr for c in psutil.Process(run.process.pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    ]
    assert [(a.ip, a.port) for a in listening] == [(address, run.port)]
