"""The worker registry (asynctask.registry) on the memory transport: the record, its expiry, the
heartbeat thread (beats, ``stopping``, delete at the end, an unreachable server), reading records
back, the setting and option of the period, and ``asynctask workers`` run in-process.

Two supervisors started as processes, killed and stopped: tests/acceptance/test_workers_registry.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import asynctask
from asynctask.cli.admin import main as admin_main
from asynctask.cli.workers import build_parser
from asynctask.config import Settings, WorkerEntry, load_settings
from asynctask.errors import ConfigurationError
from asynctask.message import validate_queue_name
from asynctask.registry import (
    HEARTBEAT_S,
    KEY_PREFIX,
    REGISTRY_QUEUE,
    TTL_FACTOR,
    Heartbeat,
    list_supervisors,
    masked_url,
    supervisor_key,
)
from asynctask.transports import get_transport
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.state import ChildState
from asynctask.workers.supervisor import Supervisor


class RegOk(AsyncTaskWorker):
    name = "reg_ok"

    def process(self, payload: dict[str, Any]) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def memory_url() -> str:
    return f"memory://registry{uuid.uuid4().hex}"


def supervisor_on(url: str, **settings: Any) -> Supervisor:
    """A supervisor (never run: no process starts) with two queues, the second with 2 processes."""
    workers = (WorkerEntry("reg_a", "reg_ok"), WorkerEntry("reg_b", "reg_ok", processes=2))
    return Supervisor(Settings(transport=url, workers=workers, require=(__name__,), **settings))


def children_of(supervisor: Supervisor) -> list[ChildState]:
    return supervisor.children


def test_names_and_defaults() -> None:
    assert validate_queue_name(REGISTRY_QUEUE) == "asynctask_registry"
    assert HEARTBEAT_S == 5.0 == Settings().heartbeat_s == load_settings([], environ={}).heartbeat_s
    key = supervisor_key("web-1.example.org", 4242, 1_700_000_000.123)
    assert key == "supervisor.web-1.example.org.4242.1700000000123"
    odd = supervisor_key("höst name/x" + "y" * 300, 1, 2.0)
    assert odd.startswith(KEY_PREFIX + "h-st-name-x") and len(odd) <= 200 and odd.endswith(".1.2000")
    with pytest.raises(ValueError, match="heartbeat_s=0"):
        Heartbeat("memory://", list, [], 0)


def test_masked_url_never_shows_a_password() -> None:
    assert masked_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    shown = masked_url("postgresql://u@h/db?password=s3cret&sslmode=require&sslpassword=x")
    assert "s3cret" not in shown and "sslmode=require" in shown and shown.count("***") == 2
    assert masked_url("amqp://guest:guest@h1:5672,h2:5672/vh") == "amqp://guest:***@h1:5672,h2:5672/vh"
    assert masked_url("filesys:/tmp/x") == "filesys:/tmp/x"


def test_the_record_says_who_runs_what() -> None:
    url = memory_url()
    supervisor = supervisor_on(url)
    try:
        first, second, third = supervisor.children
        # the first child runs a task, fetched, finished some; the second is alive; the third restarts
        first.pid, first.process = 1234, object()  # type: ignore[assignment]
        first.started_at = time.monotonic() - 10
        first.handle(P.Fetched([P.HeldEntry("t1", 1, "r1", 0.0, 0)], 1_000.5))
        first.handle(P.Finished([P.Outcome("a", P.ACKED, 0.1), P.Outcome("b", P.ACKED, 0.1)]))
        first.handle(P.Finished([P.Outcome("c", P.RETRIED, 0.1), P.Outcome("d", P.DEAD, 0.1)]))
        assert first.current is not None
        started = time.time() - 3
        first.current.set("t1", started, 30.0)
        second.pid, second.process = 1235, object()  # type: ignore[assignment]
        third.pid, third.restarts = 999, 2  # pid of the child that died: not shown
        heartbeat = Heartbeat(url, lambda: children_of(supervisor), ["reg_b", "reg_a", "reg_b"], 0.5)
        transport = get_transport(url)
        heartbeat.beat(transport)
        [record] = list_supervisors(transport)
    finally:
        supervisor.transport.close()
    assert record["id"] == heartbeat.key and record["id"].startswith(KEY_PREFIX)
    assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
    assert record["version"] == asynctask.__version__
    assert record["transport"] == url and record["queues"] == ["reg_a", "reg_b"] and record["state"] == "running"
    assert (record["heartbeat_s"], record["ttl_s"]) == (0.5, 0.5 * TTL_FACTOR)
    assert abs(record["started_at"] - time.time()) < 5 and record["heartbeat_at"] >= record["started_at"]
    one, two, three = record["children"]
    assert (one["queue"], one["worker"], one["slot"], one["pid"], one["alive"]) == ("reg_a", "reg_ok", 0, 1234, True)
    assert (one["concurrency"], one["done"], one["failed"]) == (1, 2, 2)
    assert one["counts"] == {"acked": 2, "retried": 1, "dead": 1}
    assert one["running"] == [{"task_id": "t1", "started_at": started, "timeout_s": 30.0}]
    assert one["last_fetch_at"] == 1_000.5 and abs(one["started_at"] - (time.time() - 10)) < 1
    assert (two["queue"], two["slot"], two["pid"], two["running"], two["last_fetch_at"]) == ("reg_b", 0, 1235, [], None)
    assert (three["slot"], three["pid"], three["alive"], three["restarts"], three["started_at"]) == (
        1,
        None,
        False,
        2,
        None,
    )
    json.dumps(record)  # JSON-ready


def test_a_record_expires_after_its_ttl() -> None:
    clock = FakeClock()
    transport = MemoryTransport(memory_url(), clock=clock)
    heartbeat = Heartbeat(transport.url, list, ["q"], 2.0)
    heartbeat.beat(transport)
    clock.now += 2.0 * TTL_FACTOR - 0.01
    assert [r["id"] for r in list_supervisors(transport)] == [heartbeat.key]
    clock.now += 0.02
    assert list_supervisors(transport) == []
    assert transport.state_get(REGISTRY_QUEUE, heartbeat.key) is None


def test_list_supervisors_skips_unreadable_records_and_sorts(caplog: pytest.LogCaptureFixture) -> None:
    transport = get_transport(memory_url())
    put = transport.state_put
    put(REGISTRY_QUEUE, "supervisor.b.2", json.dumps({"host": "b", "pid": 2}), 60)
    put(REGISTRY_QUEUE, "supervisor.a.10", json.dumps({"host": "a", "pid": 10, "id": "supervisor.a.10"}), 60)
    put(REGISTRY_QUEUE, "supervisor.a.9", json.dumps({"host": "a", "pid": 9}), 60)
    put(REGISTRY_QUEUE, "supervisor.bad1", "{not json", 60)
    put(REGISTRY_QUEUE, "supervisor.bad2", "[1, 2]", 60)
    put(REGISTRY_QUEUE, "supervisor.bad3", json.dumps({"host": "c", "pid": "12"}), 60)
    put(REGISTRY_QUEUE, "other.key", json.dumps({"host": "0", "pid": 0}), 60)
    with caplog.at_level(logging.DEBUG, logger="asynctask.registry"):
        found = list_supervisors(transport)
    assert [(r["host"], r["pid"], r["id"]) for r in found] == [
        ("a", 9, "supervisor.a.9"),
        ("a", 10, "supervisor.a.10"),
        ("b", 2, "supervisor.b.2"),
    ]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3 and all(r.levelno == logging.DEBUG for r in caplog.records)


def test_the_thread_beats_marks_stopping_and_deletes_its_record_at_the_end() -> None:
    url = memory_url()
    transport = get_transport(url)
    heartbeat = Heartbeat(url, list, ["q"], 0.05)
    stop = threading.Event()
    heartbeat.start(stop)
    try:
        first = wait_for(lambda: list_supervisors(transport))
        assert first[0]["state"] == "running"
        later = wait_for(
            lambda: [r for r in list_supervisors(transport) if r["heartbeat_at"] > first[0]["heartbeat_at"]]
        )
        assert later[0]["id"] == first[0]["id"]
        stop.set()  # the supervisor begins its shutdown: still there, stopping
        wait_for(lambda: [r for r in list_supervisors(transport) if r["state"] == "stopping"])
        time.sleep(0.2)  # beats go on while the children finish
        assert [r["state"] for r in list_supervisors(transport)] == ["stopping"]
    finally:
        stop.set()
        heartbeat.finish()  # the supervisor exits
    assert list_supervisors(transport) == []
    assert heartbeat._thread is not None and not heartbeat._thread.is_alive()


def test_an_unreachable_server_is_a_warning_then_retried(caplog: pytest.LogCaptureFixture) -> None:
    heartbeat = Heartbeat("redis://127.0.0.1:1/0", list, ["q"], 0.05)
    stop = threading.Event()
    with caplog.at_level(logging.DEBUG, logger="asynctask.registry"):
        heartbeat.start(stop)
        time.sleep(0.4)
        assert heartbeat._thread is not None and heartbeat._thread.is_alive()
        stop.set()
        began = time.monotonic()
        heartbeat.finish()
    assert time.monotonic() - began < 5 and not heartbeat._thread.is_alive()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    tries = [r for r in caplog.records if "record failed" in r.getMessage()]
    assert len(warnings) == 1 and "writing this supervisor's record failed" in warnings[0].getMessage()
    assert len(tries) >= 3  # tried again at every beat, at debug level


def test_the_supervisor_wires_the_heartbeat_and_asks_for_outcomes() -> None:
    supervisor = supervisor_on(memory_url(), heartbeat_s=0.5)
    try:
        assert supervisor.listeners, "children must report their outcomes for done/failed"
        [finish] = supervisor._extras.finishers
        heartbeat = finish.__self__  # type: ignore[attr-defined]
        assert isinstance(heartbeat, Heartbeat)
        assert heartbeat.heartbeat_s == 0.5 and heartbeat.children() is supervisor.children
        assert heartbeat.queues == ["reg_a", "reg_b"]
    finally:
        supervisor.transport.close()


def test_the_period_setting_and_option(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("asynctask_heartbeat_s: 0.5\n")
    assert load_settings([str(path)], environ={}).heartbeat_s == 0.5
    assert load_settings([str(path)], environ={"ASYNCTASK_HEARTBEAT_S": "2"}).heartbeat_s == 2.0
    assert load_settings([], [("asynctask_heartbeat_s", 7)], environ={}).heartbeat_s == 7.0
    described = load_settings([], environ={}).describe()["asynctask_heartbeat_s"]
    assert described == {"value": 5.0, "origin": "default"}
    for bad, source in ((0, "--set"), ("x", "--set"), (3601, "--set"), ("-1", "environment")):
        with pytest.raises(ConfigurationError, match="asynctask_heartbeat_s") as caught:
            if source == "--set":
                load_settings([], [("asynctask_heartbeat_s", bad)], environ={})
            else:
                load_settings([], environ={"ASYNCTASK_HEARTBEAT_S": str(bad)})
        assert "is not allowed" in caught.value.message and "\n" not in caught.value.message
    assert build_parser().parse_args(["--heartbeat-s", "0.5"]).heartbeat_s == 0.5
    assert build_parser().parse_args([]).heartbeat_s is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--heartbeat-s", "0"])


def test_asynctask_workers_lists_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ASYNCTASK_TRANSPORT", raising=False)
    monkeypatch.delenv("ASYNCTASK_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = memory_url()
    assert admin_main(["workers", "--transport", url]) == 0
    assert capsys.readouterr().out == "no supervisors running (none wrote a heartbeat recently)\n"
    assert admin_main(["workers", "--json", "--transport", url]) == 0
    assert json.loads(capsys.readouterr().out) == []

    now = time.time()
    child = {
        "queue": "emails",
        "worker": "send",
        "slot": 0,
        "pid": 4321,
        "concurrency": 4,
        "done": 12,
        "failed": 1,
        "running": [{"task_id": "abc", "started_at": now - 3.2, "timeout_s": None}, {"task_id": "d"}],
        "last_fetch_at": now - 0.5,
    }
    idle = {"queue": "emails", "worker": "send", "slot": 1, "pid": None, "concurrency": 1, "running": []}
    record = {"host": "web1", "pid": 99, "started_at": now - 125, "queues": ["emails", "jobs"], "version": "1.0"}
    record["children"] = [child, idle]
    get_transport(url).state_put(REGISTRY_QUEUE, "supervisor.web1.99.1", json.dumps(record), 60)
    assert admin_main(["workers", "--transport", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("web1 pid 99, up 2m0") and lines[0].endswith(", asynctask 1.0, queues emails, jobs")
    assert lines[1].startswith("    send on emails: pid 4321, concurrency 4, done 12, failed 1, running abc for 3.")
    assert "(+1 more), fetched " in lines[1] and lines[1].endswith(" ago")
    assert lines[2] == "    send on emails: pid - (restarting), concurrency 1, done 0, failed 0, idle, never fetched"
    assert admin_main(["workers", "--json", "--transport", url]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed == {**record, "id": "supervisor.web1.99.1"}


def wait_for(condition: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")
