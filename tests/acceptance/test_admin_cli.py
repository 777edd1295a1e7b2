"""The ``asynctask`` admin command as a subprocess, on the filesystem transport and on Redis.

Every subcommand, and the bad inputs: unknown queue, bad queue name, bad JSON, a bad line in a
file, an unreachable transport, an unknown scheme.  Each error is ONE line on stderr and a
non-zero exit (the codes are documented in asynctask/cli/admin.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import require_service

from asynctask.transports import get_transport
from asynctask.transports.base import Transport

SCRIPT = shutil.which("asynctask", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "asynctask.cli.admin"]


@dataclass
class Store:
    name: str
    url: str
    unreachable_url: str

    def open(self) -> Transport:
        return get_transport(self.url)


def _redis_store() -> Iterator[Store]:
    require_service("redis", "127.0.0.1", 6379)
    pytest.importorskip("asynctask.transports.redis", reason="the redis transport has not landed")
    prefix = f"admintest{uuid.uuid4().hex[:12]}"
    url = f"redis://127.0.0.1:6379/9?key_prefix={prefix}"
    yield Store("redis", url, "redis://127.0.0.1:1/9")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=9)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["filesystem", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "filesystem":
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        yield Store("filesystem", f"filesys:{tmp_path / 'store'}", f"filesys:{blocker / 'store'}")
    else:
        yield from _redis_store()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASK_")}
    environ["ASYNCTASK_HOME"] = str(tmp_path / "home")
    return environ


def cli(
    env: dict[str, str], *argv: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *argv],
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def assert_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Exit ``code``, nothing on stdout, ONE line on stderr naming every fragment."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("asynctask: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def make_dead(transport: Transport, queue: str, count: int) -> list[str]:
    transport.submit_tasks(queue, [{"n": n} for n in range(count)])
    ids = []
    for n in range(count):
        task = transport.get_task(queue, timeout_s=5)
        assert task is not None
        transport.dead(task, f"RuntimeError: failed {n}\nTraceback (most recent call last):\n  File x, line {n}")
        ids.append(task.id)
    return ids


def test_queues(store: Store, env: dict[str, str]) -> None:
    result = cli(env, "queues", "--transport", store.url)
    assert (result.returncode, result.stdout) == (0, "no queues\n"), result.stderr
    with store.open() as transport:
        transport.submit_tasks("emails", [{"n": 1}, {"n": 2}, {"n": 3}])
        transport.submit_task("emails", {"n": 4}, delay_s=3600)
        assert transport.get_task("emails") is not None
        make_dead(transport, "reports", 1)
    result = cli(env, "--transport", store.url, "queues")
    assert result.returncode == 0, result.stderr
    header, emails, reports = result.stdout.splitlines()
    assert header.split() == ["QUEUE", "READY", "DELAYED", "IN_FLIGHT", "DEAD", "OLDEST_READY"]
    assert emails.split()[:5] == ["emails", "2", "1", "1", "0"]
    assert emails.split()[5] != "-"
    assert reports.split() == ["reports", "0", "0", "0", "1", "-"]
    result = cli(env, "queues", "emails", "--json", "--transport", store.url)
    [row] = json.loads(result.stdout)
    assert row["ready"] == 2 and row["delayed"] == 1 and row["in_flight"] == 1 and row["oldest_ready_age_s"] >= 0
    assert_error(cli(env, "queues", "nope", "--transport", store.url), 5, "unknown queue 'nope'", "emails")


def test_submit(store: Store, env: dict[str, str], tmp_path: Path) -> None:
    result = cli(env, "submit", "emails", '{"to": "a@example.org"}', "--priority", "7", "--transport", store.url)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    result = cli(env, "submit", "emails", "--delay-s", "600", "--json", "--transport", store.url)
    assert json.loads(result.stdout)["submitted"] == 1
    with store.open() as transport:
        assert transport.stats("emails").delayed == 1
        task = transport.get_task("emails")
        assert task is not None and (task.id, task.priority, task.payload) == (task_id, 7, {"to": "a@example.org"})

    assert_error(cli(env, "submit", "emails", "{oops", "--transport", store.url), 2, "bad JSON")
    assert_error(cli(env, "submit", "Emails!", "{}", "--transport", store.url), 2, "invalid queue name 'Emails!'")
    if store.name == "filesystem":  # checked before the transport is used: once is enough
        assert_error(cli(env, "submit", "emails", '"text"', "--transport", store.url), 2, "a JSON object, not str")
        assert_error(cli(env, "submit", "emails", "{}", "--priority", "10", "--transport", store.url), 2, "priority")


def test_submit_file(store: Store, env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n": 1}\n{"n": 2}\n\n{"n": 3,}\n{"n": 4}\n7\n')
    assert_error(
        cli(env, "submit", "bulk", "--file", str(bad), "--transport", store.url),
        2,
        "bad.jsonl:4: bad JSON",
        "nothing was submitted",
    )
    with store.open() as transport:
        assert "bulk" not in transport.queues() or transport.stats("bulk").ready == 0
    result = cli(env, "submit", "bulk", "--file", str(bad), "--partial", "--transport", store.url)
    assert result.returncode == 1
    assert result.stdout.startswith("submitted 3 tasks to bulk") and "(2 bad lines skipped)" in result.stdout
    assert len(result.stderr.splitlines()) == 2
    assert "bad.jsonl:6: a payload must be a JSON object, not int" in result.stderr
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(2500)))
    result = cli(
        env, "submit", "bulk", "--file", "-", "--priority", "1", "--transport", store.url, stdin=good.read_text()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("submitted 2500 tasks to bulk") and result.stderr == ""
    with store.open() as transport:
        assert transport.stats("bulk").ready == 2503
        first = transport.get_task("bulk")
        assert first is not None and first.payload == {"n": 0} and first.priority == 1
    assert_error(
        cli(env, "submit", "bulk", "--file", str(tmp_path / "none.jsonl"), "--transport", store.url),
        2,
        "none.jsonl: cannot read",
    )


@contextlib.contextmanager
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (master, slave) file descriptors."""
    master, slave = pty.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        with contextlib.suppress(OSError):
            os.close(slave)


