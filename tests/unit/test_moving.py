"""export / import / migrate (asynctask.moving and the admin commands) on memory transports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asynctask.cli.admin import main
from asynctask.errors import ConfigurationError
from asynctask.moving import MoveOptions, export_records, import_records, migrate_queue, same_store
from asynctask.transports import get_transport
from asynctask.transports.base import Transport
from asynctask.transports.memory import MemoryTransport
from asynctask.transports.transfer import TaskRecord


def _fill(transport: Transport, queue: str) -> None:
    transport.submit_tasks(queue, [{"n": i} for i in range(25)], priority=3)
    transport.submit_tasks(queue, [{"n": i} for i in range(25, 30)], delay_s=600, meta={"fn": "m.f"})
    transport.submit_tasks(queue, [{"dead": i} for i in range(3)])
    for task in transport.get_tasks(queue, 100, timeout_s=0):
        if "dead" in task.payload:
            transport.dead(task, f"boom {task.payload['dead']}")
        else:
            transport.nack(task, count_attempt=True)


def _snapshot(transport: Transport, queue: str) -> list[tuple[object, ...]]:
    rows = [
        (r.id, r.body, r.priority, r.attempts, r.enqueued_at, r.delay_s > 0) for r in export_records(transport, queue)
    ]
    dead = [(d.id, d.body, d.reason, d.attempts, d.dead_at) for d in transport.dead_tasks(queue, 100)]
    return sorted(rows) + sorted(dead)  # type: ignore[arg-type]


def test_migrate_moves_waiting_and_dead_tasks_with_everything_kept() -> None:
    source, target = get_transport("memory://mv_src1"), get_transport("memory://mv_dst1")
    _fill(source, "jobs")
    before = _snapshot(source, "jobs")
    steps: list[int] = []
    summary = migrate_queue(source, target, "jobs", MoveOptions(dead=True, batch=7, progress=steps.append))
    assert (summary.moved, summary.skipped, summary.dead_moved, summary.in_flight_left) == (30, 0, 3, 0)
    assert sum(steps) == 33 and max(steps) <= 7
    assert _snapshot(target, "jobs") == before
    stats = source.stats("jobs")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_an_interrupted_migrate_run_again_loses_nothing_and_stores_nothing_twice() -> None:
    now = [1000.0]
    source = MemoryTransport("memory://mv_src2", clock=lambda: now[0])
    target = MemoryTransport("memory://mv_dst2", clock=lambda: now[0])
    _fill(source, "jobs")
    before = {r.id for r in export_records(source, "jobs")}
    # killed between the put and the ack: the batch is in the target and still held in the source
    taken = source.take_tasks("jobs", 10, lease_s=60)
    target.put_tasks("jobs", [record for record, _ in taken])
    held = migrate_queue(source, target, "jobs")
    assert (held.moved, held.in_flight_left) == (20, 10)
    now[0] += 61  # the lease of the killed run ends
    again = migrate_queue(source, target, "jobs")
    assert (again.moved, again.skipped, again.in_flight_left) == (0, 10, 0)
    assert {r.id for r in export_records(target, "jobs")} == before
    assert target.stats("jobs").ready + target.stats("jobs").delayed == 30


def test_dry_run_moves_nothing_and_the_same_store_is_refused() -> None:
    source, target = get_transport("memory://mv_src3"), get_transport("memory://mv_dst3")
    _fill(source, "jobs")
    summary = migrate_queue(source, target, "jobs", MoveOptions(dead=True, dry_run=True))
    assert (summary.moved, summary.dead_moved) == (30, 3)
    assert target.queues() == []
    with pytest.raises(ConfigurationError, match="same store"):
        migrate_queue(source, get_transport("memory://mv_src3"), "jobs")


def test_two_urls_of_one_store_are_the_same_store(tmp_path: Path) -> None:
    one, other = get_transport(f"filesys:{tmp_path}"), get_transport(f"file://{tmp_path}")
    one.submit_task("jobs", {"n": 1})
    with pytest.raises(ConfigurationError, match="same store"):
        migrate_queue(one, other, "jobs")
    assert one.stats("jobs").ready == 1
    assert not same_store(one, get_transport(f"filesys:{tmp_path / 'elsewhere'}"))


def test_import_skips_ids_it_holds() -> None:
    transport = get_transport("memory://mv_imp")
    records = [TaskRecord(f"{i:032x}", json.dumps({"i": i})) for i in range(5)]
    assert import_records(transport, "jobs", records, MoveOptions(batch=2)) == (5, 0)
    assert import_records(transport, "jobs", records) == (0, 5)


def test_export_then_import_through_the_commands_round_trips_every_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(get_transport("memory://mv_cli_src"), "jobs")
    out = tmp_path / "jobs.jsonl"
    dead = tmp_path / "dead.jsonl"
    assert main(["export", "jobs", "--output", str(out), "--transport", "memory://mv_cli_src"]) == 0
    assert main(["export", "jobs", "--dead", "-o", str(dead), "--transport", "memory://mv_cli_src"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 30 and {"id", "payload", "meta", "priority", "attempts", "enqueued_at", "delay_s"} <= set(
        lines[0]
    )
    assert main(["import", "jobs", str(out), "--transport", "memory://mv_cli_dst"]) == 0
    assert main(["import", "jobs", str(dead), "--dead", "--transport", "memory://mv_cli_dst"]) == 0
    capsys.readouterr()
    assert main(["import", "jobs", str(out), "--json", "--transport", "memory://mv_cli_dst"]) == 0
    assert json.loads(capsys.readouterr().out) == {"queue": "jobs", "stored": 0, "duplicates_skipped": 30}
    source, target = get_transport("memory://mv_cli_src"), get_transport("memory://mv_cli_dst")
    assert _snapshot(target, "jobs") == _snapshot(source, "jobs")


def test_a_bad_import_line_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "payload": {}}\n{"id": "b", "priority": 12}\n')
    assert main(["import", "jobs", str(bad), "--transport", "memory://mv_bad"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "priority" in err and len(err.strip().splitlines()) == 1
    assert get_transport("memory://mv_bad").stats("jobs").ready == 0
