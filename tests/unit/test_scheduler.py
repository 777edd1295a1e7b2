"""The cron scheduler: validation, routing, fire-time logic (injected clock) and claims (memory transport)."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

import asynctask.scheduler as scheduler_module
from asynctask.cron import scheduled_queue_name, scheduled_queues, validate_entries
from asynctask.errors import ScheduleError, TransportError
from asynctask.scheduler import MISFIRE_GRACE_S, Fire, Scheduler
from asynctask.transports import get_transport
from asynctask.workers.base import AsyncTaskWorker
from asynctask.workers.command import CommandFailed, CommandWorker

T0 = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)


class CleanupWorker(AsyncTaskWorker):
    name = "sched_test_cleanup"

    def process(self, payload: dict[str, Any]) -> None:
        pass


W = CleanupWorker.name


def memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def make(entries: list[dict[str, Any]], url: str | None = None, queues: dict[str, str] | None = None) -> Scheduler:
    return Scheduler(entries, url or memory_url(), queues or {}, clock=lambda: T0)


def times(fires: list[Fire]) -> list[datetime]:
    return [fire.fire_time for fire in fires]


def run_ticks(scheduler: Scheduler, start: datetime, seconds: int, step: int = 1) -> list[Fire]:
    fires: list[Fire] = []
    for offset in range(0, seconds + 1, step):
        fires += scheduler.tick(start + timedelta(seconds=offset))
    return fires


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"worker": W, "minute": 61}, ["[0]", f"worker '{W}'", "minute", "61", "maximum"]),
        ({"worker": W, "second": "*/x"}, ["second", "*/x"]),
        ({"worker": W, "day_of_week": "funday"}, ["day_of_week", "funday"]),
        ({"worker": W, "hour": True}, ["hour", "an integer or a cron expression"]),
        ({"worker": "nope_worker", "minute": 0}, ["worker", "unknown worker 'nope_worker'", W]),
        ({"worker": W, "command": "true", "minute": 0}, ["worker/command", "exactly one"]),
        ({"minute": 0}, ["no worker or command", "exactly one"]),
        ({"worker": W}, ["at least one cron field", "second", "crontab"]),
        ({"worker": W, "crontab": "0 3 * *"}, ["crontab", "five fields"]),
        ({"worker": W, "crontab": "0 3 * * 1", "minute": 5}, ["crontab", "not both"]),
        ({"worker": W, "crontab": "0 3 * * 9"}, ["crontab", "day of week"]),
        ({"worker": W, "minute": 0, "timezone": "Mars/Base"}, ["timezone", "Mars/Base", "IANA"]),
        ({"worker": W, "minute": 0, "misfire": "twice"}, ["misfire", "skip, once"]),
        ({"worker": W, "minutes": 0}, ["minutes", "unknown key", "allowed"]),
        ({"worker": W, "minute": 0, "payload": [1]}, ["payload", "JSON object"]),
        ({"worker": W, "minute": 0, "queue": "Bad Queue"}, ["queue", "invalid queue name"]),
        ({"worker": W, "minute": 0, "start_date": "soon"}, ["start_date", "ISO date"]),
        ({"worker": W, "minute": 0, "start_date": "2026-02-01", "end_date": "2026-01-01"}, ["end_date", "before"]),
        ({"command": "echo 'unbalanced", "minute": 0}, ["command", "cannot split"]),
        ({"command": [], "minute": 0}, ["command", "non-empty"]),
        ({"command": "echo", "minute": 0, "payload": {"command": "x"}}, ["payload", "'command' key"]),
    ],
)
def test_validation_errors_name_entry_field_and_allowed(entry: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ScheduleError) as info:
        make([{"worker": W, "minute": 0}, entry] if "[0]" not in expected else [entry])
    message = info.value.message
    assert "\n" not in message
    assert message.startswith("asynctask_scheduled_workers[")
    for part in expected:
        assert part in message, (part, message)


def test_validate_entries_without_registry_check_and_with_source() -> None:
    entries = validate_entries([{"worker": "anything", "minute": 0}], "cfg.yaml: asynctask_scheduled_workers")
    assert entries[0].worker == "anything"
    with pytest.raises(ScheduleError, match=r"^cfg.yaml: asynctask_scheduled_workers\[0\] "):
        validate_entries([{"worker": "x"}], "cfg.yaml: asynctask_scheduled_workers")
    assert validate_entries(None) == []
    with pytest.raises(ScheduleError, match="a list of entries"):
        validate_entries({"worker": "x"})


def test_null_values_are_absent() -> None:
    (entry,) = validate_entries([{"worker": "w1", "command": None, "minute": 0, "payload": None}])
    assert entry.command is None
    assert entry.payload == {}


# -- routing and ids -------------------------------------------------------------------------------


def test_queue_routing_and_command_payload() -> None:
    scheduler = make(
        [
            {"worker": W, "minute": 0},
            {"worker": "command", "minute": 1, "payload": {"command": ["true"]}},
            {"command": "echo 'hello world'", "minute": 2, "payload": {"cwd": "/tmp"}},
            {"command": ["echo", "x"], "minute": 3, "queue": "nightly"},
        ]
    )
    entries = scheduler.entries
    assert [scheduler.queues[e.schedule_id] for e in entries] == [
        "scheduled_" + W,
        "scheduled_command",
        "scheduled_command",
        "nightly",
    ]
    assert entries[2].payload == {"command": ["echo", "hello world"], "cwd": "/tmp"}
    assert entries[2].label == "command \"echo 'hello world'\""
    configured = make([{"worker": W, "minute": 0}], queues={W: "cleanups"})
    assert configured.queues[configured.entries[0].schedule_id] == "cleanups"
    assert scheduled_queues(entries, {}) == {
        "scheduled_" + W: W,
        "scheduled_command": "command",
        "nightly": "command",
    }
    assert scheduled_queues(configured.entries, {W: "cleanups"}) == {}
    assert scheduled_queue_name("a") == "scheduled_a"


def test_schedule_id_is_stable_and_changes_with_the_entry() -> None:
    a = validate_entries([{"worker": "w1", "minute": 0, "hour": 3}])[0]
    b = validate_entries([{"hour": "3", "timezone": "UTC", "misfire": "skip", "minute": "0", "worker": "w1"}])[0]
    c = validate_entries([{"worker": "w1", "minute": 0, "hour": 4}])[0]
    assert a.schedule_id == b.schedule_id != c.schedule_id
    assert len(a.schedule_id) == 16
    moved = validate_entries([{"worker": "w2", "second": 1}, {"worker": "w1", "minute": 0, "hour": 3}])[1]
    assert moved.schedule_id == a.schedule_id
    twins = validate_entries([{"worker": "w1", "minute": 0}, {"worker": "w1", "minute": 0}])
    assert twins[1].schedule_id == twins[0].schedule_id + "-2"


# -- fire times ------------------------------------------------------------------------------------


def test_every_two_seconds_fires_once_per_even_second() -> None:
    url = memory_url()
    scheduler = make([{"worker": W, "second": "*/2"}], url)
    fires = run_ticks(scheduler, T0, 10)
    assert times(fires) == [T0 + timedelta(seconds=s) for s in range(0, 11, 2)]
    assert all(fire.task_id and fire.queue == "scheduled_" + W and not fire.catch_up for fire in fires)
    transport = get_transport(url)
    assert transport.stats("scheduled_" + W).ready == 6
    task = transport.get_task("scheduled_" + W)
    assert task is not None
    assert task.payload == {}
    assert scheduler.next_fire_time() == T0 + timedelta(seconds=12)


def test_ticks_between_fires_submit_nothing_and_late_ticks_within_grace_catch_all() -> None:
    scheduler = make([{"worker": W, "second": "*/2"}])
    assert times(scheduler.tick(T0)) == [T0]
    assert scheduler.tick(T0 + timedelta(seconds=1, milliseconds=999)) == []
    # A tick 5 s late (within the grace) still submits every fire it passed.
    late = scheduler.tick(T0 + timedelta(seconds=7))
    assert times(late) == [T0 + timedelta(seconds=s) for s in (2, 4, 6)]


def test_start_date_is_honoured() -> None:
    start = T0 + timedelta(seconds=7)
    scheduler = make([{"worker": W, "second": "*/2", "start_date": start.isoformat()}])
    fires = run_ticks(scheduler, T0, 12)
    assert times(fires) == [T0 + timedelta(seconds=s) for s in (8, 10, 12)]


def test_start_date_as_yaml_date_in_the_entry_time_zone() -> None:
    scheduler = make(
        [{"worker": W, "hour": 0, "minute": 0, "timezone": "Asia/Tokyo", "start_date": date(2026, 11, 24)}]
    )
    fires: list[Fire] = []
    for hour in range(3 * 24 + 1):
        fires += scheduler.tick(T0 + timedelta(hours=hour))
    # 00:00 in Tokyo is 15:00 UTC the day before; the first allowed is 2026-11-24 00:00 JST.
    assert times(fires) == [datetime(2026, 11, 23, 15, 0, tzinfo=UTC), datetime(2026, 11, 24, 15, 0, tzinfo=UTC)]


def test_end_date_is_honoured() -> None:
    end = (T0 + timedelta(seconds=5)).isoformat()
    scheduler = make([{"worker": W, "second": "*/2", "end_date": end}])
    fires = run_ticks(scheduler, T0, 12)
    assert times(fires) == [T0 + timedelta(seconds=s) for s in (0, 2, 4)]
    assert scheduler.next_fire_time() is None


def test_timezone_is_honoured_across_a_dst_change() -> None:
    scheduler = make([{"worker": W, "hour": 3, "minute": 0, "timezone": "Europe/Paris"}])
    assert "timezone Europe/Paris" in scheduler.describe()[0]
    fires: list[Fire] = []
    # From 2027-03-26 (CET, UTC+1) over the switch to CEST (UTC+2) on 2027-03-28.
    start = datetime(2027, 3, 26, 0, 0, tzinfo=UTC)
    for hour in range(0, 4 * 24):
        fires += scheduler.tick(start + timedelta(hours=hour))
    assert times(fires) == [
        datetime(2027, 3, 26, 2, 0, tzinfo=UTC),
        datetime(2027, 3, 27, 2, 0, tzinfo=UTC),
        datetime(2027, 3, 28, 1, 0, tzinfo=UTC),
        datetime(2027, 3, 29, 1, 0, tzinfo=UTC),
    ]


def test_default_timezone_is_utc_and_stated() -> None:
    scheduler = make([{"worker": W, "hour": 3, "minute": 0}])
    assert "timezone UTC" in scheduler.describe()[0]
    assert scheduler.tick(datetime(2026, 11, 23, 2, 59, 59, tzinfo=UTC)) == []
    first = scheduler.tick(datetime(2026, 11, 23, 3, 0, 1, tzinfo=UTC))
    assert times(first) == [datetime(2026, 11, 23, 3, 0, tzinfo=UTC)]


def test_crontab_uses_crontab_weekdays() -> None:
    # 2026-11-22 is a Sunday: crontab weekday 0 (and 7) is Sunday, 1-5 Monday to Friday.
    sunday = make([{"worker": W, "crontab": "30 4 * * 0"}])
    at = datetime(2026, 11, 22, 4, 30, tzinfo=UTC)
    assert times(sunday.tick(at)) == [at]
    assert sunday.next_fire_time() == at + timedelta(days=7)
    seven = validate_entries([{"worker": W, "crontab": "30 4 * * 7"}])[0]
    assert "day_of_week='sun'" in str(seven.trigger)
    weekdays = validate_entries([{"worker": W, "crontab": "*/15 9-17 * * 1-5"}])[0]
    assert "day_of_week='mon,tue,wed,thu,fri'" in str(weekdays.trigger)
    assert "minute='*/15'" in str(weekdays.trigger)
    names = validate_entries([{"worker": W, "crontab": "0 0 1 * sat,sun"}])[0]
    assert "day_of_week='sat,sun'" in str(names.trigger)
    every = validate_entries([{"worker": W, "crontab": "0 0 1 * *"}])[0]
    assert str(every.trigger) == "cron[month='*', day='1', day_of_week='*', hour='0', minute='0']"
    steps = validate_entries([{"worker": W, "crontab": "0 0 * * */2"}])[0]
    assert "day_of_week='tue,thu,sat,sun'" in str(steps.trigger)


def test_misfire_skip_drops_missed_fires() -> None:
    scheduler = make([{"worker": W, "minute": 0}])
    assert times(scheduler.tick(T0)) == [T0]
    # Down from 05:00 to 08:30: the 06:00, 07:00 and 08:00 fires are missed and skipped.
    assert scheduler.tick(T0 + timedelta(hours=3, minutes=30)) == []
    assert times(scheduler.tick(T0 + timedelta(hours=4, seconds=1))) == [T0 + timedelta(hours=4)]


def test_misfire_once_runs_one_catch_up() -> None:
    scheduler = make([{"worker": W, "minute": 0, "misfire": "once"}])
    assert times(scheduler.tick(T0)) == [T0]
    catch_up = scheduler.tick(T0 + timedelta(hours=3, minutes=30))
    assert times(catch_up) == [T0 + timedelta(hours=3)]
    assert catch_up[0].catch_up
    assert scheduler.tick(T0 + timedelta(hours=3, minutes=45)) == []
    assert times(scheduler.tick(T0 + timedelta(hours=4, seconds=1))) == [T0 + timedelta(hours=4)]


def test_misfire_once_coalesces_into_an_on_time_fire() -> None:
    scheduler = make([{"worker": W, "minute": 0, "misfire": "once"}])
    scheduler.tick(T0)
    fires = scheduler.tick(T0 + timedelta(hours=3, seconds=MISFIRE_GRACE_S / 2))
    assert times(fires) == [T0 + timedelta(hours=3)]
    assert not fires[0].catch_up


def test_misfire_once_on_start_catches_up_unless_another_node_submitted_it() -> None:
    url = memory_url()
    entry = {"worker": W, "hour": 3, "minute": 0, "misfire": "once"}
    first = make([entry], url)
    # A node that is up at 03:00 submits the fire; one started at 05:00 does not repeat it.
    assert times(first.tick(datetime(2026, 11, 22, 3, 0, tzinfo=UTC))) == [datetime(2026, 11, 22, 3, 0, tzinfo=UTC)]
    assert make([entry], url).tick(T0) == []
    # All nodes were down at 03:00 (a store where nobody claimed it): the first to start catches up.
    fresh = memory_url()
    fires = make([entry], fresh).tick(T0)
    assert times(fires) == [datetime(2026, 11, 22, 3, 0, tzinfo=UTC)]
    assert fires[0].catch_up
    assert make([entry], fresh).tick(T0 + timedelta(minutes=1)) == []
    # misfire skip never catches up on start.
    assert make([{**entry, "misfire": "skip"}]).tick(T0) == []


def test_two_schedulers_on_one_store_submit_each_fire_once() -> None:
    url = memory_url()
    entries = [{"worker": W, "second": "*/2"}, {"command": "true", "second": "*/3"}]
    a, b = make(entries, url), make(entries, url)
    fires: list[Fire] = []
    for offset in range(0, 31):
        now = T0 + timedelta(seconds=offset, milliseconds=offset * 7 % 300)
        first, second = (a, b) if offset % 2 else (b, a)
        fires += first.tick(now) + second.tick(now)
    keys = [(fire.schedule_id, fire.fire_time) for fire in fires]
    assert len(keys) == len(set(keys)) == 16 + 11
    transport = get_transport(url)
    assert transport.stats("scheduled_" + W).ready == 16
    assert transport.stats("scheduled_command").ready == 11
    # Both took a share of the work.
    assert {f.task_id for f in fires} and a._pending == b._pending == []


class _FlakyTransportScheduler(Scheduler):
    """Makes the next submit fail once, as an unreachable server would."""

    fail_next_submit = False

    def _submit(self, transport: Any, fire: Fire) -> Fire:
        if self.fail_next_submit:
            self.fail_next_submit = False
            raise TransportError("server gone")
        return super()._submit(transport, fire)


def test_a_claimed_fire_whose_submit_failed_is_submitted_on_the_next_tick() -> None:
    scheduler = _FlakyTransportScheduler([{"worker": W, "second": "*/2"}], memory_url(), {})
    scheduler.tick(T0)
    scheduler.fail_next_submit = True
    with pytest.raises(TransportError):
        scheduler.tick(T0 + timedelta(seconds=2))
    fires = scheduler.tick(T0 + timedelta(seconds=3))
    assert times(fires) == [T0 + timedelta(seconds=2)]
    assert times(scheduler.tick(T0 + timedelta(seconds=4))) == [T0 + timedelta(seconds=4)]


def run_until_a_fire_is_submitted(scheduler: Scheduler, url: str) -> None:
    """Run ``scheduler.run`` in a thread until a fire reaches the store (5 s at most), then stop it:
    it must submit and stop promptly."""
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    transport = get_transport(url)
    deadline = time.monotonic() + 5
    while transport.stats("scheduled_" + W).ready < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    assert transport.stats("scheduled_" + W).ready >= 1


def test_run_submits_at_fire_times_and_stops_promptly() -> None:
    url = memory_url()
    scheduler = Scheduler([{"worker": W, "second": "*"}], url, {})
    run_until_a_fire_is_submitted(scheduler, url)


class _DownAtFirstScheduler(Scheduler):
    """Its transport cannot be opened the first ``failures`` times, as a server that is down."""

    failures = 2

    def _open(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise TransportError("cannot reach the server")
        return super()._open()


def test_run_survives_transport_errors_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scheduler_module, "RETRY_FIRST_S", 0.01)
    caplog.set_level(logging.INFO, logger="asynctask.scheduler")
    url = memory_url()
    scheduler = _DownAtFirstScheduler([{"worker": W, "second": "*"}], url, {})
    run_until_a_fire_is_submitted(scheduler, url)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[:2] == ["scheduler: transport error: cannot reach the server; retrying in 0 s"] * 2


def test_run_without_entries_says_so_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asynctask.scheduler")
    Scheduler([], memory_url(), {}).run(threading.Event())
    assert [r.getMessage() for r in caplog.records] == [
        "scheduler: no entries in asynctask_scheduled_workers; nothing is scheduled"
    ]


# -- the command worker ----------------------------------------------------------------------------


def test_command_worker_logs_output_and_fails_on_non_zero_exit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    worker = CommandWorker()
    worker.process({"command": [sys.executable, "-c", "print('out'); import sys; print('err', file=sys.stderr)"]})
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith(": out") for m in messages)
    assert any(m.endswith(": err") for m in messages)
    with pytest.raises(CommandFailed, match="exit status 3: boom"):
        worker.process({"command": [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]})
    with pytest.raises(CommandFailed, match="cannot start"):
        worker.process({"command": ["/nonexistent/program"]})
