"""``asynctask-workers --scheduler`` as subprocesses: several nodes, each fire submitted and run once.

For each of Redis, PostgreSQL and the filesystem store, three supervisors run ``--scheduler`` on the
same store with a ``second: "*/2"`` entry for 20 s of observation (the three transports run at the
same time, to keep the wall time near 30 s).  Each scheduler logs every fire it submitted, and the
worker appends the task id of every run to a file, so the checks count: each fire time is submitted
once (by one of the three), the fire times have no gap, and the worker ran each submitted task once.
After 14 s the supervisor that submitted the latest fire is killed (SIGKILL); the following fires
must still be submitted once by the other two.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import PGSQL_HOST, PGSQL_PORT, REDIS_HOST, REDIS_PORT, port_answers, require_service

pytestmark = pytest.mark.slow

WORKER_MODULE = """
import os, time
from asynctask.workers import AsyncTaskWorker

class SchedTick(AsyncTaskWorker):
    name = "sched_tick"

    def process(self, payload):
        with open(payload["file"], "a") as stream:
            stream.write(f"{self.task.id} {os.getpid()} {time.time():.3f}\\n")
"""

BEFORE_KILL_S = 14.0  # observation before the kill; about 6 s more follow it (20 s in all)
FIRES_AFTER_KILL = 3
FIRE_RE = re.compile(r"fire (\S+) -> queue (\S+), task ([0-9a-f]{32})")
UNIQUE = uuid.uuid4().hex[:10]


def write_worker_module(directory: Path) -> None:
    (directory / "sched_cli_workers.py").write_text(WORKER_MODULE)


def start(
    directory: Path, url: str, log: Path, *, scheduler: bool = True, settings: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start asynctask-workers in its own session (so cleanup can end its whole process group)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_")}
    env["PYTHONPATH"] = str(directory)
    argv = [sys.executable, "-m", "asynctask.cli.workers", "--transport", url, "--require", "sched_cli_workers"]
    argv += ["--scheduler"] if scheduler else []
    for setting in settings:
        argv += ["--set", setting]
    with open(log, "wb") as stream:
        return subprocess.Popen(
            argv, cwd=directory, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )


def entries_setting(runs: Path, **cron: Any) -> str:
    entry = {"worker": "sched_tick", **(cron or {"second": "*/2"}), "payload": {"file": str(runs)}}
    return "asynctask_scheduled_workers=" + json.dumps([entry])


def end_group(process: subprocess.Popen[bytes]) -> None:
    """Kill what is left of a supervisor this test started (its session: the supervisor and children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def fires_in(log: Path) -> list[tuple[datetime, str]]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(datetime.fromisoformat(m.group(1)), m.group(3)) for m in FIRE_RE.finditer(text)]


