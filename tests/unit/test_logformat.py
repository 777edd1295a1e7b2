"""``--log-format json``: the formatter (asynctask.logformat) and the logging set-up of the workers."""

from __future__ import annotations

import io
import json
import logging
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from asynctask.logformat import JsonFormatter, make_formatter
from asynctask.middleware import load_middleware
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers import child as child_module
from asynctask.workers.aio import make_runner
from asynctask.workers.child import ChildSpec, configure_logging
from asynctask.workers.runner import HALT_IDLE


class Logs(AsyncTaskWorker):
    name = "logformat_logs"

    def process(self, payload: dict[str, Any]) -> None:
        logging.getLogger("logformat.test").warning("working on %s", payload["n"])


def format_one(message: str, *args: object, **kwargs: Any) -> dict[str, Any]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"logformat.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning(message, *args, **kwargs)
    (line,) = stream.getvalue().splitlines()
    value: dict[str, Any] = json.loads(line)
    return value


def test_a_record_is_one_json_line_with_time_level_logger_message_process() -> None:
    line = format_one("two\nlines: %s and %d", "x", 3)
    assert list(line)[:6] == ["time", "level", "logger", "message", "process", "process_name"]
    assert line["message"] == "two\nlines: x and 3" and line["level"] == "WARNING"
    assert line["logger"].startswith("logformat.") and isinstance(line["process"], int)
    assert line["time"].endswith("Z") and datetime.fromisoformat(line["time"]).tzinfo is not None
    assert "task_id" not in line and "exception" not in line


def test_exceptions_stacks_and_extra_fields_are_kept() -> None:
    try:
        raise KeyError("gone")
    except KeyError:
        line = format_one("failed", exc_info=True, stack_info=True, extra={"order": 12, "when": object()})
    assert line["exception"].startswith("Traceback") and "KeyError: 'gone'" in line["exception"]
    assert line["stack"].startswith("Stack (most recent call last)")
    assert line["order"] == 12 and line["when"].startswith("<object object")


def test_the_task_fields_of_the_logging_middleware_while_a_task_runs() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("logformat.test")
    logger.addHandler(handler)
    try:
        transport = MemoryTransport(f"memory://{uuid.uuid4().hex}")
        task_id = transport.submit_task("jobs", {"n": 4})
        chain = load_middleware(["asynctask.middleware.LoggingContext"])
        assert chain is not None
        chain.on_worker_start(Logs())
        make_runner(transport, "jobs", Logs(), halt=HALT_IDLE, middleware=chain).run()
        logger.warning("after the task")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "working on 4"
    assert (inside["task_id"], inside["queue"], inside["worker"], inside["attempt"]) == (
        task_id,
        "jobs",
        "logformat_logs",
        1,
    )
    assert "task_id" not in outside and "queue" not in outside


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    configure_logging(logging.INFO, False)  # the children's default back to text
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_configure_logging_json_is_the_childrens_default_and_adds_the_task_fields(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(logging.INFO, False, "json")
    spec = ChildSpec(queue="jobs", worker="w", transport_url="memory://x", middleware=("my.Middleware",))
    assert spec.log_format == "json"
    assert child_module._middleware_paths(spec) == ("asynctask.middleware.LoggingContext", "my.Middleware")
    logging.getLogger("logformat.test").info("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "hello"
    assert lines[1]["logger"] == "py.warnings" and "careful" in lines[1]["message"]
    configure_logging(logging.INFO, False)
    spec = ChildSpec(queue="jobs", worker="w", transport_url="memory://x", middleware=("my.Middleware",))
    assert spec.log_format == "text" and child_module._middleware_paths(spec) == ("my.Middleware",)


def test_an_unknown_format_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="invalid log format 'xml'; allowed: text, json"):
        make_formatter("xml", "%(message)s")
