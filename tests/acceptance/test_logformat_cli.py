"""``asynctask-workers --log-format json`` on the filesystem transport: every line of stderr (the
supervisor's and the children's) is one JSON object; a worker's line carries its task's fields
(``asynctask_middleware`` does not list LoggingContext: JSON logs add it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workers_support import Env

from asynctask.cli.exit_codes import EXIT_OK, EXIT_USAGE

QUEUES = {"plain": "acc_observed", "lanes": "acc_observed_threads", "coros": "acc_observed_async"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.close()


def test_every_line_is_json_and_a_workers_line_carries_its_task(world: Env) -> None:
    config = world.config(QUEUES, asynctask_require=["observe_fixture"])
    ids = {queue: world.transport.submit_task(queue, {"n": 1}) for queue in QUEUES}
    failed = world.transport.submit_task("plain", {"n": 2, "fail": True})

    result = world.run("--log-format", "json", "--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr

    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message", "process"} <= set(line) for line in lines)
    assert {line["process_name"] for line in lines} > {"MainProcess"}  # the children's lines too
    working = {line["queue"]: line for line in lines if line["message"] == "working on 1"}
    assert set(working) == set(QUEUES)
    for queue, line in working.items():
        assert (line["task_id"], line["worker"], line["attempt"]) == (ids[queue], QUEUES[queue], 1)
        assert line["logger"] == "observe_fixture" and line["level"] == "INFO"
    (dead,) = (line for line in lines if "dead-lettered" in line["message"])
    assert dead["task_id"] == failed and dead["level"] == "ERROR"
    assert all("task_id" not in line for line in lines if line["process_name"] == "MainProcess")


def test_text_stays_the_default(world: Env) -> None:
    config = world.config({"plain": "acc_observed"}, asynctask_require=["observe_fixture"])
    world.transport.submit_task("plain", {"n": 1})
    result = world.run("--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert "observe_fixture: working on 1" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


def test_the_commands_own_messages_are_json_lines_too(world: Env) -> None:
    result = world.run("--log-format", "json", "--config", world.config({}), "--halt-when-empty")
    assert result.returncode == EXIT_OK
    (line,) = (json.loads(text) for text in result.stderr.splitlines())
    assert line["level"] == "INFO" and line["message"].startswith("No workers configured; terminating.\nlooked for")
    result = world.run("--log-format", "json", "--set", "asynctask_workers={jobs: no_such_worker}")
    assert result.returncode == EXIT_USAGE
    (line,) = (json.loads(text) for text in result.stderr.splitlines())
    assert line["level"] == "ERROR" and "no_such_worker" in line["message"]
    assert line["message"].startswith("asynctask-workers: ")