def run_on_terminal(env: dict[str, str], argv: list[str], answer: str | None = None) -> tuple[int, str, str]:
    """Run with stdin and stderr on a pty (stdout piped); type ``answer`` when asked."""
    with terminal() as (master, slave):
        process = subprocess.Popen(
            [*COMMAND, *argv], env=env, stdin=slave, stdout=subprocess.PIPE, stderr=slave, text=False
        )
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60
        answered = answer is None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(master, answer.encode() + b"\n")  # type: ignore[union-attr]
                answered = True
            if process.poll() is not None and not ready:
                break
        stdout = process.stdout.read() if process.stdout else b""
        code = process.wait(timeout=30)
    return code, stdout.decode(), seen.decode(errors="replace")


def test_progress_bar_on_a_terminal(env: dict[str, str], tmp_path: Path) -> None:
    url = f"filesys:{tmp_path / 'store'}"
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(3000)))
    code, out, err = run_on_terminal(env, ["submit", "big", "--file", str(path), "--transport", url])
    assert code == 0, err
    assert out.startswith("submitted 3000 tasks to big")
    assert "\r" in err and "3000/3000 100%" in err and "[" in err


def test_purge(store: Store, env: dict[str, str]) -> None:
    with store.open() as transport:
        transport.submit_tasks("emails", [{}, {}])
        transport.submit_task("emails", delay_s=600)
        transport.submit_task("other")
    refused = cli(env, "purge", "emails", "--transport", store.url)
    assert_error(refused, 2, "refusing to purge queue 'emails' without --yes")
    assert_error(cli(env, "purge", "nope", "--yes", "--transport", store.url), 5, "unknown queue 'nope'")
    assert_error(cli(env, "purge", "Bad", "--yes", "--transport", store.url), 2, "invalid queue name 'Bad'")
    code, out, err = run_on_terminal(env, ["purge", "emails", "--transport", store.url], answer="n")
    assert code == 1 and "Drop 2 ready and 1 delayed tasks" in err and "not confirmed" in err
    with store.open() as transport:
        assert transport.stats("emails").ready == 2
    code, out, err = run_on_terminal(env, ["purge", "emails", "--transport", store.url], answer="y")
    assert (code, out) == (0, "purged 3 tasks from emails\n"), err
    result = cli(env, "purge", "other", "--yes", "--json", "--transport", store.url)
    assert json.loads(result.stdout) == {"queue": "other", "purged": 1}
    with store.open() as transport:
        assert transport.stats("emails").ready == transport.stats("other").ready == 0


