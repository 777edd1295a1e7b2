"""``every_s`` schedules and the ``@periodic_task`` / ``@cron_task`` decorators (injected clock,
memory transport), beside the cron tests of test_scheduler.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asynctask import cron_task, periodic_task
from asynctask.config import Settings, load_settings
from asynctask.cron import validate_entries
from asynctask.errors import ConfigurationError, ScheduleError
from asynctask.fire_times import EveryTrigger
from asynctask.scheduler import Scheduler
from asynctask.schedules import decorated_schedules
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker
from asynctask.workers.plan import scheduled_children

T0 = datetime(2026, 11, 22, 5, 0, 0, 400_000, tzinfo=UTC)


class Tick(AsyncTaskWorker):
    name = "sched_every_tick"

    def process(self, payload: dict[str, Any]) -> None:
        pass


@periodic_task(every_s=25, queue="low_jobs", max_attempts=2)
def refresh() -> str:
    return "refreshed"


@cron_task("0 5 * * tue", timezone="Europe/Paris", queue="weekly")
def weekly_report() -> None:
    pass


def scheduler(entries: list[dict[str, Any]], url: str, *, decorated: bool = False) -> Scheduler:
    return Scheduler(entries, url, {}, clock=lambda: T0, decorated=decorated_schedules() if decorated else ())


def test_every_s_fires_at_start_plus_multiples_the_same_on_every_node() -> None:
    trigger = EveryTrigger(25, None, None)
    first = trigger.get_next_fire_time(None, T0)
    assert first is not None and first >= T0 and first.timestamp() % 25 == 0
    assert trigger.get_next_fire_time(first, first) == first + timedelta(seconds=25)
    started = EveryTrigger(2.5, T0, T0 + timedelta(seconds=6))
    fires = [started.get_next_fire_time(None, T0)]
    while (following := started.get_next_fire_time(fires[-1], fires[-1])) is not None:
        fires.append(following)
    assert fires == [T0 + timedelta(seconds=s) for s in (0, 2.5, 5.0)]


def test_every_s_entries_fire_once_per_time_across_three_schedulers() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    entry = {"worker": "sched_every_tick", "every_s": 2, "queue": "ticks"}
    nodes = [scheduler([entry], url) for _ in range(3)]
    fired = []
    for offset in range(0, 11):
        now = T0 + timedelta(seconds=offset)
        for node in nodes:
            fired += node.tick(now)
    assert len(fired) in (5, 6)
    assert len({fire.fire_time for fire in fired}) == len(fired)  # never twice for one fire time
    assert MemoryTransport(url).stats("ticks").ready == len(fired)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"worker": "sched_every_tick", "every_s": 5, "minute": "*"}, "every_s or cron fields are allowed, not both"),
        ({"worker": "sched_every_tick", "every_s": 5, "crontab": "* * * * *"}, "not both (found crontab)"),
        ({"worker": "sched_every_tick", "every_s": 0}, "every_s: 0: a number of seconds > 0 is allowed"),
        ({"worker": "sched_every_tick", "every_s": "5"}, "every_s: '5': a number of seconds > 0"),
    ],
)
def test_a_bad_every_s_is_refused_in_one_line_naming_the_entry(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ScheduleError, match=r"\[0\] \(worker 'sched_every_tick'\)") as caught:
        validate_entries([entry])
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_every_s_in_a_config_file_stops_the_load(tmp_path: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("asynctask_scheduled_workers: [{worker: x, every_s: 0}]\n")
    with pytest.raises(ConfigurationError, match=r"every_s: 0: a number of seconds > 0"):
        load_settings([str(config)])


def test_decorated_functions_are_tasks_with_schedules_on_their_queue() -> None:
    assert refresh() == "refreshed"
    assert refresh.options.max_attempts == 2
    by_fn = {entry.meta["fn"]: entry for entry in decorated_schedules()}
    every, cron = by_fn[refresh.name], by_fn[weekly_report.name]
    assert (every.queue, every.worker, str(every.trigger).startswith("every 25 s")) == ("low_jobs", "tasks", True)
    assert every.source == f"@periodic_task({refresh.name})"
    assert (cron.queue, cron.timezone) == ("weekly", "Europe/Paris")
    # a supervisor runs the tasks worker on their queues even when asynctask_workers names others
    children = scheduled_children(Settings(require=(__name__,)))
    assert children["low_jobs"] == "tasks" and children["weekly"] == "tasks"


def test_a_scheduler_fires_the_decorated_function_with_its_meta() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    node = scheduler([], url, decorated=True)
    start = refresh_first_fire()
    fires = [fire for fire in node.tick(start) if fire.queue == "low_jobs"]
    assert len(fires) == 1
    (task,) = MemoryTransport(url).get_tasks("low_jobs", 10)
    assert task.meta == {"fn": refresh.name} and task.payload == {"args": [], "kwargs": {}}


def refresh_first_fire() -> datetime:
    trigger = EveryTrigger(25, None, None)
    moment = trigger.get_next_fire_time(None, T0)
    assert moment is not None
    return moment


def test_a_bad_decorator_schedule_fails_when_it_runs() -> None:
    with pytest.raises(ScheduleError, match=r"@periodic_task\(.*\): every_s: -1"):

        @periodic_task(every_s=-1)
        def never() -> None:
            pass
