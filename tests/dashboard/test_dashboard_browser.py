"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

``asynctask-workers`` (the workers of ``dashboard_workers.py``) and ``asynctask dashboard`` run as
subprocesses on a filesystem store in a temporary directory.  The test submits tasks, watches the
queue counts change on the Queues page, opens a dead letter's traceback, replays it (the flaky
worker now succeeds) and sees it processed; it also opens the Workers, Schedules and Task pages.
A screenshot of each page is saved under ``$ASYNCTASK_SCREENSHOTS`` (else the test's temporary
directory); the path is printed.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``.ci/services``
installs it).  Without it (or without Playwright) the test skips locally and fails in CI
(``ASYNCTASK_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REQUIRE_SERVICES, free_port

from asynctask.transports import get_transport

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} and ASYNCTASK_REQUIRE_SERVICES=1")
    pytest.skip(what)


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


class World:
    """The store, the config, the two subprocesses."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url = f"filesys:{tmp / 'store'}"
        self.out = tmp / "out.jsonl"
        self.flag = tmp / "flag"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "asynctask.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "asynctask_transport": self.url,
                    "asynctask_require": ["dashboard_workers"],
                    "asynctask_workers": {"greetings": "dash_ok", "flaky": "dash_flaky"},
                    "asynctask_scheduled_workers": [
                        {"worker": "dash_ok", "every_s": 3600, "payload": {"out": str(self.out), "n": 0}}
                    ],
                    "asynctask_workers_poll_interval": 50,
                    "asynctask_workers_check_child_interval": 100,
                    "asynctask_shutdown_timeout": 10,
                    "asynctask_heartbeat_s": 1,
                }
            )
        )
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "ASYNCTASK_HOME": str(tmp / "home"),
        }
        self.env.pop("ASYNCTASK_TRANSPORT", None)
        self.env.pop("ASYNCTASK_CONFIG", None)
        self.transport = get_transport(self.url)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, program: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{program}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [str(BIN / program), "--config", str(self.config), *args],
            env=self.env,
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def processed(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.transport.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.tmp.glob("*.log"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ASYNCTASK_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {where}")
    return where


def test_dashboard_in_chromium(world: World, shots: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("playwright is not installed (the dev extra)")
    expect.set_options(timeout=15_000)  # a loaded CI machine: the pages poll every 2 s

    dashboard = world.start("asynctask", "dashboard", "--port", str(world.port), "--sample-s", "0.5")
    assert wait_for(lambda: _get(world.base + "/api/about"), 20, "the dashboard to answer"), world.logs()
    ok_ids = world.transport.submit_tasks("greetings", [{"out": str(world.out), "n": n} for n in range(5)])
    payloads = [{"out": str(world.out), "flag": str(world.flag), "n": n} for n in range(3)]
    world.transport.submit_tasks("flaky", payloads)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            queues_change(page, world, shots)
            workers_show(page, world, shots)
            dead_letters_replay(page, world, shots)
            other_pages(page, world, shots, ok_ids[0])
            assert not errors, errors
        finally:
            browser.close()
    assert dashboard.poll() is None, world.logs()


def queues_change(page: Any, world: World, shots: Path) -> None:
    """Queues: the tasks wait (no worker yet), then the workers run them: the counts change by themselves."""
    from playwright.sync_api import expect

    page.goto(world.base + "/")
    greetings = page.locator('tr[data-queue="greetings"] td')
    flaky = page.locator('tr[data-queue="flaky"] td')
    expect(greetings.nth(1)).to_have_text("5")
    expect(flaky.nth(1)).to_have_text("3")
    world.start("asynctask-workers")
    expect(greetings.nth(1)).to_have_text("0", timeout=20_000)
    expect(flaky.nth(4)).to_have_text("3", timeout=20_000)  # dead
    wait_for(lambda: len(world.processed()) == 5, 10, "the good tasks")
    history = lambda: (_get(world.base + "/api/history") or {}).get("samples", [])  # noqa: E731
    wait_for(lambda: any((s["done_per_s"] or 0) > 0 for s in history()), 10, "throughput on the chart")
    page.wait_for_timeout(1500)  # a few more samples on the chart
    expect(page.locator("#chart svg polyline").first).to_be_visible()
    page.screenshot(path=str(shots / "queues.png"), full_page=True)


def workers_show(page: Any, world: World, shots: Path) -> None:
    """Workers: the supervisor and its children, from the registry."""
    from playwright.sync_api import expect

    page.goto(world.base + "/workers")
    expect(page.locator(".sup h3").first).to_contain_text("pid", timeout=10_000)
    expect(page.locator(".sup table")).to_contain_text("dash_flaky")
    page.screenshot(path=str(shots / "workers.png"), full_page=True)


def dead_letters_replay(page: Any, world: World, shots: Path) -> None:
    """Dead letters: open one's traceback, replay it once the worker succeeds, then replay all."""
    from playwright.sync_api import expect

    page.goto(world.base + "/")
    page.locator('tr[data-queue="flaky"] a').click()
    page.wait_for_url("**/queues/flaky")
    letters = page.locator("details.dead")
    expect(letters).to_have_count(3)
    letters.first.locator("summary").click()
    traceback = letters.first.locator("pre.traceback")
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback")
    expect(traceback).to_contain_text("the flag file is not there yet")
    page.screenshot(path=str(shots / "dead_letters.png"), full_page=True)
    world.flag.write_text("go")
    replayed_id = letters.first.get_attribute("data-id")
    letters.first.locator("button.replay").click()
    expect(page.locator("#flash")).to_contain_text("replayed 1")
    expect(letters).to_have_count(2, timeout=10_000)
    wait_for(lambda: any(r["id"] == replayed_id for r in world.processed()), 15, "the replayed task to run")
    expect(page.locator("#stats td").nth(3)).to_have_text("2", timeout=10_000)
    page.screenshot(path=str(shots / "dead_letters_after_replay.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())  # "Replay every dead letter?"
    page.locator("#replay-all").click()
    expect(letters).to_have_count(0, timeout=10_000)
    wait_for(lambda: sum(r["queue"] == "flaky" for r in world.processed()) == 3, 15, "every flaky task")


def other_pages(page: Any, world: World, shots: Path, task_id: str) -> None:
    """Schedules, and a task by id with its result."""
    from playwright.sync_api import expect

    page.goto(world.base + "/schedules")
    expect(page.locator("#schedules")).to_contain_text("every 3600 s", timeout=10_000)
    page.screenshot(path=str(shots / "schedules.png"), full_page=True)
    page.goto(world.base + f"/task?id={task_id}")
    expect(page.locator("#task")).to_contain_text("done", timeout=10_000)
    expect(page.locator("#task")).to_contain_text("hello 0")
    page.screenshot(path=str(shots / "task.png"), full_page=True)
