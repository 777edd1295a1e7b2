"""Middleware hooks (``asynctask_middleware``) around submits and tasks, on the memory transport."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from asynctask import get_transport
from asynctask.errors import ConfigurationError
from asynctask.message import Task
from asynctask.middleware import LoggingContext, MiddlewareChain, load_middleware
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers.aio import make_runner
from asynctask.workers.runner import HALT_IDLE

EVENTS: list[tuple[Any, ...]] = []


class Recorder:
    """Every hook, recorded (a plain class: subclassing Middleware is optional)."""

    def on_worker_start(self, worker: Any) -> None:
        EVENTS.append(("start", worker.name))

    def before_submit(self, queue: str, payload: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        meta["trace_id"] = "t-123"

    def before_process(self, task: Task) -> None:
        EVENTS.append(("before", task.payload.get("n")))

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        EVENTS.append(("after", task.payload.get("n"), outcome, type(error).__name__ if error else None))

    def on_worker_stop(self, worker: Any) -> None:
        EVENTS.append(("stop", worker.name))


class Second:
    def before_process(self, task: Task) -> None:
        EVENTS.append(("second before", task.payload.get("n")))

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        EVENTS.append(("second after", task.payload.get("n")))


class Broken:
    def before_process(self, task: Task) -> None:
        raise RuntimeError("the hook is broken")


class Outcomes(AsyncTaskWorker):
    name = "mw_outcomes"
    max_attempts = 2
    retry_delay_s = 0.0

    def process(self, payload: dict[str, Any]) -> None:
        assert self.task is not None
        EVENTS.append(("meta", dict(self.task.meta)))
        logging.getLogger("mw.test").warning("inside n=%s", payload.get("n"))
        if payload.get("fail"):
            raise KeyError("bad")


class AsyncOutcomes(AsyncTaskWorker):
    name = "mw_async"
    concurrency = 3

    async def process(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.001)


@pytest.fixture(autouse=True)
def _clean() -> None:
    EVENTS.clear()


def store() -> MemoryTransport:
    return MemoryTransport(f"memory://{uuid.uuid4().hex}")


def test_hooks_see_each_task_with_its_outcome_in_order() -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": 1}, {"n": 2, "fail": True}])
    chain = MiddlewareChain([Recorder(), Second()])
    make_runner(transport, "jobs", Outcomes(), halt=HALT_IDLE, middleware=chain).run()
    hooks = [e for e in EVENTS if e[0] != "meta"]
    assert hooks == [
        ("before", 1),
        ("second before", 1),
        ("second after", 1),  # after-hooks in reverse
        ("after", 1, "acked", None),
        ("before", 2),
        ("second before", 2),
        ("second after", 2),
        ("after", 2, "retried", "KeyError"),
        ("before", 2),
        ("second before", 2),
        ("second after", 2),
        ("after", 2, "dead", "KeyError"),
    ]


@pytest.mark.parametrize("worker", ["threads", "async"])
def test_lanes_call_the_hooks_too(worker: str) -> None:
    transport = store()
    transport.submit_tasks("jobs", [{"n": n} for n in range(6)])
    chain = MiddlewareChain([Recorder()])
    chosen = AsyncOutcomes() if worker == "async" else Outcomes()
    make_runner(transport, "jobs", chosen, concurrency=3, halt=HALT_IDLE, middleware=chain).run()
    assert sorted(e[1] for e in EVENTS if e[0] == "before") == list(range(6))
    assert sorted(e[1:3] for e in EVENTS if e[0] == "after") == [(n, "acked") for n in range(6)]


def test_a_failing_hook_is_logged_by_name_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    transport = store()
    transport.submit_task("jobs", {"n": 1})
    chain = MiddlewareChain([Broken(), Recorder()])
    make_runner(transport, "jobs", Outcomes(), halt=HALT_IDLE, middleware=chain).run()
    assert ("after", 1, "acked", None) in EVENTS
    assert "middleware Broken.before_process failed" in caplog.text
    assert transport.stats("jobs").ready == 0 and transport.dead_tasks("jobs") == []


def test_logging_context_names_the_task_on_every_record(caplog: pytest.LogCaptureFixture) -> None:
    transport = store()
    task_id = transport.submit_task("jobs", {"n": 7})
    chain = load_middleware(["asynctask.middleware.LoggingContext"])
    assert chain is not None and isinstance(chain.instances[0], LoggingContext)
    chain.on_worker_start(Outcomes())
    with caplog.at_level(logging.WARNING, logger="mw.test"):
        make_runner(transport, "jobs", Outcomes(), halt=HALT_IDLE, middleware=chain).run()
        logging.getLogger("mw.test").warning("outside")
    inside, outside = (r for r in caplog.records if r.name == "mw.test")
    assert (inside.task_id, inside.queue, inside.worker, inside.attempt) == (task_id, "jobs", "mw_outcomes", 1)  # type: ignore[attr-defined]
    assert outside.task_id == "-"  # type: ignore[attr-defined]


def test_a_producer_middleware_adds_meta_the_worker_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    (tmp_path / "asynctask.yaml").write_text(
        f"asynctask_transport: '{url}'\nasynctask_middleware: [{__name__}.Recorder]\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in ("ASYNCTASK_TRANSPORT", "ASYNCTASK_CONFIG", "ASYNCTASK_EAGER"):
        monkeypatch.delenv(name, raising=False)
    transport = get_transport()
    transport.submit_task("jobs", {"n": 1}, meta={"fn": "x"})
    transport.submit_tasks("jobs", [{"n": 2}])
    make_runner(MemoryTransport(url), "jobs", Outcomes(), halt=HALT_IDLE).run()
    assert [e[1] for e in EVENTS if e[0] == "meta"] == [{"fn": "x", "trace_id": "t-123"}, {"trace_id": "t-123"}]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("nodots", "'nodots' is not a dotted path"),
        ("no_such_module_xyz.Thing", "cannot import module 'no_such_module_xyz'"),
        (f"{__name__}.Missing", f"module '{__name__}' has no 'Missing'"),
        (f"{__name__}.EVENTS", "is not a class"),
    ],
)
def test_a_bad_middleware_path_is_one_line_naming_it(path: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match="asynctask_middleware") as caught:
        load_middleware([path])
    assert expected in caught.value.message
