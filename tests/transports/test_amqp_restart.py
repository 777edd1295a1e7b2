"""RabbitMQ restarting mid-drain (``rabbitmqctl stop_app`` / ``start_app`` on the SHARED broker).

Short on purpose, and it waits for the broker to answer AMQP again before it ends, even when it
fails, so the tests after it find the broker up.  Run it last (it is marked ``slow``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from harness_amqp import cleanup, make_url
from support import AMQP_HOST, AMQP_PORT, require_service

from asynctask.errors import TransportError, TransportUnavailableError
from asynctask.task import QueueStats
from asynctask.transports.amqp import AmqpTransport

pytestmark = pytest.mark.slow

TASKS = 1500


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=90)


def wait_for_broker(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            AmqpTransport(url).close()
            return
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_broker_restart_mid_drain_loses_nothing_and_acks_no_delivery_twice() -> None:
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    url = make_url()
    producer = AmqpTransport(url)
    ids = set()
    for start in range(0, TASKS, 500):
        ids |= set(producer.submit_tasks("restart", [{"n": n} for n in range(start, start + 500)]))
    acked: dict[str, list[int]] = defaultdict(list)  # id -> attempts of each delivery acked
    outages = []
    done = threading.Event()

    def consume() -> None:
        consumer = None
        idle = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and idle < 3:
            try:
                consumer = consumer or AmqpTransport(url)
                tasks = consumer.get_tasks("restart", 50, timeout_s=0.5)
                time.sleep(0.002 * len(tasks))  # "work", so the drain lasts through the restart
                consumer.ack_tasks(tasks)
            except TransportUnavailableError as exc:
                outages.append(str(exc))
                time.sleep(0.2)
                continue
            for task in tasks:
                acked[task.id].append(task.attempts)
            idle = 0 if tasks or len(acked) < len(ids) else idle + 1
        if consumer is not None:
            consumer.close()
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    stopped = False
    try:
        while len(acked) < 300 and thread.is_alive():
            time.sleep(0.01)
        rabbitmqctl("stop_app")
        stopped = True
        time.sleep(0.5)
    finally:
        if stopped:
            rabbitmqctl("start_app")
        wait_for_broker(url)
        thread.join(150)
    try:
        assert done.is_set()
        assert outages, "the consumer never noticed the restart"
        assert set(acked) == ids  # every task processed
        twice = {task_id: attempts for task_id, attempts in acked.items() if len(attempts) > 1}
        # A task is acked again only through a later delivery (its first ack died with the broker).
        assert all(attempts[-1] >= 2 for attempts in twice.values()), twice
        assert len(twice) <= 200
        for _ in range(3):  # the producer's connection died too: one error at most, then it works
            with contextlib.suppress(TransportUnavailableError):
                assert producer.stats("restart") == QueueStats()
                break
        else:
            pytest.fail("the producer did not reconnect")
    finally:
        producer.close()
        cleanup(url)


ACCEPTANCE = Path(__file__).resolve().parent.parent / "acceptance"  # workers_fixture.py: acc_slow
CLI = str(Path(sys.executable).parent / "asynctask-workers")


def test_workers_through_a_kill_9_and_a_broker_restart_process_every_task(tmp_path: Path) -> None:
    """asynctask-workers on RabbitMQ: its child is killed mid-drain, then the broker restarts."""
    require_service("rabbitmq", AMQP_HOST, AMQP_PORT)
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    url = make_url()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "asynctask.yaml"
    config.write_text(
        json.dumps(
            {
                "asynctask_transport": url,
                "asynctask_require": ["workers_fixture"],
                "asynctask_workers": {"jobs": "acc_slow"},
                "asynctask_workers_poll_interval": 50,
                "asynctask_workers_check_child_interval": 100,
                "asynctask_shutdown_timeout": 10,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ACCEPTANCE), os.environ.get("PYTHONPATH", "")])}
    env.pop("ASYNCTASK_TRANSPORT", None)
    producer = AmqpTransport(url)
    ids = set()
    for start in range(0, 3000, 1000):
        ids |= set(
            producer.submit_tasks(
                "jobs", [{"out": str(out), "sleep_s": 0.002, "n": n} for n in range(start, start + 1000)]
            )
        )
    producer.close()

    def records() -> list[dict[str, object]]:
        if not out.exists():
            return []
        return [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]

    def wait_for_records(count: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + 60
        while len(found := records()) < count:
            assert time.monotonic() < deadline, f"only {len(found)} tasks processed"
            time.sleep(0.02)
        return found

    process = subprocess.Popen(
        [CLI, "--config", str(config), "--halt-when-empty"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    stopped = False
    try:
        killed = int(str(wait_for_records(300)[-1]["pid"]))
        os.kill(killed, signal.SIGKILL)
        wait_for_records(800)  # 2 ms a task: the restart comes well before the end
        rabbitmqctl("stop_app")
        stopped = True
        time.sleep(0.5)
        rabbitmqctl("start_app")
        stopped = False
        wait_for_broker(url)
        _, err = process.communicate(timeout=120)
    finally:
        if stopped:
            rabbitmqctl("start_app")
            wait_for_broker(url)
        if process.poll() is None:
            process.kill()
            process.communicate()
    try:
        assert process.returncode == 0, err[-2000:]
        assert "was killed by signal SIGKILL" in err
        assert "transport unavailable" in err and "reachable again" in err  # the restart came mid-drain
        done = records()
        by_id: dict[str, list[int]] = defaultdict(list)
        for record in done:
            by_id[str(record["id"])].append(int(str(record["attempts"])))
        assert set(by_id) == ids  # every task processed
        again = {task_id: attempts for task_id, attempts in by_id.items() if len(attempts) > 1}
        # processed again only through a later delivery (the kill or the restart lost its ack)
        assert all(attempts == sorted(set(attempts)) for attempts in again.values()), again
        with contextlib.closing(AmqpTransport(url)) as check:
            assert check.stats("jobs") == QueueStats()
    finally:
        cleanup(url)