def wait_for(condition: Any, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return bool(condition())


@dataclass
class GroupResult:
    name: str
    skip: str = ""
    error: str = ""
    fires: list[tuple[datetime, int, str]] = field(default_factory=list)  # (fire time, supervisor, task id)
    runs: list[str] = field(default_factory=list)  # task ids the worker ran
    killed: int = -1
    kill_after: datetime | None = None
    logs: list[str] = field(default_factory=list)


def run_group(name: str, url: str, directory: Path, result: GroupResult) -> None:
    """Three supervisors on ``url``; kill the one that submitted the latest fire; collect everything."""
    directory.mkdir(parents=True, exist_ok=True)
    write_worker_module(directory)
    runs = directory / "runs.txt"
    logs = [directory / f"supervisor{i}.log" for i in range(3)]
    processes = [start(directory, url, log, settings=(entries_setting(runs),)) for log in logs]
    try:
        if not wait_for(lambda: all("scheduler running" in log.read_text() for log in logs), 60):
            result.error = "the supervisors did not all start their scheduler within 60 s"
            return
        time.sleep(BEFORE_KILL_S)
        latest = max((fire, index) for index, log in enumerate(logs) for fire, _ in fires_in(log))
        result.kill_after, result.killed = latest
        processes[result.killed].send_signal(signal.SIGKILL)
        processes[result.killed].wait(10)

        def later_fires() -> int:
            return len({f for log in logs for f, _ in fires_in(log) if f > latest[0]})

        wait_for(lambda: later_fires() >= FIRES_AFTER_KILL, FIRES_AFTER_KILL * 2 + 10)
        submitted = {task for log in logs for _, task in fires_in(log)}
        wait_for(lambda: runs.exists() and submitted <= set(runs.read_text().split()[::3]), 20)
        for index, process in enumerate(processes):
            if index != result.killed:
                process.send_signal(signal.SIGTERM)
        for index, process in enumerate(processes):
            if index != result.killed:
                process.wait(40)
    except Exception as exc:  # reported by the test of this group
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for process in processes:
            end_group(process)
        result.fires = [(fire, index, task) for index, log in enumerate(logs) for fire, task in fires_in(log)]
        result.runs = runs.read_text().split()[::3] if runs.exists() else []
        result.logs = [log.read_text(errors="replace")[-3000:] for log in logs]


def _redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=9)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _pgsql_cleanup(schema: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host=PGSQL_HOST, port=PGSQL_PORT, user="postgres", dbname="test")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connection.close()


