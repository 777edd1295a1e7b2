"""``python -m bench.workers [URL]``: tasks through ``asynctask-workers`` beside the bare consumer loop.

Figures, for any transport URL (default: the filesystem transport in a temporary directory):

* ``consumer loop``: :func:`bench.transport.drain` (``get_tasks(queue, 100)`` + ``ack_tasks``) taking
  ``--tasks`` tasks: the floor for a worker on this transport;
* ``supervisor, 1 child``: the same number of tasks through ``asynctask-workers --halt-when-empty``
  with one child running a no-op worker, timed inside the child from the end of ``setup()`` (just
  before the first fetch) to the end of the last task (process start-up and the halt are left
  out), and its ratio to the loop (issue 3 asks >= 0.70 on the filesystem transport);
* ``submit-to-start latency``: with the worker idle (blocked on an empty queue), ``--samples``
  single tasks submitted ``--gap-ms`` apart; p50 / p99 / max of the time from ``submit_task`` to the
  start of ``process``.

``--concurrency N`` puts ``concurrency: N`` in the no-op worker's config entry (threads above 1).
With ``--sleep-ms MS`` the tasks sleep instead (``--async``: ``async def process``): see
:mod:`bench.io_bound`, which measures the drain rate against the ideal ``N / sleep`` and the
resident memory of the worker tree.  ``--results`` and ``--tasks-fn`` drain no-op workers keeping results
and no-op ``@task`` functions beside the plain no-op worker and the floor of keeping results: see
:mod:`bench.results`.

The worker below (``bench_noop``) is imported by the child with ``--require bench.workers``; it
writes what it measured to ``$ASYNCTASK_BENCH_OUT.<pid>`` in ``teardown``, with the path of the
``asynctask`` it imported (the bench prints it: a check of ``PYTHONPATH`` when comparing commits).
With ``$ASYNCTASK_BENCH_PROFILE`` set it runs under cProfile from ``setup`` to ``teardown`` and dumps
the profile to ``$ASYNCTASK_BENCH_PROFILE.<pid>``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asynctask
from asynctask.transports import get_transport
from asynctask.transports.base import Transport, mask_url
from asynctask.workers import AsyncTaskWorker
from asynctask.workers.base import MAX_CONCURRENCY
from bench.transport import bench_url, cleanup_queue_dirs, drain, fill, machine

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "asynctask-workers")
#: where the last worker child imported ``asynctask`` from (its teardown says), to check PYTHONPATH
child_import: dict[str, str] = {}


class BenchNoop(AsyncTaskWorker):
    """No work; records when it became ready, when the last task ran, and submit-to-start latencies."""

    name = "bench_noop"

    def setup(self) -> None:
        self.count = 0
        self.first = self.last = time.time()  # the clock starts before the first fetch, as the loop's does
        self.latencies: list[float] = []
        self.profile = None
        if os.environ.get("ASYNCTASK_BENCH_PROFILE"):  # cProfile of the child's tasks, dumped in teardown
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()
        ready = os.environ.get("ASYNCTASK_BENCH_READY")
        if ready:
            Path(ready).write_text(str(os.getpid()))

    def process(self, payload: dict[str, Any]) -> None:
        now = time.time()
        if "t" in payload:
            self.latencies.append(now - payload["t"])
        self.last = now
        self.count += 1

    def teardown(self) -> None:
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(f"{os.environ['ASYNCTASK_BENCH_PROFILE']}.{os.getpid()}")
        out = os.environ.get("ASYNCTASK_BENCH_OUT")
        if out:
            data = {"count": self.count, "first": self.first, "last": self.last, "latencies": self.latencies}
            data["asynctask"] = asynctask.__file__
            Path(f"{out}.{os.getpid()}").write_text(json.dumps(data))


def _results(out: str) -> dict[str, Any]:
    merged: dict[str, Any] = {"count": 0, "first": None, "last": None, "latencies": []}
    directory, prefix = os.path.split(out)
    for name in os.listdir(directory):
        if name.startswith(prefix + "."):
            data = json.loads(Path(directory, name).read_text())
            merged["count"] += data["count"]
            merged["latencies"] += data["latencies"]
            if "asynctask" in data:
                child_import["asynctask"] = data["asynctask"]
            if data["count"]:
                merged["first"] = min(filter(None, [merged["first"], data["first"]]))
                merged["last"] = max(filter(None, [merged["last"], data["last"]]))
            os.unlink(os.path.join(directory, name))
    return merged


def _command(url: str, queue: str, *extra: str, entry: str | None = None, require: str = "bench.workers") -> list[str]:
    """The ``asynctask-workers`` command line; ``entry``: the ``asynctask_workers`` value (YAML)."""
    workers = entry if entry is not None else f"{{{queue}: bench_noop}}"
    return [CLI, "--transport", url, "--require", require, "--set", f"asynctask_workers={workers}", "-q", *extra]


def _noop_entry(queue: str, concurrency: int | None, worker: str = "bench_noop") -> str | None:
    """``worker``'s entry with ``concurrency`` (None: the plain ``{queue: worker}``)."""
    if concurrency is None:
        return None if worker == "bench_noop" else f"{{{queue}: {worker}}}"
    return json.dumps({queue: {"worker": worker, "concurrency": concurrency}})