def test_dead(store: Store, env: dict[str, str]) -> None:
    with store.open() as transport:
        ids = make_dead(transport, "emails", 3)
    result = cli(env, "dead", "list", "emails", "--transport", store.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ATTEMPTS", "DEAD_AT", "REASON"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(ids)
    assert "RuntimeError: failed" in lines[1]
    result = cli(env, "dead", "show", "emails", ids[2], "--transport", store.url)
    assert result.returncode == 0 and f"id:        {ids[2]}" in result.stdout and "  File x, line 2" in result.stdout
    result = cli(env, "dead", "show", "emails", ids[0], "--json", "--transport", store.url)
    [shown] = json.loads(result.stdout)
    assert shown["payload"] == {"n": 0} and shown["attempts"] == 1 and "Traceback" in shown["reason"]
    assert_error(cli(env, "dead", "show", "emails", "f" * 32, "--transport", store.url), 5, "no dead task fff")
    assert_error(cli(env, "dead", "list", "nope", "--transport", store.url), 5, "unknown queue 'nope'")
    result = cli(env, "dead", "replay", "emails", ids[0], "0" * 32, "--transport", store.url)
    assert_error(result, 5, "no dead task 000")
    result = cli(env, "dead", "replay", "emails", ids[0], "--transport", store.url)
    assert (result.returncode, result.stdout) == (0, "replayed 1 dead tasks to emails\n")
    with store.open() as transport:
        task = transport.get_task("emails", timeout_s=5)
        assert task is not None and task.id == ids[0] and task.attempts == 1
        transport.ack(task)
    result = cli(env, "dead", "purge", "emails", ids[1], "--transport", store.url)
    assert_error(result, 2, "refusing to purge dead tasks")
    result = cli(env, "dead", "purge", "emails", ids[1], "--yes", "--transport", store.url)
    assert (result.returncode, result.stdout) == (0, "deleted 1 dead tasks of emails\n")
    result = cli(env, "dead", "replay", "emails", "--json", "--transport", store.url)
    assert json.loads(result.stdout) == {"queue": "emails", "replayed": 1}


def test_unreachable_and_bad_urls(store: Store, env: dict[str, str]) -> None:
    for argv in (["queues"], ["submit", "emails", "{}"], ["purge", "emails", "--yes"], ["dead", "list", "emails"]):
        result = cli(env, *argv, "--transport", store.unreachable_url)
        assert_error(result, 3)
        assert "Traceback" not in result.stderr
    option = store.url + ("&" if "?" in store.url else "?") + "nosuch=1"
    assert_error(cli(env, "queues", "--transport", option), 2, "unknown option 'nosuch'")


def test_unknown_scheme(env: dict[str, str]) -> None:
    assert_error(
        cli(env, "queues", "--transport", "rediz://127.0.0.1/0"),
        2,
        "unknown transport scheme 'rediz'",
        "did you mean 'redis'",
    )


WORKERS = """
from asynctask.workers.base import AsyncTaskWorker

class SendEmail(AsyncTaskWorker):
    name = "send_email"

    def process(self, payload):
        pass

class Unused(AsyncTaskWorker):
    name = "unused"

    def process(self, payload):
        pass
"""


def test_doctor(store: Store, env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "doctorworkers.py").write_text(WORKERS)
    env = {**env, "PYTHONPATH": str(tmp_path)}
    config = tmp_path / "asynctask.yaml"
    config.write_text(
        f"asynctask_transport: '{store.url}'\nasynctask_require: [doctorworkers]\n"
        "asynctask_workers:\n  emails: send_email\n"
    )
    with store.open() as transport:
        transport.submit_task("emails")
    result = cli(env, "doctor", cwd=tmp_path)  # ./asynctask.yaml, as asynctask-workers reads it
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok] transport:" in result.stdout and "[warning] worker without queue: unused" in result.stdout
    assert "emails: send_email" in result.stdout
    with store.open() as transport:
        transport.submit_task("orphans")
    result = cli(env, "doctor", "--json", "--config", str(config))
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert [c["detail"] for c in report["checks"] if c["status"] == "problem"] == [
        "orphans: 1 tasks wait and no worker takes them"
    ]
    result = cli(env, "doctor", "--config", str(config), "--set", "asynctask_workers={orphans: nobody}")
    assert result.returncode == 1 and "unknown worker 'nobody'" in result.stdout
    secret = store.unreachable_url.replace("://", "://user:s3cret@") if "//" in store.unreachable_url else None
    result = cli(env, "doctor", "--config", str(config), "--transport", secret or store.unreachable_url)
    assert result.returncode == 1 and "[problem] transport:" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@127.0.0.1:1/0",
        "pgsql://postgres:pw@127.0.0.1:1/test",
        "amqp://guest:pw@127.0.0.1:1/%2F",
    ],
)
def test_unreachable_server_is_one_line(env: dict[str, str], url: str) -> None:
    """Whatever the driver logs while failing to connect, the user sees one line, password masked."""
    pytest.importorskip(f"asynctask.transports.{url.split(':', maxsplit=1)[0]}")
    result = cli(env, "queues", "--transport", url)
    assert_error(result, 3, "127.0.0.1")
    assert ":pw@" not in result.stderr