def _group_specs(root: Path) -> dict[str, tuple[str, str, Any]]:
    """name -> (url, reason to skip or "", cleanup)."""
    specs: dict[str, tuple[str, str, Any]] = {}
    prefix = f"sched{UNIQUE}"
    if importlib.util.find_spec("asynctask.transports.redis") is None:
        skip = "asynctask/transports/redis.py does not exist yet"
    else:
        skip = "" if port_answers(REDIS_HOST, REDIS_PORT) else "service"
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/9?key_prefix={prefix}"
    specs["redis"] = (url, skip, lambda: _redis_cleanup(prefix))
    if importlib.util.find_spec("asynctask.transports.pgsql") is None:
        skip = "asynctask/transports/pgsql.py does not exist yet"
    else:
        skip = "" if port_answers(PGSQL_HOST, PGSQL_PORT) else "service"
    url = f"postgresql://postgres@{PGSQL_HOST}:{PGSQL_PORT}/test?schema={prefix}"
    specs["pgsql"] = (url, skip, lambda: _pgsql_cleanup(prefix))
    specs["filesystem"] = (f"filesys:{root / 'filesystem' / 'store'}", "", lambda: None)
    return specs


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GroupResult]]:
    """Run the three transports' groups at the same time; each test then checks one of them."""
    root = tmp_path_factory.mktemp("scheduler_cli")
    specs = _group_specs(root)
    results = {name: GroupResult(name, skip=skip) for name, (_, skip, _) in specs.items()}
    threads = [
        threading.Thread(target=run_group, args=(name, url, root / name, results[name]))
        for name, (url, skip, _) in specs.items()
        if not skip
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    yield results
    for _name, (_, skip, cleanup) in specs.items():
        if not skip:
            with contextlib.suppress(Exception):
                cleanup()


SERVICES = {"redis": ("redis", REDIS_HOST, REDIS_PORT), "pgsql": ("postgresql", PGSQL_HOST, PGSQL_PORT)}


@pytest.mark.parametrize("name", ["redis", "pgsql", "filesystem"])
def test_three_schedulers_submit_and_run_each_fire_once(groups: dict[str, GroupResult], name: str) -> None:
    result = groups[name]
    if result.skip == "service":
        require_service(*SERVICES[name])
    if result.skip:
        pytest.skip(result.skip)
    logs = "\n---\n".join(result.logs)
    assert not result.error, f"{result.error}\n{logs}"
    times = [fire for fire, _, _ in result.fires]
    doubled = [t for t, n in collections.Counter(times).items() if n > 1]
    assert not doubled, f"fires submitted twice: {doubled}\n{logs}"
    ordered = sorted(times)
    # The entry fires every 2 s: from the first fire to the last, none is missing.
    expected = [ordered[0] + timedelta(seconds=2 * i) for i in range(len(ordered))]
    assert ordered == expected, f"missing fires: {sorted(set(expected) - set(ordered))}\n{logs}"
    assert len(ordered) >= 8, f"only {len(ordered)} fires in about 20 s\n{logs}"
    # More than one node submitted (the claim decides, not who started first) ...
    assert len({index for _, index, _ in result.fires}) >= 2
    # ... and after the kill the other two went on, once per fire.
    assert result.kill_after is not None
    after = sorted((fire, index) for fire, index, _ in result.fires if fire > result.kill_after)
    assert len(after) >= FIRES_AFTER_KILL, f"fires after the kill: {after}\n{logs}"
    assert after[0][0] == result.kill_after + timedelta(seconds=2)
    assert all(index != result.killed for _, index in after)
    by = collections.Counter(index for _, index, _ in result.fires)
    print(
        f"{name}: {len(ordered)} fires, {len(after)} after killing supervisor {result.killed}; by supervisor {dict(by)}"
    )
    # The worker ran once per fire.
    submitted = sorted(task for _, _, task in result.fires)
    ran = collections.Counter(result.runs)
    assert not [t for t, n in ran.items() if n > 1], "a task ran twice"
    assert sorted(ran) == submitted, f"ran {len(ran)} tasks for {len(submitted)} fires\n{logs}"


# -- one node: configuration errors, no --scheduler, no entries --------------------------------------


def test_bad_entries_fail_with_one_line_and_exit_2(tmp_path: Path) -> None:
    write_worker_module(tmp_path)
    runs = tmp_path / "runs.txt"
    bad = {
        "bad cron field": entries_setting(runs, minute=61),
        "bad crontab": entries_setting(runs, crontab="0 3 * *"),
        "unknown worker": 'asynctask_scheduled_workers=[{"worker": "no_such_worker", "second": 1}]',
        "both": 'asynctask_scheduled_workers=[{"worker": "sched_tick", "command": "true", "second": 1}]',
        "neither": 'asynctask_scheduled_workers=[{"second": 1}]',
    }
    url = f"filesys:{tmp_path / 'store'}"
    processes = {
        case: start(tmp_path, url, tmp_path / f"{i}.log", settings=(setting,))
        for i, (case, setting) in enumerate(bad.items())
    }
    for i, (case, process) in enumerate(processes.items()):
        try:
            code = process.wait(60)
        finally:
            end_group(process)
        output = (tmp_path / f"{i}.log").read_text()
        assert code == 2, (case, code, output)
        assert len(output.strip().splitlines()) == 1, (case, output)
        assert output.startswith("asynctask-workers: ") and "asynctask_scheduled_workers" in output, (case, output)
    assert "minute" in (tmp_path / "0.log").read_text()
    assert "no_such_worker" in (tmp_path / "2.log").read_text()
    assert not runs.exists()


def test_without_scheduler_nothing_is_scheduled_and_without_entries_one_line_says_so(tmp_path: Path) -> None:
    write_worker_module(tmp_path)
    runs = tmp_path / "runs.txt"
    plain_url, empty_url = f"filesys:{tmp_path / 'plain'}", f"filesys:{tmp_path / 'empty'}"
    plain = start(
        tmp_path, plain_url, tmp_path / "plain.log", scheduler=False, settings=(entries_setting(runs, second="*"),)
    )
    empty = start(
        tmp_path, empty_url, tmp_path / "empty.log", settings=('asynctask_workers={"sched_q": "sched_tick"}',)
    )
    try:
        # The scheduled worker's queue is consumed, but no fire is ever submitted.
        assert wait_for(lambda: "started on queue scheduled_sched_tick" in (tmp_path / "plain.log").read_text(), 60)
        assert wait_for(lambda: "started on queue sched_q" in (tmp_path / "empty.log").read_text(), 60)
        time.sleep(3)
        for process in (plain, empty):
            process.send_signal(signal.SIGTERM)
        assert plain.wait(40) == 0
        assert empty.wait(40) == 0
    finally:
        end_group(plain)
        end_group(empty)
    plain_log, empty_log = (tmp_path / "plain.log").read_text(), (tmp_path / "empty.log").read_text()
    assert not runs.exists()
    assert "asynctask.scheduler" not in plain_log
    from asynctask.transports import get_transport

    with get_transport(plain_url) as transport:
        assert transport.stats("scheduled_sched_tick").ready == 0
    said = [line for line in empty_log.splitlines() if "asynctask.scheduler" in line]
    assert len(said) == 1, empty_log
    assert said[0].endswith("scheduler: no entries in asynctask_scheduled_workers; nothing is scheduled")


def test_command_entries_run_without_a_shell_and_a_failure_is_a_failed_attempt(tmp_path: Path) -> None:
    write_worker_module(tmp_path)
    out = tmp_path / "command-runs.txt"
    script = f"open({str(out)!r}, 'a').write('ran\\n')"
    entries = [
        {"command": [sys.executable, "-c", script], "second": "*"},
        {"command": f"{sys.executable} -c 'raise SystemExit(7)'", "second": "*/2"},
    ]
    url = f"filesys:{tmp_path / 'store'}"
    log = tmp_path / "command.log"
    process = start(tmp_path, url, log, settings=("asynctask_scheduled_workers=" + json.dumps(entries),))
    from asynctask.transports import get_transport

    try:
        with get_transport(url) as transport:
            assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 60), log.read_text()
            assert wait_for(lambda: transport.stats("scheduled_command").dead >= 1, 30), log.read_text()
            (dead, *_) = transport.dead_tasks("scheduled_command")
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
    finally:
        end_group(process)
    assert "exit status 7" in dead.reason
    assert dead.payload == {"command": [sys.executable, "-c", "raise SystemExit(7)"]}
    text = log.read_text()
    assert "started worker command on queue scheduled_command" in text


