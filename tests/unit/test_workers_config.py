"""asynctask.config: merging, validation messages, scheduled entries, describe()."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynctask.config import (
    Settings,
    WorkerEntry,
    check_worker_names,
    configured_transport,
    embedded_default_url,
    load_settings,
    parse_set_option,
    transport_choice,
    where_looked,
)
from asynctask.cron import scheduled_queue_name
from asynctask.errors import ConfigurationError, QueueNameError, ScheduleError, UnknownWorkerError


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_files(tmp_path: Path) -> None:
    settings = load_settings([], environ={"ASYNCTASK_HOME": str(tmp_path)})
    assert settings.workers == ()
    assert settings.poll_interval_ms == 500 and settings.check_child_interval_ms == 1000
    assert settings.shutdown_timeout_s == 30.0
    assert settings.transport is None
    assert settings.transport_url.startswith("filesys:")


def test_files_merge_in_order_then_set_then_environment(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "a.yaml",
        """
asynctask_transport: memory://a
asynctask_require: [mod_a]
asynctask_workers: {q_one: w1, q_two: {worker: w2, processes: 2}}
asynctask_scheduled_workers: [{worker: w1, minute: 5}]
""",
    )
    second = write(
        tmp_path,
        "b.yaml",
        """
asynctask_transport: memory://b
asynctask_require: mod_b
asynctask_workers: {q_one: null, q_three: {worker: w3, rate_max_calls: 5, rate_period: 2}}
asynctask_scheduled_workers: [{command: "echo hi", crontab: "* * * * *"}]
asynctask_workers_poll_interval: 20
""",
    )
    overrides = [parse_set_option("asynctask_workers={q_four: w4}"), parse_set_option("asynctask_shutdown_timeout=5")]
    settings = load_settings([first, second], overrides, environ={}, require=["mod_c"])
    # --set replaces the files' map: only q_four runs
    assert [e.queue for e in settings.workers] == ["q_four"]
    assert settings.origins["asynctask_workers"] == "--set"
    merged = load_settings([first, second], environ={})
    assert [e.queue for e in merged.workers] == ["q_two", "q_three"]
    assert merged.workers[0] == WorkerEntry("q_two", "w2", 2, None, 1.0, first)
    assert merged.workers[1].rate_max_calls == 5 and merged.workers[1].rate_period == 2.0
    assert merged.origins["asynctask_workers"] == f"{first}, {second}"
    assert len(settings.scheduled_workers) == 2
    assert settings.scheduled_sources[1].startswith(second)
    assert settings.require == ("mod_a", "mod_b", "mod_c")
    assert settings.transport == "memory://b"
    assert settings.poll_interval_ms == 20 and settings.shutdown_timeout_s == 5.0
    assert settings.origins["asynctask_transport"] == second
    env = load_settings(
        [first], [parse_set_option("asynctask_transport=memory://set")], environ={"ASYNCTASK_TRANSPORT": "memory://env"}
    )
    assert env.transport_url == "memory://env"
    assert env.origins["asynctask_transport"] == "environment ASYNCTASK_TRANSPORT"


@pytest.mark.parametrize(
    ("text", "error", "expected"),
    [
        ("asynctask_workers: {Bad: w}", QueueNameError, "asynctask_workers: invalid queue name 'Bad'"),
        ("asynctask_workerz: {}", ConfigurationError, "unknown setting 'asynctask_workerz' (did you mean"),
        ("asynctask_workers: [a]", ConfigurationError, "asynctask_workers: a mapping of queue names"),
        ("asynctask_workers: {jobs: {worker: w, color: red}}", ConfigurationError, "unknown key 'color'"),
        ("asynctask_workers: {jobs: {worker: w, rate_period: 0}}", ConfigurationError, "rate_period (seconds): 0"),
        ("asynctask_workers_poll_interval: fast", ConfigurationError, "asynctask_workers_poll_interval"),
        ("asynctask_scheduled_workers: [{minute: 1}]", ScheduleError, "entry #1: exactly one of 'worker' or 'command'"),
        ("asynctask_scheduled_workers: [{worker: w, command: x, minute: 1}]", ScheduleError, "exactly one of"),
        ("asynctask_scheduled_workers: [{worker: w, payload: {}}]", ScheduleError, "at least one schedule field"),
        ("asynctask_workers: {jobs: [", ConfigurationError, "YAML syntax error"),
        ("- just a list", ConfigurationError, "a mapping of setting names"),
    ],
)
def test_errors_name_the_file_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, error: type[Exception], expected: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(error) as info:
        load_settings([path], environ={})
    message = str(info.value)
    assert message.startswith(path) and expected in message
    assert "\n" not in message


def test_set_option_errors_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NAME=VALUE"):
        parse_set_option("no_equals_sign")
    with pytest.raises(ConfigurationError, match="--set: unknown setting 'nope'"):
        load_settings([], [("nope", 1)], environ={})
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings([str(tmp_path / "missing.yaml")], environ={})
    assert parse_set_option("asynctask_workers={a_b: c}") == ("asynctask_workers", {"a_b": "c"})


def test_unknown_worker_names_lists_registered_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path, "w.yaml", "asynctask_workers: {jobs: nope}\nasynctask_scheduled_workers: [{worker: ghost, hour: 1}]"
    )
    settings = load_settings([path], environ={})
    with pytest.raises(UnknownWorkerError) as info:
        check_worker_names(settings, ["alpha", "beta"])
    assert str(info.value) == (
        f"{path}: asynctask_workers: 'jobs': unknown worker 'nope';"
        f" {path}: asynctask_scheduled_workers entry #1: unknown worker 'ghost'; registered workers: alpha, beta"
    )
    with pytest.raises(UnknownWorkerError) as info:
        check_worker_names(settings, ["nope"])
    assert str(info.value) == (
        f"{path}: asynctask_scheduled_workers entry #1: unknown worker 'ghost'; registered workers: nope"
    )
    check_worker_names(settings, ["nope", "ghost"])


def test_scheduled_only_workers_and_queue_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        """
asynctask_workers: {jobs: busy}
asynctask_scheduled_workers:
  - {worker: busy, minute: 1}
  - {worker: Clean-Up, hour: 3}
  - {worker: Clean-Up, hour: 4}
  - {command: "true", second: 0}
