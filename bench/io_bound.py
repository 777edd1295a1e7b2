"""``python -m bench workers URL --sleep-ms MS --concurrency N [--async]``: I/O-bound tasks (issue 13).

Each task sleeps ``--sleep-ms``: ``time.sleep`` in ``bench_sleep`` (``def process``, N threads) or
``await asyncio.sleep`` in ``bench_sleep_async`` (``async def process``, N coroutines on one event
loop).  ``asynctask-workers --halt-when-empty`` runs one child (``processes: 1``, ``concurrency: N``
in the config entry), timed inside the child from the end of ``setup()`` to the end of the last task,
as the no-op figure is.  Figures of the same run:

* the drain rate beside the ideal ``N / sleep`` (8 lanes of 20 ms: 400/s) and their ratio;
* the resident memory (``/proc/<pid>/statm``) of the worker child and the sum over the whole worker
  tree (supervisor, multiprocessing's resource tracker, fork server, child), sampled every
  :data:`SAMPLE_S` while the child drains, the maximum kept; the tree's PSS beside it (the child
  shares the fork server's pages, which the RSS sum counts twice).  Issue 13 asks the child to stay
  under 60 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynctask.transports import get_transport
from asynctask.workers import AsyncTaskWorker
from bench.transport import fill
from bench.workers import _command, _env, _results, purge

#: seconds between two memory samples of the worker tree
SAMPLE_S = 0.25
#: the issue's ceiling for the resident memory of a worker child (MiB)
CHILD_LIMIT_MB = 60
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


class _Recorder:
    """What both sleeping workers record: the ``BenchNoop`` figures (count, first, last)."""

    def setup(self) -> None:
        self.sleep_s = float(os.environ.get("ASYNCTASK_BENCH_SLEEP_MS", "0")) / 1000
        self.count = 0
        self.lock = threading.Lock()
        self.first = self.last = time.time()  # the clock starts before the first fetch
        ready = os.environ.get("ASYNCTASK_BENCH_READY")
        if ready:
            Path(ready).write_text(str(os.getpid()))

    def done(self) -> None:
        with self.lock:  # the lanes of a thread child finish concurrently
            self.last = max(self.last, time.time())
            self.count += 1

    def teardown(self) -> None:
        out = os.environ.get("ASYNCTASK_BENCH_OUT")
        if out:
            data = {"count": self.count, "first": self.first, "last": self.last, "latencies": []}
            Path(f"{out}.{os.getpid()}").write_text(json.dumps(data))


class BenchSleep(_Recorder, AsyncTaskWorker):
    """``time.sleep(sleep_s)`` per task, on the child's lane threads."""

    name = "bench_sleep"

    def process(self, payload: dict[str, Any]) -> None:
        time.sleep(self.sleep_s)
        self.done()


class BenchSleepAsync(_Recorder, AsyncTaskWorker):
    """``await asyncio.sleep(sleep_s)`` per task, the lanes coroutines on one event loop."""

    name = "bench_sleep_async"

    async def process(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(self.sleep_s)
        self.done()


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent pid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_bytes().split()[1]) * PAGE_MB
    except (OSError, ValueError, IndexError):
        return 0.0  # gone


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _role(pid: int, root: int, child: int) -> str:
    if pid in (root, child):
        return "supervisor" if pid == root else "child"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        command = b""
    for marker, role in ((b"forkserver", "fork server"), (b"resource_tracker", "resource tracker")):
        if marker in command:
            return role
    return str(pid)


@dataclass
class Memory:
    """The largest figures over the samples (MiB); ``tree_parts``: RSS by process at the largest sum."""

    child: float = 0.0
    tree: float = 0.0
    tree_pss: float = 0.0
    tree_parts: dict[str, float] = field(default_factory=dict)
    samples: int = 0

    def parts(self) -> str:
        return ", ".join(f"{role} {mb:.1f}" for role, mb in self.tree_parts.items())


