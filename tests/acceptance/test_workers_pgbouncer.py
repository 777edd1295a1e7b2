"""asynctask-workers on PostgreSQL through PgBouncer in transaction mode (issue 16): 3,000 tasks
drained by 2 worker processes while the PgBouncer process is restarted; nothing is lost, duplicates
(a task whose ack was cut by the restart runs again when its lease ends) are counted and reported."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from workers_support import stop, transport_world, wait_for

pytest_plugins = ["cluster_fixtures"]

TASKS = 3000


def test_pgbouncer_restarted_under_two_worker_processes_loses_nothing(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    from cluster_fixtures import shared_pgbouncer

    bouncer = shared_pgbouncer()
    with transport_world("pgsql_pgbouncer", tmp_path) as world:
        url = world.url + "&lease_s=3"  # a delivery whose ack the restart cut comes back soon
        world.transport.submit_tasks("jobs", [{"out": world.out, "n": n} for n in range(TASKS)])
        config = world.config({"jobs": {"worker": "acc_record", "processes": 2}}, asynctask_transport=url)
        started = time.monotonic()
        process = world.start("--config", config)
        try:
            wait_for(lambda: len(world.records()) >= TASKS // 5, timeout=60, what="a fifth of the tasks done")
            bouncer.restart()
            restarted = time.monotonic()
            wait_for(lambda: len({r["payload"]["n"] for r in world.records()}) == TASKS, timeout=90, what="every task")
            drained = time.monotonic()
            wait_for(lambda: world.transport.stats("jobs").in_flight == 0, timeout=30, what="no task in flight")
        finally:
            _out, err = stop(process)
        seen = Counter(r["payload"]["n"] for r in world.records())
        duplicates = sum(count - 1 for count in seen.values())
        record_property("duplicates", duplicates)
        print(
            f"{TASKS} tasks, 2 processes, PgBouncer restarted after {restarted - started:.1f} s:"
            f" drained in {drained - started:.1f} s, {duplicates} duplicates"
        )
        assert set(seen) == set(range(TASKS)), "lost tasks"
        assert "lost the connection to PostgreSQL" in err, "the restart cut the workers' connections"
        assert len({r["pid"] for r in world.records()}) >= 2, "both processes worked"
        stats = world.transport.stats("jobs")
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0), err[-2000:]
        assert process.returncode == 0, err[-2000:]
