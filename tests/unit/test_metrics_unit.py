"""asynctask.metrics fed by hand: counters from protocol messages, depth from a memory transport,
/healthz failing for a stuck child, and both endpoints served over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

pytest.importorskip("prometheus_client")

from asynctask.errors import ConfigurationError
from asynctask.metrics import WorkerMetrics
from asynctask.transports import get_transport
from asynctask.workers import protocol as P  # noqa: N812


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Child:
    """What the supervisor's ChildState shows a listener."""

    pid: int
    queue: str
    worker: str


def held(*ids: str) -> list[P.HeldEntry]:
    return [P.HeldEntry(task_id, 1, "receipt", 0.0, 0) for task_id in ids]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and item.labels == labels:
                return float(item.value)
    return 0.0


def test_counts_depth_and_health() -> None:
    url = f"memory://metrics{uuid.uuid4().hex}"
    producer = get_transport(url)
    clock = Clock()
    metrics = WorkerMetrics(["emails"], lambda: get_transport(url), stale_after_s=60, depth_cache_s=0, clock=clock)
    child = Child(101, "emails", "send_email")
    metrics.listen(child, P.ChildStarted(101))
    metrics.listen(child, P.Ready(101))
    metrics.listen(child, P.Fetched(held("a", "b", "c"), 0.0))
    metrics.listen(child, P.Started("a", 0.0, None))
    metrics.listen(child, P.Finished([P.Outcome("a", "acked", 0.02)]))
    metrics.listen(child, P.Finished([P.Outcome("b", "retried", 0.5), P.Outcome("c", "dead", 0.1)]))
    metrics.listen(child, P.Fetched(held("d"), 0.0))
    metrics.listen(child, P.Started("d", 0.0, None))
    text = metrics.render().decode()
    labels = {"queue": "emails", "worker": "send_email"}
    assert sample(text, "asynctask_tasks_processed_total", **labels) == 1
    assert sample(text, "asynctask_tasks_failed_total", **labels) == 2
    assert sample(text, "asynctask_tasks_retried_total", **labels) == 1
    assert sample(text, "asynctask_tasks_dead_lettered_total", **labels) == 1
    assert sample(text, "asynctask_tasks_in_flight", **labels) == 1
    assert sample(text, "asynctask_task_processing_seconds_count", **labels) == 3
    assert sample(text, "asynctask_children", **labels) == 1

    producer.submit_tasks("emails", [{}, {}])
    producer.submit_task("emails", delay_s=60)
    text = metrics.render().decode()
    assert sample(text, "asynctask_queue_depth", queue="emails", state="ready") == 2
    assert sample(text, "asynctask_queue_depth", queue="emails", state="delayed") == 1
    assert sample(text, "asynctask_transport_up") == 1

    assert metrics.health()[0]
    clock.now += 61  # no fetch for 61 s, 2 tasks ready: stuck
    healthy, details = metrics.health()
    assert not healthy and details["stuck"][0]["child"] == "101"
    producer.purge("emails")  # nothing ready: idle, not stuck
    assert metrics.health()[0]

    # "fetched" means "holds this batch and no other", "polled" "holds nothing" (without "finished")
    metrics.listen(child, P.Fetched(held("e", "f"), 0.0))
    assert sample(metrics.render().decode(), "asynctask_tasks_in_flight", **labels) == 2
    metrics.listen(child, P.Polled(0.0))
    assert sample(metrics.render().decode(), "asynctask_tasks_in_flight", **labels) == 0
    metrics.listen(child, P.Fetched(held("g"), 0.0))
    metrics.listen(child, P.Started("g", 0.0, None))

    metrics.listen(child, P.ChildExited(101, restarted=True, signal_name="SIGSEGV", dead_lettered=1))
    text = metrics.render().decode()
    assert sample(text, "asynctask_child_restarts_total", **labels) == 1
    assert sample(text, "asynctask_tasks_killed_total", **labels, signal="SIGSEGV") == 1
    assert sample(text, "asynctask_tasks_in_flight", **labels) == 0
    assert sample(text, "asynctask_children", **labels) == 0
    assert sample(text, "asynctask_tasks_dead_lettered_total", **labels) == 2  # one by the child, one by us
    metrics.close()


