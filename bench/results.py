"""``python -m bench workers URL --results`` / ``--tasks-fn``: what keeping results and ``@task`` cost.

Issue 14 asks for the drain rate of workers keeping results beside the bare floor of the same run.
Every run drains ``--tasks`` tasks for each figure in turn (median of ``--runs`` shown):

* ``consumer loop``: :func:`bench.transport.drain` (``get_tasks(queue, 100)`` + ``ack_tasks``), the
  floor of the no-op figures (as in :mod:`bench.workers`);
* ``results floor`` (``--results``): the same loop plus, for each task, the storage work of a runner
  keeping results: two ``state_put`` of a small JSON record under ``r.<task id>`` (``running`` for
  7 days, then ``done`` with ``"result":null`` for ``result_ttl_s``), as
  :mod:`asynctask.workers.recording` writes them;
* ``no-op worker``: ``bench_noop`` through ``asynctask-workers --halt-when-empty`` (one child), timed
  inside the child as in :mod:`bench.workers`;
* ``result_ttl_s=3600`` (``--results``): ``bench_noop_results``, the same worker keeping results;
  and a no-op ``@task(result_ttl_s=3600)`` function run by the built-in ``tasks`` worker;
* ``@task`` (``--tasks-fn``): a no-op ``@task`` function without results, through the ``tasks``
  worker, against the plain worker class.

The ``@task`` tasks are stored as ``.submit`` stores them (payload ``{"args": [], "kwargs": {...}}``,
meta ``{"fn": name}``), in batches, without the ``queued`` record ``.submit`` adds for a function
keeping results (the producer's work, not the drain's).  They run on a subclass of the ``tasks``
worker (``bench_tasks``) that only adds ``bench_noop``'s clock.  After each figure keeping results
the bench counts the records left (one per task, the last one ``done``) and deletes them, untimed.
Every other run takes the figures in reverse order: on the filesystem transport, of two figures
keeping results run one after the other, the second mostly drained slower (by up to 37 %), whichever
it was (see docs/benchmarks.rst, issue 14).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from asynctask.tasks import TasksWorker, task
from asynctask.transports import get_transport
from asynctask.transports.base import Transport
from bench.floors import PAYLOAD
from bench.transport import DRAIN_BATCH, drain, fill
from bench.workers import BenchNoop, child_import, purge, through_supervisor

#: the results kept by the figures with results on (seconds)
RESULT_TTL_S = 3600.0
#: how long a ``running`` record is kept (the runner's ``max(result_ttl_s, 7 days)``)
RUNNING_TTL_S = max(RESULT_TTL_S, 7 * 24 * 3600.0)
#: the queue the ``@task`` functions name; the bench submits them to its own queues, which the
#: ``tasks`` worker drains all the same (it runs the function a task's meta names)
FN_QUEUE = "bench_fn"
FN_NOOP = "bench.noop"
FN_NOOP_RESULTS = "bench.noop_results"
#: the ``@task`` payload: the bench's usual payload as keyword arguments, about as many bytes
FN_PAYLOAD: dict[str, Any] = {"args": [], "kwargs": PAYLOAD}


class BenchNoopResults(BenchNoop):
    """``bench_noop`` keeping each task's status and result (``None``) for an hour."""

    name = "bench_noop_results"
    result_ttl_s = RESULT_TTL_S


class BenchTasks(TasksWorker):
    """The built-in ``tasks`` worker with ``bench_noop``'s clock around it."""

    name = "bench_tasks"
    setup = BenchNoop.setup
    teardown = BenchNoop.teardown

    def process(self, payload: dict[str, Any]) -> Any:
        value = super().process(payload)
        BenchNoop.process(self, payload)  # type: ignore[arg-type] - the clock only
        return value


@task(queue=FN_QUEUE, name=FN_NOOP)
def noop(**payload: Any) -> None:
    """No work."""


@task(queue=FN_QUEUE, name=FN_NOOP_RESULTS, result_ttl_s=RESULT_TTL_S)
def noop_results(**payload: Any) -> None:
    """No work; its status and result are kept."""


def _record(task_id: str, attempts: int, fields: str) -> str:
    return f'{{"id":"{task_id}","attempts":{attempts},{fields}}}'


def results_floor(transport: Transport, queue: str, n: int) -> float:
    """Seconds of the consumer loop doing a results runner's storage work for ``n`` tasks."""
    started = time.perf_counter()
    taken = 0
    while taken < n:
        tasks = transport.get_tasks(queue, min(DRAIN_BATCH, n - taken))
        if not tasks:
            raise RuntimeError(f"queue {queue} ran dry after {taken} of {n} tasks")
        for got in tasks:
            key = "r." + got.id
            running = _record(got.id, got.attempts, f'"status":"running","started_at":{time.time()}')
            transport.state_put(queue, key, running, RUNNING_TTL_S)
            done = _record(got.id, got.attempts, f'"status":"done","finished_at":{time.time()},"result":null')
            transport.state_put(queue, key, done, RESULT_TTL_S)
        transport.ack_tasks(tasks)
        taken += len(tasks)
    return time.perf_counter() - started


