"""Issue 15 through the command line: ``every_s`` entries, ``@periodic_task``, ``asynctask schedules``
and ``asynctask_middleware``, with ``asynctask-workers`` run as subprocesses.

The workers, the middleware and the periodic task are in schedules_fixture.py; each appends a JSON
line per run (or hook call) to a file, and each supervisor logs to a file of its own, whose
``fire <time> -> queue <queue>, task <id>`` lines tell which fire each task came from.

1. Three supervisors with ``--scheduler`` and an ``every_s: 2`` entry, stopped ~11 s after the first
   scheduler started: 5 or 6 runs, each fire time submitted by one of them, each task run once
   (filesystem, Redis, PostgreSQL).
2. ``@periodic_task(every_s=1)`` in a required module: one fire a second, each run; ``asynctask
   schedules`` lists it (where defined, trigger) before it ran and with its last fire after.
3. ``asynctask_middleware`` in ./asynctask.yaml: a producer's ``get_transport()`` adds a meta key the
   worker reads; the workers' hooks see each attempt with ``acked``, ``retried`` and ``dead``.
4. ``every_s`` beside a cron field, or 0: refused at start, exit 2, one line naming the entry.

The runs are stopped between two fires (:func:`sleep_until_between_fires`), so the last fire has
run and the next is not due: the counts do not depend on where the window falls.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from schedules_fixture import HOOKS_ENV, META_KEY, TICKS_ENV, TICKS_QUEUE
from workers_support import CLI, FAST, Env, stop, transport_world, wait_for

from asynctask.cli.exit_codes import EXIT_OK, EXIT_USAGE

pytestmark = pytest.mark.slow

ADMIN = str(Path(CLI).parent / "asynctask")
FIRE_RE = re.compile(r"fire (\S+) -> queue (\S+), task ([0-9a-f]{32})")
READY = "scheduler running"


def write_config(world: Env, **settings: Any) -> str:
    """./asynctask.yaml in the test's directory, requiring schedules_fixture (no asynctask_workers unless given)."""
    data = {"asynctask_transport": world.url, "asynctask_require": ["schedules_fixture"], **FAST, **settings}
    path = world.tmp / "asynctask.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def start(world: Env, log: Path, *args: str) -> subprocess.Popen[str]:
    """``asynctask-workers ARGS`` in the background, its stdout and stderr in ``log``."""
    with open(log, "w", encoding="utf-8") as stream:
        return subprocess.Popen(
            [CLI, *args], env=world.env, cwd=world.tmp, stdout=stream, stderr=subprocess.STDOUT, text=True
        )


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read(path).splitlines() if line.strip()]


def fires(log: Path, queue: str) -> list[tuple[datetime, str]]:
    """The (fire time, task id) of every fire the supervisor logging to ``log`` submitted to ``queue``."""
    return [(datetime.fromisoformat(m[1]), m[3]) for m in FIRE_RE.finditer(read(log)) if m[2] == queue]


def sleep_until_between_fires(deadline: float, every_s: int) -> float:
    """Sleep until the middle between two fires (fires are at multiples of ``every_s`` since the
    epoch) nearest ``deadline``: the last fire before has had time to run, the next is not due yet."""
    middle = every_s * round((deadline - every_s / 2) / every_s) + every_s / 2
    time.sleep(max(middle - time.time(), 0))
    return middle