def test_every_node_checks_entries_and_consumes_every_target_queue(tmp_path: Path) -> None:
    """Without --scheduler a bad cron field still stops the node; `worker: command` and an entry's
    own `queue` are served by every supervisor."""
    write_worker_module(tmp_path)
    runs = tmp_path / "runs.txt"
    bad = start(
        tmp_path,
        f"filesys:{tmp_path / 'bad'}",
        tmp_path / "bad.log",
        scheduler=False,
        settings=(entries_setting(runs, minute=61),),
    )
    try:
        assert bad.wait(60) == 2
    finally:
        end_group(bad)
    bad_log = (tmp_path / "bad.log").read_text().strip()
    assert len(bad_log.splitlines()) == 1 and "minute" in bad_log, bad_log

    entries = [
        {"worker": "sched_tick", "queue": "own_target", "hour": 3, "payload": {"file": str(runs)}},
        {"worker": "command", "hour": 3},
    ]
    url = f"filesys:{tmp_path / 'store'}"
    log = tmp_path / "good.log"
    process = start(
        tmp_path, url, log, scheduler=False, settings=("asynctask_scheduled_workers=" + json.dumps(entries),)
    )
    from asynctask.transports import get_transport

    try:
        assert wait_for(lambda: "started on queue own_target" in log.read_text(), 60), log.read_text()
        assert wait_for(lambda: "on queue scheduled_command" in log.read_text(), 60), log.read_text()
        with get_transport(url) as transport:
            transport.submit_task("own_target", {"file": str(runs)})
            assert wait_for(lambda: runs.exists() and len(runs.read_text().splitlines()) == 1, 30), log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
    finally:
        end_group(process)