def sample_memory(root: int, ready: str, memory: Memory, stop: threading.Event) -> None:
    """Sample until ``stop`` is set, once the child wrote its pid to ``ready`` (its setup ended)."""
    child = None
    while not stop.is_set():
        if child is None and os.path.exists(ready):
            child = int(Path(ready).read_text() or 0) or None
        if child is not None:
            rss = {pid: _rss_mb(pid) for pid in _tree(root)}
            memory.child = max(memory.child, rss.get(child, 0.0))
            if sum(rss.values()) > memory.tree:
                memory.tree = sum(rss.values())
                memory.tree_parts = {_role(pid, root, child): mb for pid, mb in rss.items()}
            memory.tree_pss = max(memory.tree_pss, sum(_pss_mb(pid) for pid in rss))
            memory.samples += 1
        stop.wait(SAMPLE_S if child is not None else 0.02)


def run_once(url: str, queue: str, args: argparse.Namespace, work: str) -> tuple[float, float, Memory]:
    """(tasks/s inside the child, wall seconds of the whole run, memory while draining)."""
    transport = get_transport(url)
    try:
        fill(transport, queue, args.tasks)
    finally:
        transport.close()
    ready = os.path.join(work, "ready")
    if os.path.exists(ready):
        os.unlink(ready)
    worker = "bench_sleep_async" if args.use_async else "bench_sleep"
    entry = {queue: {"worker": worker, "processes": 1, "concurrency": args.concurrency}}
    command = _command(url, queue, "--halt-when-empty", entry=json.dumps(entry), require="bench.io_bound")
    env = _env(work, ASYNCTASK_BENCH_READY=ready, ASYNCTASK_BENCH_SLEEP_MS=str(args.sleep_ms))
    ideal_s = args.tasks * args.sleep_ms / 1000 / args.concurrency
    memory, stop = Memory(), threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    sampler = threading.Thread(target=sample_memory, args=(process.pid, ready, memory, stop), daemon=True)
    sampler.start()
    try:
        code = process.wait(timeout=60 + 10 * ideal_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"asynctask-workers did not halt within {60 + 10 * ideal_s:.0f} s") from None
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"asynctask-workers exited with {code}")
    result = _results(os.path.join(work, "out"))
    if result["count"] != args.tasks:
        raise RuntimeError(f"the worker processed {result['count']} of {args.tasks} tasks")
    return result["count"] / max(result["last"] - result["first"], 1e-9), wall, memory


def main(url: str, args: argparse.Namespace, queues: list[str], work: str) -> None:
    """Run ``args.runs`` drains of ``args.tasks`` sleeping tasks and print the figures."""
    ideal = args.concurrency / (args.sleep_ms / 1000)
    rates: list[float] = []
    walls: list[float] = []
    memories: list[Memory] = []
    try:
        for _ in range(args.runs):
            rate, wall, memory = run_once(url, queues[0], args, work)
            rates.append(rate)
            walls.append(wall)
            memories.append(memory)
            print(
                f"  run {len(rates)}: {rate:,.0f}/s of ideal {ideal:,.0f}/s, ratio {rate / ideal:.2f};"
                f" child RSS {memory.child:.1f} MiB, tree RSS {memory.tree:.1f} MiB"
                f" ({memory.parts()}; PSS {memory.tree_pss:.1f}; {memory.samples} samples)",
                flush=True,
            )
    finally:
        transport = get_transport(url)
        try:
            purge(transport, queues)
        finally:
            transport.close()
    rate = statistics.median(rates)
    lanes = f"{args.concurrency} {'coroutine' if args.use_async else 'thread'}{'s' if args.concurrency > 1 else ''}"
    sleep = "await asyncio.sleep" if args.use_async else "time.sleep"
    label = f"1 child, {lanes}, {args.sleep_ms:g} ms {sleep}"
    print(f"{'figure (median of ' + str(args.runs) + ' runs)':<56}{'tasks/s':>10}{'ideal/s':>10}{'ratio':>7}")
    whole = args.tasks / statistics.median(walls)
    print(
        f"{label:<56}{rate:>10,.0f}{ideal:>10,.0f}{rate / ideal:>7.2f}   (whole run incl. start/halt: {whole:,.0f}/s)"
    )
    child = max(m.child for m in memories)
    top = max(memories, key=lambda m: m.tree)
    verdict = "under" if child < CHILD_LIMIT_MB else "OVER"
    print(
        f"resident memory while draining (max over {sum(m.samples for m in memories)} samples):"
        f" worker child {child:.1f} MiB ({verdict} the issue's {CHILD_LIMIT_MB} MiB),"
        f" whole tree {top.tree:.1f} MiB RSS ({top.parts()}), PSS {max(m.tree_pss for m in memories):.1f} MiB"
    )
