"""The ``asynctask`` admin command run in-process on the memory transport (fast checks of every path).

The subprocess tests on real transports are in tests/acceptance/test_admin_cli.py.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest

from asynctask.cli.admin import main
from asynctask.cli.admin_output import Progress, format_age, one_line
from asynctask.transports import get_transport
from asynctask.transports.base import Transport


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.delenv("ASYNCTASK_TRANSPORT", raising=False)
    monkeypatch.delenv("ASYNCTASK_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./asynctask.yaml
    return f"memory://admin{uuid.uuid4().hex}"


@pytest.fixture
def transport(url: str) -> Transport:
    return get_transport(url)


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--transport", url])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("asynctask: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_queues_table_and_json(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    code, out, _ = run(capsys, url, "queues")
    assert (code, out) == (0, "no queues\n")
    transport.submit_tasks("emails", [{"n": 1}, {"n": 2}, {"n": 3}])
    transport.submit_task("emails", {"n": 4}, delay_s=3600)
    transport.get_task("emails")
    dead = transport.get_task("emails")
    assert dead is not None
    transport.dead(dead, "boom")
    transport.submit_task("reports")
    code, out, _ = run(capsys, url, "queues")
    assert code == 0
    header, emails, reports = out.splitlines()
    assert header.split() == ["QUEUE", "READY", "DELAYED", "IN_FLIGHT", "DEAD", "OLDEST_READY"]
    assert emails.split()[:5] == ["emails", "1", "1", "1", "1"]
    assert reports.split()[:5] == ["reports", "1", "0", "0", "0"]
    code, out, _ = run(capsys, url, "queues", "--json", "reports")
    assert code == 0
    [row] = json.loads(out)
    assert row["queue"] == "reports" and row["ready"] == 1 and row["oldest_ready_age_s"] >= 0


def test_unknown_and_bad_queue(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    transport.submit_task("emails")
    for argv in (("queues", "nope"), ("purge", "nope", "--yes"), ("dead", "list", "nope")):
        code, out, err = run(capsys, url, *argv)
        assert (code, out) == (5, "")
        assert_one_line_error(err, "unknown queue 'nope'", "emails")
    code, _, err = run(capsys, url, "submit", "Bad-Name", "{}")
    assert code == 2
    assert_one_line_error(err, "invalid queue name 'Bad-Name'")


def test_submit_one(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    code, out, _ = run(capsys, url, "submit", "emails", '{"to": "a@example.org"}', "--priority", "5")
    assert code == 0
    task = transport.get_task("emails")
    assert task is not None and task.id == out.strip() and task.priority == 5
    assert task.payload == {"to": "a@example.org"}
    code, out, _ = run(capsys, url, "submit", "emails", "--delay-s", "60", "--json")
    assert code == 0 and json.loads(out)["submitted"] == 1
    assert transport.stats("emails").delayed == 1


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (("submit", "emails", "{bad"), 2, "payload: bad JSON"),
        (("submit", "emails", "[1, 2]"), 2, "must be a JSON object, not list"),
        (("submit", "emails", "{}", "--priority", "12"), 2, "invalid priority 12"),
        (("submit", "emails", "{}", "--priority", "x"), 2, "invalid int value"),
        (("submit", "emails", "{}", "--delay-s", "-1"), 2, "invalid delay_s"),
        (("submit", "emails", "{}", "--partial"), 2, "--partial only applies to --file"),
        (("frobnicate",), 2, "invalid choice"),
    ],
)
def test_submit_bad_input(  # noqa: PLR0917 - fixtures and parameters
    capsys: pytest.CaptureFixture[str], url: str, transport: Transport, argv: tuple[str, ...], code: int, fragment: str
) -> None:
    try:
        got = main([*argv, "--transport", url])
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    assert got == code
    _, err = capsys.readouterr()
    assert_one_line_error(err, fragment)
    assert transport.queues() == []


def test_submit_file(capsys: pytest.CaptureFixture[str], url: str, transport: Transport, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(1200)) + "\n")
    code, out, err = run(capsys, url, "submit", "bulk", "--file", str(good))
    assert code == 0, err
    assert out.startswith("submitted 1200 tasks to bulk")
    assert err == ""  # no progress bar when stderr is not a terminal
    assert transport.stats("bulk").ready == 1200


def test_submit_file_bad_line_submits_nothing(
    capsys: pytest.CaptureFixture[str], url: str, transport: Transport, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"n": 1}\n\n{"n": 2}\n{"n": \n[3]\n')
    code, out, err = run(capsys, url, "submit", "bulk", "--file", str(path))
    assert (code, out) == (2, "")
    assert_one_line_error(err, f"{path}:4: bad JSON", "nothing was submitted")
    assert transport.queues() == []
    code, out, err = run(capsys, url, "submit", "bulk", "--file", str(path), "--partial", "--json")
    assert code == 1
    assert json.loads(out)["submitted"] == 2
    assert err.splitlines() == [
        f"asynctask: skipped: {path}:4: bad JSON: Expecting value at column 7",
        f"asynctask: skipped: {path}:5: a payload must be a JSON object, not list",
    ]
    assert transport.stats("bulk").ready == 2
    code, _, err = run(capsys, url, "submit", "bulk", "--file", str(tmp_path / "missing.jsonl"))
    assert code == 2
    assert_one_line_error(err, "missing.jsonl: cannot read")


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress("submitting", 2000, stream=stream)
    for done in range(0, 2001, 500):
        progress.update(done)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.endswith(" 2000/2000 100%\n")
    small = Tty()
    Progress("x", 10, stream=small).update(5)
    assert small.getvalue() == ""


def test_purge(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    transport.submit_tasks("emails", [{}, {}])
    transport.submit_task("emails", delay_s=60)
    code, out, err = run(capsys, url, "purge", "emails")  # stdin is not a terminal under pytest
    assert (code, out) == (2, "")
    assert_one_line_error(err, "refusing to purge queue 'emails' without --yes")
    assert transport.stats("emails").ready == 2
    code, out, _ = run(capsys, url, "purge", "emails", "--yes")
    assert (code, out) == (0, "purged 3 tasks from emails\n")
    assert transport.stats("emails") == type(transport.stats("emails"))()


def _make_dead(transport: Transport, queue: str, count: int) -> list[str]:
    transport.submit_tasks(queue, [{"n": n} for n in range(count)])
    ids = []
    for n in range(count):
        task = transport.get_task(queue)
        assert task is not None
        transport.dead(task, f"ValueError: bad {n}\nTraceback (most recent call last):\n  line {n}")
        ids.append(task.id)
    return ids


def test_dead_list_show_replay(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    ids = _make_dead(transport, "emails", 3)
    code, out, _ = run(capsys, url, "dead", "list", "emails")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ATTEMPTS", "DEAD_AT", "REASON"]
    assert [line.split()[0] for line in lines[1:]] == ids
    code, out, _ = run(capsys, url, "dead", "list", "emails", "--json", "--limit", "2")
    assert [item["id"] for item in json.loads(out)] == ids[:2]
    code, out, _ = run(capsys, url, "dead", "show", "emails", ids[1])
    assert code == 0 and f"id:        {ids[1]}" in out and "  line 1" in out and '"n": 1' in out
    code, out, err = run(capsys, url, "dead", "show", "emails", "0" * 32)
    assert (code, out) == (5, "")
    assert_one_line_error(err, "no dead task 000")
    code, out, err = run(capsys, url, "dead", "replay", "emails", ids[0], "f" * 32)
    assert code == 5 and transport.stats("emails").dead == 3  # all named ids must exist: nothing replayed
    code, out, _ = run(capsys, url, "dead", "replay", "emails", ids[0])
    assert (code, out) == (0, "replayed 1 dead tasks to emails\n")
    task = transport.get_task("emails")
    assert task is not None and task.id == ids[0] and task.attempts == 1
    code, out, _ = run(capsys, url, "dead", "replay", "emails", "--json")
    assert json.loads(out) == {"queue": "emails", "replayed": 2}


def test_dead_purge_deletes_for_good(capsys: pytest.CaptureFixture[str], url: str, transport: Transport) -> None:
    _make_dead(transport, "emails", 2)
    code, out, _ = run(capsys, url, "dead", "purge", "emails", "--yes")
    assert (code, out) == (0, "deleted 2 dead tasks of emails\n")
    assert transport.stats("emails").dead == 0 and transport.dead_tasks("emails") == []


def test_transport_errors(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run(capsys, "redix://localhost", "queues")
    assert code == 2
    assert_one_line_error(err, "unknown transport scheme 'redix'", "did you mean 'redis'")
    code, _, err = run(capsys, "memory://x?bogus=1", "queues")
    assert code == 2
    assert_one_line_error(err, "unknown option 'bogus'")


def test_config_resolution(
    capsys: pytest.CaptureFixture[str], url: str, transport: Transport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.submit_task("from_config")
    config = tmp_path / "conf.yaml"
    config.write_text(f"asynctask_transport: {url}\n")
    assert main(["queues", "--config", str(config)]) == 0
    assert "from_config" in capsys.readouterr().out
    assert main(["--set", f"asynctask_transport={url}", "queues", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["queue"] == "from_config"
    monkeypatch.setenv("ASYNCTASK_TRANSPORT", url)
    assert main(["queues", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["queue"] == "from_config"
    bad = tmp_path / "bad.yaml"
    bad.write_text("asynctask_transport: [unclosed\n")
    assert main(["queues", "--config", str(bad)]) == 2
    assert_one_line_error(capsys.readouterr().err, "bad.yaml: YAML syntax error")


def test_doctor(capsys: pytest.CaptureFixture[str], url: str, transport: Transport, tmp_path: Path) -> None:
    transport.submit_task("orphan")
    config = tmp_path / "conf.yaml"
    config.write_text(f"asynctask_transport: {url.replace('memory://', 'memory://:pw@')}\n")
    code = main(["doctor", "--config", str(config), "--transport", url, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    problems = [c for c in report["checks"] if c["status"] == "problem"]
    assert [c["check"] for c in problems] == ["queue without worker"]
    assert "orphan: 1 tasks wait" in problems[0]["detail"]
    transport.purge("orphan")
    code = main(["doctor", "--transport", url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[warning] queue without worker: orphan" in out
    assert main(["doctor", "--transport", url, "--strict"]) == 1
    capsys.readouterr()


def test_doctor_reports_a_misspelled_setting_and_checks_no_transport(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    (tmp_path / "asynctask.yaml").write_text(f"asynctask_transprot: {url}\n")
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["configuration"]["status"] == "problem"
    assert "did you mean 'asynctask_transport'?" in checks["configuration"]["detail"]
    assert checks["transport"]["status"] == "warning"
    assert "not checked" in checks["transport"]["detail"]
    assert "transport url" not in checks
    # --transport names one: it is checked, the configuration is still a problem
    assert main(["doctor", "--transport", url, "--json"]) == 1
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["transport"]["status"] == "ok" and checks["configuration"]["status"] == "problem"


@pytest.mark.parametrize("level", ["debug", "DEBUG", "Warning"])
def test_log_level_in_any_case(capsys: pytest.CaptureFixture[str], url: str, level: str) -> None:
    assert main(["--log-level", level, "queues", "--transport", url]) == 0
    capsys.readouterr()


def test_log_level_unknown(capsys: pytest.CaptureFixture[str], url: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["queues", "--log-level", "loud", "--transport", url])
    assert info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "invalid level 'loud'", "debug, info, warning")


def test_helpers() -> None:
    assert [format_age(s) for s in (None, 0.25, 12.34, 245, 11220, 180000)] == [
        "-",
        "250ms",
        "12.3s",
        "4m05s",
        "3h07m",
        "2d02h",
    ]
    assert one_line("a\n\n  b\n") == "a | b"