def terminate_all(processes: list[subprocess.Popen[str]]) -> None:
    """SIGTERM to every supervisor at once, then wait for each (killing one that hangs)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:  # no second SIGTERM (stop() would send one): that one forces the shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- 1. three schedulers, one every_s entry ---------------------------------------------------------

WINDOW_S = 11.0


@pytest.mark.parametrize("transport", ["filesystem", "redis", "pgsql"])
def test_three_schedulers_run_an_every_2_s_entry_once_per_fire(tmp_path: Path, transport: str) -> None:
    with transport_world(transport, tmp_path) as world:
        entry = {"worker": "sched_fx_tick", "every_s": 2, "payload": {"out": world.out}}
        config = write_config(world, asynctask_scheduled_workers=[entry])
        logs = [world.tmp / f"supervisor{n}.log" for n in range(3)]
        processes: list[subprocess.Popen[str]] = []
        try:
            processes += [start(world, log, "--config", config, "--scheduler") for log in logs]
            wait_for(lambda: any(READY in read(log) for log in logs), timeout=60, what="a scheduler to start")
            ready = time.time()
            stopped = sleep_until_between_fires(ready + WINDOW_S, 2)
            assert all(process.poll() is None for process in processes)
        finally:
            terminate_all(processes)
        texts = [read(log) for log in logs]
        assert [process.returncode for process in processes] == [EXIT_OK] * 3, "\n".join(t[-2000:] for t in texts)
        assert all(READY in text for text in texts), "not every supervisor ran its scheduler"

        queue = "scheduled_sched_fx_tick"
        submitted = [(fire, task_id, n) for n, log in enumerate(logs) for fire, task_id in fires(log, queue)]
        runs = world.records()
        print(
            f"{transport}: window {stopped - ready:.1f} s, {len(runs)} runs; fires by supervisor:",
            [(fire.strftime("%S"), n) for fire, _, n in sorted(submitted)],
        )
        fire_times = Counter(fire for fire, _, _ in submitted)
        assert all(count == 1 for count in fire_times.values()), fire_times  # each fire submitted by one
        assert all(fire.timestamp() % 2 == 0 for fire in fire_times)  # at 0 + k * 2 s
        run_ids = Counter(run["id"] for run in runs)
        assert all(count == 1 for count in run_ids.values()), run_ids  # each task ran once
        assert set(run_ids) == {task_id for _, task_id, _ in submitted}  # every submitted task ran
        assert len(runs) in (5, 6), runs
        times = sorted(run["at"] for run in runs)
        gaps = [round(later - earlier, 2) for earlier, later in itertools.pairwise(times)]
        assert all(gap > 1.0 for gap in gaps), gaps  # never twice for one fire time


# -- 2. @periodic_task(every_s=1), and asynctask schedules ------------------------------------------


@pytest.mark.parametrize("transport", ["filesystem", "redis"])
def test_a_periodic_task_runs_every_second_and_asynctask_schedules_lists_it(tmp_path: Path, transport: str) -> None:
    with transport_world(transport, tmp_path) as world:
        ticks = world.tmp / "ticks.jsonl"
        world.env[TICKS_ENV] = str(ticks)
        config = write_config(world)
        name = "schedules_fixture.tick"

        def schedules() -> list[str]:
            listed = subprocess.run(
                [ADMIN, "schedules", "--config", config],
                env=world.env,
                cwd=world.tmp,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert listed.returncode == EXIT_OK, listed.stderr
            return listed.stdout.splitlines()

        before = schedules()
        assert before[0] == f"@periodic_task({name}): function {name!r} -> queue {TICKS_QUEUE}", before
        assert before[1].startswith("    when:  every 1 s from 1970-01-01T00:00:00+00:00 (UTC)"), before
        assert before[3] == "    last:  -", before  # it never ran

        log = world.tmp / "supervisor.log"
        process = start(world, log, "--config", config, "--scheduler")
        try:
            wait_for(lambda: READY in read(log), timeout=60, what="the scheduler to start")
            ready = time.time()
            stopped = sleep_until_between_fires(ready + 5, 1)
        finally:
            stop(process, timeout=30)
        assert process.returncode == EXIT_OK, read(log)[-3000:]
        submitted = fires(log, TICKS_QUEUE)
        runs = lines(ticks)
        print(f"{transport}: {len(runs)} runs in {stopped - ready:.1f} s")
        assert 4 <= len(runs) <= 7, (runs, read(log)[-3000:])
        assert len(runs) == len(submitted)
        seconds = [fire.timestamp() for fire, _ in submitted]
        assert seconds == [seconds[0] + n for n in range(len(seconds))]  # once a second, none missed
        assert all(math.floor(run["at"]) >= seconds[0] for run in runs)

        after = schedules()
        last_fire, last_task = submitted[-1]
        assert after[0] == before[0] and after[1] == before[1]
        assert after[3] == f"    last:  {last_fire.isoformat()} (task {last_task})", (after, submitted[-1])


# -- 3. middleware in the config file: workers and a producer ----------------------------------------

PRODUCER = """
import json
from asynctask import get_transport