""",
    )
    settings = load_settings([path], environ={})
    assert settings.scheduled_only_workers() == ["Clean-Up", "command"]
    assert scheduled_queue_name("Clean-Up") == "scheduled_clean_up"
    assert scheduled_queue_name("cleanup") == "scheduled_cleanup"
    assert settings.worker_queues == {"busy": "jobs"}


def test_describe_masks_the_password_and_names_origins() -> None:
    settings = Settings(transport="redis://user:secret@host:6379/0", origins={"asynctask_transport": "x.yaml"})
    described = settings.describe()
    assert described["asynctask_transport"] == {"value": "redis://user:***@host:6379/0", "origin": "x.yaml"}
    assert described["asynctask_shutdown_timeout"]["origin"] == "default"
    assert "secret" not in repr(described)


def test_set_replaces_every_merged_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        """
asynctask_require: [mod_a]
asynctask_workers: {q_one: w1}
asynctask_scheduled_workers: [{worker: w1, minute: 5}]
""",
    )
    overrides = [
        parse_set_option("asynctask_require=[mod_b]"),
        parse_set_option("asynctask_scheduled_workers=[{worker: w2, hour: 1}]"),
        parse_set_option("asynctask_workers={q_two: w2}"),
        parse_set_option("asynctask_workers={q_three: w3}"),
    ]
    settings = load_settings([path], overrides, environ={}, require=["mod_c"])
    assert settings.require == ("mod_b", "mod_c")
    assert settings.scheduled_workers == ({"worker": "w2", "hour": 1},)
    assert settings.scheduled_sources == ("--set: asynctask_scheduled_workers entry #1",)
    assert [(e.queue, e.worker) for e in settings.workers] == [("q_three", "w3")]


def test_every_error_of_one_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
asynctask_transprot: redis://localhost/0
asynctask_workers: {Bad: w, jobs: {worker: w, processes: 0}, fine: w, other: {worker: w, procesess: 2}}
asynctask_scheduled_workers: [{worker: w}, {worker: w, minute: 1}, {minute: 2}]
asynctask_shutdown_timeout: -1
""",
    )
    with pytest.raises(ConfigurationError) as info:
        load_settings([path], environ={})
    message = str(info.value)
    assert "\n" not in message
    expected = [
        "unknown setting 'asynctask_transprot' (did you mean 'asynctask_transport'?)",
        "invalid queue name 'Bad'",
        "'jobs': processes: 0 is not allowed",
        "unknown key 'procesess' (did you mean 'processes'?)",
        "entry #1: at least one schedule field",
        "entry #3: exactly one of 'worker' or 'command'",
        "asynctask_shutdown_timeout (seconds): -1 is not allowed",
    ]
    for text in expected:
        assert text in message, text
    assert message.count(path) == len(expected)
    assert "entry #2" not in message and "'fine'" not in message