def test_serve_over_http() -> None:
    url = f"memory://metrics{uuid.uuid4().hex}"
    clock = Clock()
    metrics = WorkerMetrics(["jobs"], lambda: get_transport(url), stale_after_s=5, depth_cache_s=0, clock=clock)
    metrics.child_started("7", "jobs", "job")
    metrics.observe("7", P.Finished([P.Outcome("x", "acked", 0.001)]))
    server = metrics.serve(0, "127.0.0.1")
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert sample(text, "asynctask_tasks_processed_total", queue="jobs", worker="job") == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert json.loads(response.read())["status"] == "ok"
        get_transport(url).submit_task("jobs")
        clock.now += 10
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert failure.value.code == 503
        assert json.loads(failure.value.read())["status"] == "stuck"
    finally:
        server.shutdown()
        server.server_close()
        metrics.close()


def test_every_family_is_exported_at_zero_before_its_first_event() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = WorkerMetrics(["jobs"], None)
    labels = {"queue": "jobs", "worker": "job"}
    names = [
        "asynctask_tasks_processed_total",
        "asynctask_tasks_failed_total",
        "asynctask_tasks_retried_total",
        "asynctask_tasks_dead_lettered_total",
        "asynctask_child_restarts_total",
        "asynctask_child_recycles_total",
        "asynctask_tasks_in_flight",
        "asynctask_task_processing_seconds_count",
    ]
    before = metrics.render().decode()
    assert all(f"{name}{{" not in before for name in names)
    metrics.child_started("7", "jobs", "job")
    found = {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for item in family.samples
    }
    key = tuple(sorted(labels.items()))
    for name in names:
        assert found[(name, key)] == 0, name
    assert found[("asynctask_children", key)] == 1
    assert found[("asynctask_tasks_killed_total", tuple(sorted({**labels, "signal": "SIGKILL"}.items())))] == 0


def test_serve_binds_this_machine_only_unless_told() -> None:
    metrics = WorkerMetrics(["jobs"], None)
    for bind in (None, "0.0.0.0"):
        if bind is not None:
            metrics.bind = bind
        server = metrics.serve(0)
        try:
            assert server.server_address[0] == (bind or "127.0.0.1")
        finally:
            server.shutdown()
            server.server_close()
    with pytest.raises(ConfigurationError, match=r"cannot listen on 203\.0\.113\.9:"):
        metrics.serve(0, "203.0.113.9")


@dataclass
class BusyChild:
    """A ChildState as the metrics read it at scrape time: its slot and the tasks it runs."""

    pid: int
    queue: str
    worker: str
    slot: int
    running: int

    def running_tasks(self) -> list[P.Started]:
        return [P.Started(f"t{n}", 0.0, None) for n in range(self.running)]


def test_tasks_running_per_child_and_took_moves_the_in_flight_gauge() -> None:
    url = f"memory://metrics{uuid.uuid4().hex}"
    metrics = WorkerMetrics(["crawl"], lambda: get_transport(url), depth_cache_s=0)
    first, second = BusyChild(201, "crawl", "crawler", 0, 5), BusyChild(202, "crawl", "crawler", 1, 0)
    for child in (first, second):
        metrics.listen(child, P.ChildStarted(child.pid))
    metrics.listen(first, P.Took([tuple(e) for e in held("a", "b", "c")], 0.0))
    metrics.listen(first, P.Took([tuple(e) for e in held("d")], 0.0))
    text = metrics.render().decode()
    assert sample(text, "asynctask_child_tasks_running", queue="crawl", worker="crawler", slot="0") == 5
    assert sample(text, "asynctask_child_tasks_running", queue="crawl", worker="crawler", slot="1") == 0
    assert sample(text, "asynctask_tasks_in_flight", queue="crawl", worker="crawler") == 4
    metrics.listen(first, P.Finished([("a", "acked", 0.01), ("b", "acked", 0.01)]))
    assert sample(metrics.render().decode(), "asynctask_tasks_in_flight", queue="crawl", worker="crawler") == 2