transport = get_transport()
ids = [transport.submit_task("sched_fx_mw", {"out": OUT, "kind": kind}) for kind in ("ok", "once", "always")]
transport.close()
print(json.dumps(ids))
"""


@pytest.mark.parametrize("transport", ["filesystem", "redis"])
def test_config_middleware_sees_each_outcome_and_adds_meta_from_a_producer(tmp_path: Path, transport: str) -> None:
    with transport_world(transport, tmp_path) as world:
        hooks = world.tmp / "hooks.jsonl"
        world.env[HOOKS_ENV] = str(hooks)
        assert "ASYNCTASK_TRANSPORT" not in world.env and "ASYNCTASK_CONFIG" not in world.env
        write_config(  # ./asynctask.yaml, where get_transport() with no URL looks
            world,
            asynctask_workers={"sched_fx_mw": "sched_fx_outcomes"},
            asynctask_middleware=["schedules_fixture.Recorder"],
        )
        produced = subprocess.run(
            [sys.executable, "-c", f"OUT = {world.out!r}\n{PRODUCER}"],
            env=world.env,
            cwd=world.tmp,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert produced.returncode == 0, produced.stderr
        ok, once, always = json.loads(produced.stdout)
        submits = [h for h in lines(hooks) if h["hook"] == "before_submit"]
        assert [(h["queue"], h["kind"]) for h in submits] == [("sched_fx_mw", k) for k in ("ok", "once", "always")]
        producer_pid = submits[0]["pid"]

        result = world.run("--halt-when-empty", timeout=90)  # ./asynctask.yaml again
        assert result.returncode == EXIT_OK, result.stderr[-3000:]

        # the worker read the meta key the producer's before_submit added, on every attempt
        runs = world.records()
        assert Counter(r["id"] for r in runs) == {ok: 1, once: 2, always: 2}
        assert all(r["meta"] == {META_KEY: f"added by pid {producer_pid}"} for r in runs), runs

        # the workers' middleware: before/after around each attempt, with the outcome
        seen = [h for h in lines(hooks) if h["hook"] != "before_submit"]
        per_task = {
            task_id: [
                (h["hook"], h["attempt"], h.get("outcome"), bool(h.get("error")))
                for h in seen
                if h.get("id") == task_id
            ]
            for task_id in (ok, once, always)
        }
        assert per_task == {
            ok: [("before_process", 1, None, False), ("after_process", 1, "acked", False)],
            once: [
                ("before_process", 1, None, False),
                ("after_process", 1, "retried", True),
                ("before_process", 2, None, False),
                ("after_process", 2, "acked", False),
            ],
            always: [
                ("before_process", 1, None, False),
                ("after_process", 1, "retried", True),
                ("before_process", 2, None, False),
                ("after_process", 2, "dead", True),
            ],
        }, seen
        errors = {h["error"] for h in seen if h.get("error")}
        assert errors == {"RuntimeError('once: failing attempt 1')"} | {
            f"RuntimeError('always: failing attempt {n}')" for n in (1, 2)
        }
        worker_hooks = [h["hook"] for h in seen]
        assert worker_hooks[0] == "on_worker_start" and worker_hooks[-1] == "on_worker_stop", worker_hooks
        assert [d.id for d in world.transport.dead_tasks("sched_fx_mw")] == [always]


# -- 4. a bad every_s entry is refused at start --------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        (
            [{"worker": "sched_fx_tick", "every_s": 2, "second": "*/2"}],
            "entry #1: every_s: every_s or cron fields are allowed, not both (found second)",
        ),
        (
            [{"worker": "sched_fx_tick", "every_s": 5}, {"worker": "sched_fx_tick", "every_s": 0}],
            "entry #2: every_s: 0: a number of seconds > 0 is allowed",
        ),
    ],
    ids=["every_s-and-second", "every_s-0"],
)
def test_a_bad_every_s_entry_is_refused_at_start_in_one_line(
    tmp_path: Path, entries: list[dict[str, Any]], said: str
) -> None:
    world = Env(tmp_path)
    try:
        config = write_config(world, asynctask_scheduled_workers=entries)
        result = world.run("--config", config, "--scheduler", timeout=60)
    finally:
        world.close()
    assert result.returncode == EXIT_USAGE, result.stderr
    # one line, naming the file and the entry (the config loader's "entry #N", counted from 1)
    assert result.stderr.splitlines() == [f"asynctask-workers: {config}: asynctask_scheduled_workers {said}"]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not Path(world.out).exists()
