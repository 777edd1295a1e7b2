"""asynctask-workers as a subprocess on the filesystem transport: flows and configuration errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from workers_support import Env

from asynctask.cli.exit_codes import EXIT_OK, EXIT_USAGE


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.close()


def test_no_workers_configured_says_so_and_where_it_looked(world: Env) -> None:
    config = world.config({})
    result = world.run("--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK
    lines = result.stderr.strip().splitlines()
    assert lines == ["No workers configured; terminating.", f"looked for asynctask_workers in {config}, --set (none)"]
    Path(config).unlink()
    result = world.run("--halt-when-empty")  # no file at all
    assert result.returncode == EXIT_OK
    assert result.stderr.strip().splitlines() == [
        "No workers configured; terminating.",
        f"looked for asynctask_workers in $ASYNCTASK_CONFIG (not set), {world.tmp / 'asynctask.yaml'} (not found),"
        " --set (none)",
    ]


def test_set_replaces_the_workers_of_the_file(world: Env) -> None:
    world.config({"jobs": "acc_record"})  # ./asynctask.yaml, read by default
    world.transport.submit_task("jobs", {"out": world.out, "n": 1})
    world.transport.submit_task("others", {"out": world.out, "n": 2})
    result = world.run("--set", "asynctask_workers={others: acc_record}", "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["payload"]["n"] for r in world.records()] == [2]
    assert "on queue jobs" not in result.stderr
    assert world.transport.poll_queue("jobs") == 1


def test_every_error_of_the_file_on_one_line(world: Env) -> None:
    path = world.tmp / "bad.yaml"
    path.write_text("asynctask_wrokers: {}\nasynctask_require: [workers_fixture]\nasynctask_shutdown_timeout: 0\n")
    result = world.run("--config", str(path))
    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.strip().splitlines()
    assert "unknown setting 'asynctask_wrokers' (did you mean 'asynctask_workers'?)" in line
    assert "asynctask_shutdown_timeout (seconds): 0 is not allowed" in line


@pytest.mark.parametrize("level", ["warning", "WARNING", "Info"])
def test_log_level_in_any_case(world: Env, level: str) -> None:
    result = world.run("--log-level", level, "--config", world.config({"jobs": "acc_record"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert ("INFO" in result.stderr) == (level.lower() == "info"), result.stderr


def test_an_import_error_names_the_users_file_and_line(world: Env) -> None:
    package = world.tmp / "brokenapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "workers.py").write_text("from brokenapp import helpers\n")
    (package / "helpers.py").write_text("import os\n\nHOME = os.environ['NO_SUCH_VARIABLE_X']\n")
    args = ("--transport", world.url, "--require", "brokenapp.workers", "--set", "asynctask_workers={jobs: w}")
    result = world.run(*args)
    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "asynctask-workers: asynctask_require: cannot import module 'brokenapp.workers': KeyError: 'NO_SUCH_VARIABLE_X'"
        " (brokenapp/helpers.py, line 3: HOME = os.environ['NO_SUCH_VARIABLE_X'])"
    )
    result = world.run("--log-level", "debug", *args)
    assert result.returncode == EXIT_USAGE
    assert "Traceback (most recent call last)" in result.stderr
    assert 'brokenapp/workers.py", line 1' in result.stderr and 'brokenapp/helpers.py", line 3' in result.stderr


def test_a_task_flows_and_halts_when_empty(world: Env) -> None:
    world.transport.submit_task("jobs", {"out": world.out, "n": 1})
    result = world.run("--config", world.config({"jobs": "acc_record"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["payload"]["n"] for r in world.records()] == [1]
    assert "started worker acc_record on queue jobs" in result.stderr
    assert "halted" in result.stderr
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_quiet_prints_nothing_and_still_processes(world: Env) -> None:
    world.transport.submit_tasks("jobs", [{"out": world.out, "n": n} for n in range(3)])
    result = world.run("--quiet", "--config", world.config({"jobs": "acc_record"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK
    assert result.stdout == "" and result.stderr == ""
    assert sorted(r["payload"]["n"] for r in world.records()) == [0, 1, 2]


def test_set_and_require_options_configure_without_a_file(world: Env) -> None:
    world.transport.submit_task("queue_foo", {"out": world.out, "n": 7})
    result = world.run(
        "--transport",
        world.url,
        "--require",
        "workers_fixture",
        "--set",
        'asynctask_workers={"queue_foo": "acc_record"}',
        "--set",
        "asynctask_workers_poll_interval=50",
        "--halt-when-empty",
        "--log-level",
        "warning",
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["payload"]["n"] for r in world.records()] == [7]
    assert "started worker" not in result.stderr  # INFO is below --log-level warning


def test_requeue_is_processed_in_the_same_run(world: Env) -> None:
    world.transport.submit_task("jobs", {"out": world.out, "first": True})
    result = world.run("--config", world.config({"jobs": "acc_requeue"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    seen = world.records()
    assert [bool(r["payload"].get("second")) for r in seen] == [False, True]


def test_exception_dead_letters_task_1_with_traceback_and_task_2_runs(world: Env) -> None:
    first = world.transport.submit_task("jobs", {"out": world.out, "n": 1, "fail": True})
    world.transport.submit_task("jobs", {"out": world.out, "n": 2})
    result = world.run("--config", world.config({"jobs": "acc_fail"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["payload"]["n"] for r in world.records()] == [2]
    dead = world.transport.dead_tasks("jobs")
    assert [d.id for d in dead] == [first]
    assert dead[0].reason.startswith("ValueError: boom in task 1")
    assert "Traceback (most recent call last)" in dead[0].reason
    assert dead[0].attempts == 1


def test_max_attempts_3_fails_twice_then_succeeds(world: Env) -> None:
    world.transport.submit_task("jobs", {"out": world.out})
    result = world.run("--config", world.config({"jobs": "acc_fail_twice"}), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["attempts"] for r in world.records()] == [1, 2, 3]
    stats = world.transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_processes_n_runs_n_children(world: Env) -> None:
    world.transport.submit_tasks("jobs", [{"out": world.out, "sleep_s": 0.3} for _ in range(6)])
    config = world.config({"jobs": {"worker": "acc_slow", "processes": 2}})
    result = world.run("--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    records = world.records()
    assert len(records) == 6
    assert len({r["pid"] for r in records}) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"asynctask_workers": {"jobs": "no_such_worker"}}, "unknown worker 'no_such_worker'; registered workers:"),
        ({"asynctask_workers": {"Bad-Queue": "acc_record"}}, "invalid queue name 'Bad-Queue'"),
        ({"asynctask_wrokers": {"jobs": "acc_record"}}, "unknown setting 'asynctask_wrokers'"),
        ("asynctask_workers: {jobs: [unclosed\n", "YAML syntax error"),
        ({"asynctask_workers": {"jobs": {"worker": "acc_record", "processes": 0}}}, "processes: 0 is not allowed"),
        ({"asynctask_scheduled_workers": [{"worker": "acc_record"}]}, "at least one schedule field"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(world: Env, content: object, expected: str) -> None:
    import yaml

    path = world.tmp / "bad.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(
            yaml.safe_dump({"asynctask_transport": world.url, "asynctask_require": ["workers_fixture"], **content})
        )
    result = world.run("--config", str(path), "--halt-when-empty")
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_set_option_and_missing_module_exit_2(world: Env) -> None:
    result = world.run("--set", "nonsense", "--halt-when-empty")
    assert result.returncode == EXIT_USAGE
    assert len(result.stderr.strip().splitlines()) == 1 and "NAME=VALUE" in result.stderr
    result = world.run(
        "--transport", world.url, "--require", "no_such_module_x", "--set", "asynctask_workers={jobs: acc_record}"
    )
    assert result.returncode == EXIT_USAGE
    assert "no_such_module_x" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_transport_exits_3(world: Env) -> None:
    result = world.run(
        "--transport",
        "redis://127.0.0.1:1/0",
        "--set",
        "asynctask_workers={jobs: acc_record}",
        "--require",
        "workers_fixture",
        "--halt-when-empty",
    )
    if "cannot be loaded" in result.stderr or "unknown transport" in result.stderr:
        pytest.skip("the redis transport has not landed yet")
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_scheduled_worker_on_no_queue_gets_a_child_on_scheduled_queue(world: Env) -> None:
    world.transport.submit_task("scheduled_acc_record", {"out": world.out, "n": 3})
    config = world.config({}, asynctask_scheduled_workers=[{"worker": "acc_record", "hour": 3, "minute": 0}])
    result = world.run("--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["payload"]["n"] for r in world.records()] == [3]
    assert "started worker acc_record on queue scheduled_acc_record" in result.stderr


def test_doctor_and_workers_import_the_same_modules_from_the_same_directory(world: Env) -> None:
    package = world.tmp / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "workers.py").write_text(
        "from asynctask.workers import AsyncTaskWorker\n"
        "class Here(AsyncTaskWorker):\n"
        "    name = 'here_worker'\n"
        "    def process(self, payload):\n"
        "        open(payload['out'], 'a').write('ran\\n')\n"
    )
    (world.tmp / "asynctask.yaml").write_text(
        f"asynctask_transport: '{world.url}'\nasynctask_require: [myapp.workers]\n"
        "asynctask_workers: {jobs: here_worker}\nasynctask_workers_poll_interval: 50\n"
    )
    world.transport.submit_task("jobs", {"out": world.out})
    import os
    import subprocess

    from workers_support import CLI

    # the tests' directory off the path: only the current directory can provide myapp
    env = {**world.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    admin = str(Path(CLI).with_name("asynctask"))
    doctor = subprocess.run(
        [admin, "doctor"], env=env, cwd=world.tmp, capture_output=True, text=True, timeout=60, check=False
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[ok] registered workers: here_worker" in doctor.stdout
    assert "[ok] configured queues: jobs: here_worker" in doctor.stdout
    workers = subprocess.run(
        [CLI, "--halt-when-empty"], env=env, cwd=world.tmp, capture_output=True, text=True, timeout=60, check=False
    )
    assert workers.returncode == EXIT_OK, workers.stderr
    assert Path(world.out).read_text() == "ran\n"
    # from another directory, both fail alike
    (world.tmp / "elsewhere").mkdir()
    env["ASYNCTASK_CONFIG"] = str(world.tmp / "asynctask.yaml")
    doctor = subprocess.run(
        [admin, "doctor"], env=env, cwd=world.tmp / "elsewhere", capture_output=True, text=True, timeout=60, check=False
    )
    workers = subprocess.run(
        [CLI], env=env, cwd=world.tmp / "elsewhere", capture_output=True, text=True, timeout=60, check=False
    )
    assert doctor.returncode == 1 and workers.returncode == EXIT_USAGE
    missing = "cannot import module 'myapp.workers': ModuleNotFoundError: No module named 'myapp'"
    assert missing in doctor.stdout and missing in workers.stderr


def test_require_finds_modules_in_the_current_directory(world: Env) -> None:
    (world.tmp / "cwd_workers.py").write_text(
        "from asynctask.workers import AsyncTaskWorker\n"
        "class CwdWorker(AsyncTaskWorker):\n"
        "    name = 'cwd_worker'\n"
        "    def process(self, payload):\n"
        "        open(payload['out'], 'a').write('ran\\n')\n"
    )
    world.transport.submit_task("jobs", {"out": world.out})
    env = {**world.env, "PYTHONPATH": ""}
    import subprocess

    from workers_support import CLI

    result = subprocess.run(
        [
            CLI,
            "--transport",
            world.url,
            "--require",
            "cwd_workers",
            "--set",
            "asynctask_workers={jobs: cwd_worker}",
            "--set",
            "asynctask_workers_poll_interval=50",
            "--halt-when-empty",
        ],
        env=env,
        cwd=world.tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert Path(world.out).read_text() == "ran\n"


@pytest.mark.parametrize("setting", [{"asynctask_max_tasks_per_child": 2}, {"asynctask_max_memory_mb": 1}])
def test_children_are_recycled_and_replaced(world: Env, setting: dict[str, int]) -> None:
    world.transport.submit_tasks("jobs", [{"out": world.out, "n": n} for n in range(4)])
    result = world.run("--config", world.config({"jobs": "acc_record"}, **setting), "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr
    records = world.records()
    assert sorted(r["payload"]["n"] for r in records) == [0, 1, 2, 3]
    assert len({r["pid"] for r in records}) >= 2
    assert "is recycled (max_" in result.stderr
    assert "restarting" not in result.stderr
