"""``python -m bench migrate [--tasks N] [--runs N]``: ``asynctask migrate`` of N tasks from the
filesystem store to Redis, then from Redis to PostgreSQL, beside the bare loop doing the same work.

The tasks are a user's backlog: priorities 0..9, every tenth delayed 600 s, every seventh with meta,
ten dead letters.  Each migrate runs as the command a user types (a subprocess, ``--dead``); after
it, the target's tasks are compared with the source's (ids, payloads, meta, priorities, delayed or
not) and the source must be empty.  The floor is the same transports' bare loop: take a batch of
1,000 from the source, ``put_tasks`` them in the target, ack them in the source, in this process,
over a second filled copy: the rate of the contract calls without the command around them.

Redis database 8 under a key prefix of its own, PostgreSQL database ``test`` in a schema of its own;
both removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asynctask.transports import get_transport
from asynctask.transports.base import Transport

QUEUE = "bench_migrate"
ADMIN = str(Path(sys.executable).parent / "asynctask")


def fill(transport: Transport, count: int) -> None:
    for start in range(0, count, 1000):
        for priority in range(10):
            chunk = [
                {"n": i, "pad": "x" * 40}
                for i in range(start, min(start + 1000, count))
                if i % 10 == priority and i % 7
            ]
            if chunk:
                transport.submit_tasks(QUEUE, chunk, priority=priority, delay_s=600 if priority == 9 else 0)
        with_meta = [{"n": i} for i in range(start, min(start + 1000, count)) if i % 7 == 0]
        transport.submit_tasks(QUEUE, with_meta, priority=4, meta={"fn": "app.f"})
    transport.submit_tasks(QUEUE, [{"dead": i} for i in range(10)], priority=9)
    for task in transport.get_tasks(QUEUE, 10, timeout_s=5):
        transport.dead(task, "ValueError: for the benchmark")


def snapshot(transport: Transport) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    cursor = ""
    while True:
        page, cursor = transport.peek_tasks(QUEUE, after=cursor, limit=10_000)
        out.update((r.id, (r.body, r.priority, r.attempts, r.delay_s > 300)) for r in page)
        if not cursor:
            return out


def floor(source: Transport, target: Transport) -> float:
    started = time.perf_counter()
    while taken := source.take_tasks(QUEUE, 1000, lease_s=60):
        target.put_tasks(QUEUE, [record for record, _ in taken])
        source.ack_tasks([task for _, task in taken])
    return time.perf_counter() - started


def migrate(source_url: str, target_url: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [ADMIN, "migrate", "--from", source_url, "--to", target_url, "--dead", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate failed ({done.returncode}): {done.stderr}")
    return elapsed


def clear(transport: Transport) -> None:
    transport.purge(QUEUE)
    transport.purge_dead(QUEUE)


def one_pair(label: str, source_url: str, target_url: str, count: int, out: Callable[[str], Any]) -> None:
    source, target = get_transport(source_url), get_transport(target_url)
    try:
        fill(source, count)
        before = snapshot(source)
        seconds = migrate(source_url, target_url)
        after = snapshot(target)
        stats = source.stats(QUEUE)
        same = after == before and len(target.dead_tasks(QUEUE, 100)) == 10
        empty = (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
        clear(target)
        fill(source, count)
        bare = floor(source, target)
        out(
            f"{label:<22} migrate {count / seconds:>9,.0f} tasks/s ({seconds:.2f} s, process start included)"
            f"   bare loop {count / bare:>9,.0f} tasks/s   ratio {bare / seconds:.2f}"
            f"   identical after: {same}, source empty: {empty}"
        )
    finally:
        clear(source)
        clear(target)
        source.close()
        target.close()


def main(argv: list[str], out: Callable[[str], Any] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench migrate")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    tag = uuid.uuid4().hex[:8]
    directory = tempfile.mkdtemp(prefix="bench-migrate-")
    fs_url = f"filesys:{directory}"
    redis_url = f"redis://127.0.0.1:6379/8?key_prefix=benchmig{tag}"
    pg_url = f"postgresql://postgres@127.0.0.1:5432/test?schema=bench_migrate_{tag}"
    try:
        for _ in range(args.runs):
            one_pair("filesystem -> redis", fs_url, redis_url, args.tasks, out)
            one_pair("redis -> postgresql", redis_url, pg_url, args.tasks, out)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        import psycopg2

        with psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test") as conn, conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "bench_migrate_{tag}" CASCADE')
    return 0
