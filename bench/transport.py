"""``python -m bench transport [URL]``: a transport's rates beside its floor's, in the same run.

Figures (each the median of ``--runs``; rates in tasks per second):

* ``submit_task``: ``--tasks`` single submits;
* ``submit_tasks``: ``--tasks`` tasks in batches of ``--batch``;
* ``drain@B``: one consumer's ``get_tasks(queue, 100)`` + ``ack_tasks`` loop taking ``--drain``
  tasks (at most B) from a queue holding B tasks, for each B of ``--backlog`` (default
  ``1000,100000``).  The backlog is filled once and topped up after each run, then written
  back with ``sync`` (untimed; see :func:`settle`).

Each line shows the transport's spread over the runs (the first drain of a backlog pays for
listing it: a cold start), the floor (``bench/floors/<transport>.py``: the same storage operations without the
transport) and transport/floor; the last lines compare drain rates across backlogs.  Without a URL
the filesystem transport runs in a temporary directory.  The bench uses queues named ``bench_<hex>``
and removes them (and temporary directories) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from asynctask.transports import get_transport
from asynctask.transports.base import Transport, mask_url
from bench.floors import PAYLOAD, FloorProtocol, load_floor

DRAIN_BATCH = 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("transport", help="submit and drain rates of a transport against its floor")
    cmd.add_argument("url", nargs="?", help="transport URL (default: filesys: in a temporary directory)")
    cmd.add_argument("--tasks", type=int, default=5000, help="tasks per submit measurement (default 5000)")
    cmd.add_argument("--batch", type=int, default=1000, help="submit_tasks batch size (default 1000)")
    cmd.add_argument(
        "--backlog", default="1000,100000", help="comma-separated backlogs to drain from (default 1000,100000)"
    )
    cmd.add_argument("--drain", type=int, default=10000, help="tasks drained per measurement (at most the backlog)")
    cmd.add_argument("--runs", type=int, default=5, help="repetitions; the median is shown (default 5)")
    args = parser.parse_args(argv)
    args.backlogs = [int(b) for b in args.backlog.split(",") if b.strip()]
    if min([args.tasks, args.batch, args.drain, args.runs, *args.backlogs]) < 1:
        parser.error("--tasks, --batch, --backlog, --drain and --runs must be >= 1")
    return args


@contextlib.contextmanager
def bench_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    directory = tempfile.mkdtemp(prefix="asynctask-bench-")
    try:
        yield f"filesys:{directory}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def submit_single(transport: Transport, queue: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        transport.submit_task(queue, PAYLOAD)
    return time.perf_counter() - started


def submit_batches(transport: Transport, queue: str, n: int, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, n, batch):
        transport.submit_tasks(queue, [PAYLOAD] * min(batch, n - start))
    return time.perf_counter() - started


def fill(transport: Transport, queue: str, n: int, payload: dict[str, Any] | None = None, **options: Any) -> None:
    """Submit ``n`` tasks of ``payload`` (default :data:`~bench.floors.PAYLOAD`) in batches of 1000;
    ``options`` go to ``submit_tasks`` (``meta``: only when not None, so older code takes the call)."""
    options = {name: value for name, value in options.items() if value is not None}
    for start in range(0, n, 1000):
        transport.submit_tasks(queue, [PAYLOAD if payload is None else payload] * min(1000, n - start), **options)


def drain(transport: Transport, queue: str, n: int) -> float:
    started = time.perf_counter()
    taken = 0
    while taken < n:
        tasks = transport.get_tasks(queue, min(DRAIN_BATCH, n - taken))
        if not tasks:
            raise RuntimeError(f"queue {queue} ran dry after {taken} of {n} tasks")
        transport.ack_tasks(tasks)
        taken += len(tasks)
    return time.perf_counter() - started


def settle() -> None:
    """Write dirty data back (untimed) before a drain, so that every drained item is as old.

    On ext4 a file whose blocks are still delayed-allocated is unlinked about three times faster
    than one already written back; without this, a small backlog (topped up just before) would
    drain fresh files and a large one old files, and the comparison would measure file age.
    """
    os.sync()


class Figure:
    def __init__(self, label: str, count: int) -> None:
        self.label, self.count = label, count
        self.mine: list[float] = []
        self.floor: list[float] = []

    @staticmethod
    def rate(count: int, seconds: list[float]) -> float | None:
        return count / statistics.median(seconds) if seconds else None

    def row(self) -> str:
        mine, floor = self.rate(self.count, self.mine), self.rate(self.count, self.floor)
        floor_text = f"{floor:>12,.0f}" if floor else f"{'no floor':>12}"
        ratio = f"{mine / floor:>6.2f}" if mine and floor else f"{'-':>6}"
        spread = f"  (runs {self.count / max(self.mine):,.0f}..{self.count / min(self.mine):,.0f})" if self.mine else ""
        return f"{self.label:<34}{mine or 0:>12,.0f}{floor_text}{ratio}{spread}"


def measure(url: str, args: argparse.Namespace, out: Callable[[str], None]) -> dict[str, Figure]:
    """Run every figure ``args.runs`` times, the transport and its floor one after the other."""
    transport = get_transport(url)
    base = "bench_" + uuid.uuid4().hex[:10]
    queues = [f"{base}_s", f"{base}_b"] + [f"{base}_d{b}" for b in args.backlogs]
    figures = {
        "single": Figure(f"submit_task (n={args.tasks})", args.tasks),
        "batch": Figure(f"submit_tasks (n={args.tasks}, batch {args.batch})", args.tasks),
    }
    drains = {b: min(args.drain, b) for b in args.backlogs}
    for backlog, count in drains.items():
        figures[f"drain{backlog}"] = Figure(f"drain@{backlog} (n={count}, get_tasks {DRAIN_BATCH})", count)
    floors: dict[int, FloorProtocol | None] = {}
    try:
        floors[0] = load_floor(url)
        for backlog in args.backlogs:  # filled once, topped up after each run (untimed)
            fill(transport, f"{base}_d{backlog}", backlog)
            floors[backlog] = floor = load_floor(url)
            if floor is not None:
                floor.fill(backlog)
        settle()
        for run in range(args.runs):
            figures["single"].mine.append(submit_single(transport, f"{base}_s", args.tasks))
            transport.purge(f"{base}_s")
            figures["batch"].mine.append(submit_batches(transport, f"{base}_b", args.tasks, args.batch))
            transport.purge(f"{base}_b")
            if (floor := floors[0]) is not None:
                figures["single"].floor.append(floor.submit(args.tasks))
                figures["batch"].floor.append(floor.submit_batch(args.tasks, args.batch))
            for backlog, count in drains.items():
                figures[f"drain{backlog}"].mine.append(drain(transport, f"{base}_d{backlog}", count))
                fill(transport, f"{base}_d{backlog}", count)
                if (floor := floors[backlog]) is not None:
                    figures[f"drain{backlog}"].floor.append(floor.drain(count))
                    floor.fill(count)
                settle()
            out(f"  run {run + 1}/{args.runs} done")
    finally:
        for queue in queues:
            with contextlib.suppress(Exception):
                transport.purge(queue)
        cleanup_queue_dirs(transport, queues)
        transport.close()
        for floor in floors.values():
            if floor is not None:
                floor.close()
    return figures


def cleanup_queue_dirs(transport: Transport, queues: list[str]) -> None:
    """The filesystem transport keeps a directory per queue: remove the bench's."""
    root = getattr(transport, "root", None)
    if isinstance(root, str):
        for queue in queues:
            shutil.rmtree(os.path.join(root, "queues", queue), ignore_errors=True)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()},"
        f" load average {load}"
    )


def main(argv: list[str], out: Callable[[str], Any] = print) -> int:
    args = parse_args(argv)
    with bench_url(args.url) as url:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        out(f"asynctask bench transport {mask_url(url)}")
        out(f"date: {now}; machine: {machine()}")
        out(f"command: python -m bench {' '.join(mask_url(word) for word in argv)}")
        figures = measure(url, args, out)
        out(f"{'figure (median of ' + str(args.runs) + ' runs)':<34}{'tasks/s':>12}{'floor/s':>12}{'ratio':>6}")
        for figure in figures.values():
            out(figure.row())
        backlogs = args.backlogs
        for low, high in itertools.pairwise(backlogs):
            a = Figure.rate(figures[f"drain{low}"].count, figures[f"drain{low}"].mine)
            b = Figure.rate(figures[f"drain{high}"].count, figures[f"drain{high}"].mine)
            if a and b:
                out(f"drain@{high} / drain@{low}: {b / a:.2f}")
    return 0