def test_errors_of_a_later_file_wait_for_the_first_one(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "asynctask_workerz: {}\n")
    second = write(tmp_path, "b.yaml", "asynctask_requir: [x]\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings([first, second], environ={})
    assert first in str(info.value) and second not in str(info.value)


def test_unknown_worker_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, "w.yaml", "asynctask_workers: {emails: send_emial}\n")
    with pytest.raises(UnknownWorkerError, match="unknown worker 'send_emial' \\(did you mean 'send_email'\\?\\)"):
        check_worker_names(load_settings([path], environ={}), ["send_email", "cleanup"])


def test_where_looked_names_the_files_or_why_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    nothing = load_settings(environ={})
    assert where_looked(nothing, environ={}) == (
        f"looked for asynctask_workers in $ASYNCTASK_CONFIG (not set), {tmp_path / 'asynctask.yaml'} (not found),"
        " --set (none)"
    )
    path = write(tmp_path, "empty.yaml", "asynctask_workers: {}\n")
    env = {"ASYNCTASK_CONFIG": path}
    named = load_settings(environ=env, overrides=[("asynctask_workers", None)])
    assert where_looked(named, environ=env) == (
        f"looked for asynctask_workers in {path} (named by $ASYNCTASK_CONFIG), --set"
    )
    with pytest.raises(ConfigurationError, match=r"missing.yaml: configuration file not found \(named by"):
        load_settings(environ={"ASYNCTASK_CONFIG": str(tmp_path / "missing.yaml")})


def test_configured_transport_checks_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert configured_transport(environ={}) is None
    write(tmp_path, "asynctask.yaml", "asynctask_transport: memory://x\n")
    assert configured_transport(environ={}) == ("memory://x", "asynctask.yaml")
    write(tmp_path, "asynctask.yaml", "asynctask_transprot: memory://x\n")
    with pytest.raises(ConfigurationError, match="did you mean 'asynctask_transport'"):
        configured_transport(environ={})


def test_a_worker_child_does_without_apscheduler_even_with_command_entries() -> None:
    """A child imports asynctask.workers.child and what import_requires names: the command worker
    registers from asynctask.workers, and neither loads APScheduler (only the scheduler needs it)."""
    import subprocess
    import sys

    from asynctask.workers.plan import import_requires

    settings = load_settings([], [("asynctask_scheduled_workers", [{"command": "true", "minute": 0}])], environ={})
    modules = import_requires(settings)
    code = (
        "import importlib, sys\n"
        "import asynctask.workers.child\n"
        "for name in sys.argv[1:]: importlib.import_module(name)\n"
        "from asynctask.workers.base import registered_workers\n"
        "assert 'command' in registered_workers(), registered_workers()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('apscheduler', 'asynctask.scheduler')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "asynctask.workers.command" in modules


def test_transport_choice_environment_then_file_then_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ASYNCTASK_HOME", str(tmp_path / "home"))
    assert embedded_default_url() == f"filesys:{tmp_path / 'home'}"
    assert transport_choice({}) == (embedded_default_url(), "the embedded default")
    write(tmp_path, "asynctask.yaml", "asynctask_transport: memory://fromfile\n")
    assert transport_choice({}) == ("memory://fromfile", "asynctask.yaml")
    assert transport_choice({"ASYNCTASK_TRANSPORT": "memory://env"}) == ("memory://env", "ASYNCTASK_TRANSPORT")
    assert load_settings(environ={}).transport_url == "memory://fromfile"