def _env(work: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}
    env["ASYNCTASK_BENCH_OUT"] = os.path.join(work, "out")
    return env


def through_supervisor(  # noqa: PLR0913 - the figures of bench.results pick the worker and the tasks' meta
    url: str,
    queue: str,
    tasks: int,
    work: str,
    concurrency: int | None = None,
    *,
    worker: str = "bench_noop",
    require: str = "bench.workers",
    meta: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """(tasks/s inside the child, wall seconds of the whole run): ``tasks`` tasks (with ``meta``)
    drained by ``worker`` (imported by ``--require require``) in one child."""
    transport = get_transport(url)
    try:
        fill(transport, queue, tasks, meta=meta)
    finally:
        transport.close()
    started = time.perf_counter()
    command = _command(url, queue, "--halt-when-empty", entry=_noop_entry(queue, concurrency, worker), require=require)
    subprocess.run(command, env=_env(work), check=True, timeout=600)
    wall = time.perf_counter() - started
    result = _results(os.path.join(work, "out"))
    if result["count"] != tasks:
        raise RuntimeError(f"the worker processed {result['count']} of {tasks} tasks")
    return result["count"] / max(result["last"] - result["first"], 1e-9), wall


def latency(url: str, queue: str, args: argparse.Namespace, work: str) -> list[float]:
    """Submit-to-start latencies (seconds) with an idle worker: ``args.samples``, ``args.gap_ms`` apart."""
    ready = os.path.join(work, "ready")
    command = _command(url, queue, entry=_noop_entry(queue, args.concurrency))
    process = subprocess.Popen(command, env=_env(work, ASYNCTASK_BENCH_READY=ready))
    transport = get_transport(url)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(args.samples):
            transport.submit_task(queue, {"t": time.time()})
            time.sleep(args.gap_ms / 1000)
        deadline = time.monotonic() + 30
        while transport.stats(queue).ready or transport.stats(queue).in_flight:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not take every sample")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        transport.close()
    return sorted(_results(os.path.join(work, "out"))["latencies"])


def purge(transport: Transport, queues: list[str]) -> None:
    """Empty and remove the bench's queues, saying so when one cannot be."""
    for queue in queues:
        try:
            transport.purge(queue)
        except Exception as exc:  # the figures matter more than the cleanup
            print(f"(could not purge {queue}: {exc})")
    cleanup_queue_dirs(transport, queues)


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(round(fraction * (len(sorted_values) - 1)), len(sorted_values) - 1)
    return sorted_values[index]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="transport URL (default: filesys: in a temporary directory)")
    parser.add_argument(
        "--tasks", type=int, help="tasks per throughput run (default 20000; with --sleep-ms: 5 s of ideal work)"
    )
    parser.add_argument("--runs", type=int, default=3, help="throughput repetitions, median shown (default 3)")
    parser.add_argument("--samples", type=int, default=200, help="latency samples (default 200)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="ms between latency samples (default 20)")
    parser.add_argument("--sleep-ms", type=float, help="I/O-bound tasks sleeping this long (see bench.io_bound)")
    parser.add_argument("--concurrency", type=int, help="concurrency of the worker's config entry (default: none)")
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="with --sleep-ms: async def process, asyncio.sleep"
    )
    parser.add_argument(
        "--results",
        action="store_true",
        help="no-op workers keeping results (result_ttl_s=3600) beside the results floor (see bench.results)",
    )
    parser.add_argument(
        "--tasks-fn", action="store_true", help="no-op @task functions through the tasks worker (see bench.results)"
    )
    args = parser.parse_args(argv)
    if args.sleep_ms is not None and (args.results or args.tasks_fn):
        parser.error("--sleep-ms goes with neither --results nor --tasks-fn")
    if args.sleep_ms is not None and args.sleep_ms <= 0:
        parser.error("--sleep-ms must be > 0")
    if args.use_async and args.sleep_ms is None:
        parser.error("--async needs --sleep-ms")
    if args.concurrency is not None and not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be from 1 to {MAX_CONCURRENCY}")
    if args.sleep_ms is not None and args.concurrency is None:
        args.concurrency = 1
    if args.tasks is None:  # with --sleep-ms: about 5 s of ideal work (N lanes, one task per sleep each)
        args.tasks = 20000 if args.sleep_ms is None else max(1, round(5 * args.concurrency * 1000 / args.sleep_ms))
    if args.tasks < 1 or args.runs < 1:
        parser.error("--tasks and --runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_url(args.url) as url, tempfile.TemporaryDirectory(prefix="asynctask-bench-w-") as work:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"asynctask bench workers {mask_url(url)}")
        print(f"date: {now}; machine: {machine()}")
        words = argv if argv is not None else sys.argv[1:]
        print(f"command: python -m bench workers {' '.join(mask_url(word) for word in words)}")
        if args.sleep_ms is not None:
            from bench import io_bound

            io_bound.main(url, args, [f"bench_{uuid.uuid4().hex[:12]}"], work)
            return 0
        if args.results or args.tasks_fn:
            from bench import results

            results.main(url, args, work)
            return 0
        queues = [f"bench_{uuid.uuid4().hex[:12]}" for _ in range(3)]
        loop_rates, sup_rates, walls = [], [], []
        transport = get_transport(url)
        try:
            for _ in range(args.runs):
                fill(transport, queues[0], args.tasks)
                loop_rates.append(args.tasks / drain(transport, queues[0], args.tasks))
                rate, wall = through_supervisor(url, queues[1], args.tasks, work, args.concurrency)
                sup_rates.append(rate)
                walls.append(wall)
                print(
                    f"  run {len(sup_rates)}: loop {loop_rates[-1]:,.0f}/s, supervisor {rate:,.0f}/s,"
                    f" ratio {rate / loop_rates[-1]:.2f}",
                    flush=True,
                )
            lat = latency(url, queues[2], args, work) if args.samples else []
            print(f"  (the worker child imported {child_import.get('asynctask')})")
        finally:
            purge(transport, queues)
            transport.close()
        loop, sup = statistics.median(loop_rates), statistics.median(sup_rates)
        lanes = f", concurrency {args.concurrency}" if args.concurrency is not None else ""
        label = f"supervisor, 1 child{lanes}, no-op worker"
        width = max(40, len(label) + 2)
        print(f"{'figure (median of ' + str(args.runs) + ' runs)':<{width}}{'tasks/s':>12}")
        print(f"{'consumer loop (get_tasks 100 + ack_tasks)':<{width}}{loop:>12,.0f}")
        whole = args.tasks / statistics.median(walls)
        print(f"{label:<{width}}{sup:>12,.0f}   ratio {sup / loop:.2f}   (whole run incl. start/halt: {whole:,.0f}/s)")
        if lat:
            print(
                f"submit-to-start latency, idle worker, {len(lat)} samples: p50 {percentile(lat, 0.5) * 1000:.1f} ms"
                f"  p99 {percentile(lat, 0.99) * 1000:.1f} ms  max {lat[-1] * 1000:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