def clear_records(transport: Transport, queue: str, expected: int) -> None:
    """Check that ``queue`` holds ``expected`` records (the last one ``done``) and delete them."""
    keys = transport.state_keys(queue, "r.")
    if len(keys) != expected:
        raise RuntimeError(f"{len(keys)} result records on {queue}, {expected} expected")
    if keys:
        last = transport.state_get(queue, keys[-1]) or ""
        if json.loads(last).get("status") != "done":
            raise RuntimeError(f"record {keys[-1]} of {queue} is not done: {last:.200}")
    for start in range(0, len(keys), 1000):
        transport.state_delete_many(queue, keys[start : start + 1000])


@dataclass
class Figure:
    """One line of the table: a loop in this process (``worker`` None) or a worker child."""

    label: str
    worker: str | None = None
    fn: str | None = None
    records: bool = False
    rates: list[float] = field(default_factory=list)
    queue: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:12]}")

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def figures(args: argparse.Namespace) -> dict[str, Figure]:
    lanes = f", concurrency {args.concurrency}" if args.concurrency is not None else ""
    child = f"supervisor, 1 child{lanes}"
    found = {"loop": Figure("consumer loop (get_tasks 100 + ack_tasks)")}
    if args.results:
        found["floor"] = Figure("results floor (loop + 2 state_put a task)", records=True)
    found["plain"] = Figure(f"{child}, no-op worker", "bench_noop")
    if args.results:
        found["class"] = Figure(f"{child}, no-op worker, result_ttl_s=3600", "bench_noop_results", records=True)
        found["fn_results"] = Figure(
            f"{child}, no-op @task, result_ttl_s=3600", "bench_tasks", FN_NOOP_RESULTS, records=True
        )
    if args.tasks_fn:
        found["fn"] = Figure(f"{child}, no-op @task (tasks worker)", "bench_tasks", FN_NOOP)
    return found


def run_figure(figure: Figure, transport: Transport, url: str, args: argparse.Namespace, work: str) -> float:
    """One drain of ``args.tasks`` tasks for ``figure``: tasks/s."""
    n, queue = args.tasks, figure.queue
    if figure.worker is not None:
        meta = {"fn": figure.fn} if figure.fn else None
        rate, _ = through_supervisor(
            url, queue, n, work, args.concurrency, worker=figure.worker, require="bench.results", meta=meta
        )
    else:
        fill(transport, queue, n)
        rate = n / (results_floor(transport, queue, n) if figure.records else drain(transport, queue, n))
    if figure.records:
        clear_records(transport, queue, n)
    return rate


def main(url: str, args: argparse.Namespace, work: str) -> None:
    """Run every figure ``args.runs`` times, in turn within each run (every other run in reverse
    order), and print the table."""
    found = figures(args)
    transport = get_transport(url)
    try:
        for run in range(args.runs):
            for figure in list(found.values())[:: -1 if run % 2 else 1]:
                figure.rates.append(run_figure(figure, transport, url, args, work))
            print(f"  run {run + 1}: " + ", ".join(f"{k} {f.rates[-1]:,.0f}/s" for k, f in found.items()), flush=True)
    finally:
        for figure in found.values():
            try:
                keys = transport.state_keys(figure.queue, "r.")
                for start in range(0, len(keys), 1000):
                    transport.state_delete_many(figure.queue, keys[start : start + 1000])
            except Exception as exc:  # the figures matter more than the cleanup
                print(f"(could not delete the records of {figure.queue}: {exc})")
        purge(transport, [figure.queue for figure in found.values()])
        transport.close()
    loop, floor = found["loop"].rate, found["floor"].rate if "floor" in found else None
    width = max(len(figure.label) for figure in found.values()) + 2
    print(f"{'figure (median of ' + str(args.runs) + ' runs)':<{width}}{'tasks/s':>10}{'/ loop':>8}{'/ floor':>9}")
    for figure in found.values():
        to_floor = f"{figure.rate / floor:>9.2f}" if floor and figure.records else ""
        print(f"{figure.label:<{width}}{figure.rate:>10,.0f}{figure.rate / loop:>8.2f}{to_floor}")
    plain = found["plain"].rate
    for key, what in (("class", "result_ttl_s worker"), ("fn_results", "@task with results"), ("fn", "@task")):
        if key in found:
            print(f"{what} / no-op worker: {found[key].rate / plain:.2f}")
    print(f"(the worker children imported {child_import.get('asynctask')})")
