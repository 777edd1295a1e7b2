"""asynctask-workers on RabbitMQ as a subprocess: a refused login or an unknown vhost is one line
and exit 3 (as on Redis and PostgreSQL), and an idle worker at the default level logs nothing of
pika's: no channel chatter, no "NOT_FOUND - no queue" warning at a first start."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AMQP_HOST, AMQP_PORT, require_service
from workers_support import Env

from asynctask.cli.exit_codes import EXIT_OK, EXIT_UNAVAILABLE

pytest.importorskip("pika")

from asynctask.transports.amqp import AmqpTransport


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    env = Env(tmp_path)
    yield env
    env.close()


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A URL whose queues no other test uses; they are deleted afterwards."""
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F?prefix=asynctask_cli_{uuid.uuid4().hex[:8]}"
    yield url
    with contextlib.closing(AmqpTransport(url)) as transport:
        channel = transport.connection.conn.channel()
        for name in transport.admin.registered_names():
            channel.queue_delete(name)


def workers_args(url: str) -> list[str]:
    return ["--transport", url, "--require", "workers_fixture", "--set", "asynctask_workers={jobs: acc_record}"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"amqp://guest:wrong-secret@{AMQP_HOST}:{AMQP_PORT}/%2F",
            f"RabbitMQ at {AMQP_HOST}:{AMQP_PORT} refused the login of user 'guest'",
        ),
        (
            f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/no_such_vhost_x",
            f"RabbitMQ at {AMQP_HOST}:{AMQP_PORT} denied access to vhost 'no_such_vhost_x'",
        ),
    ],
)
def test_refused_login_or_unknown_vhost_is_one_line_and_exit_3(world: Env, url: str, expected: str) -> None:
    result = world.run(*workers_args(url), "--halt-when-empty")
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("asynctask-workers: transport unavailable: " + expected)
    assert "wrong-secret" not in result.stderr and "guest:***@" in line


def run_idle(world: Env, url: str, seconds: float) -> str:
    """Start the workers on an empty queue, stop them with SIGTERM after ``seconds``; stderr."""
    process = world.start(*workers_args(url))
    time.sleep(seconds)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    assert process.returncode == EXIT_OK, err
    return err


def test_a_first_start_has_no_missing_queue_warning_nor_pika_lines_of_the_supervisor(world: Env, amqp_url: str) -> None:
    err = run_idle(world, amqp_url, 2.0)
    assert "worker acc_record started on queue jobs" in err
    assert "NOT_FOUND" not in err and "WARNING" not in err
    supervisor_lines = [line for line in err.splitlines() if "[MainProcess]" in line]
    assert supervisor_lines and [line for line in supervisor_lines if "pika" in line] == []


def test_an_idle_worker_logs_nothing_of_pika(world: Env, amqp_url: str) -> None:
    err = run_idle(world, amqp_url, 3.0)
    assert "pika" not in err, err
