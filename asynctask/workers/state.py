"""The supervisor's bookkeeping for one worker child, readable by metrics and health checks.

:class:`ChildState` is updated from the child's messages (:mod:`asynctask.workers.protocol`): what
it holds, what it runs since when, when it last fetched, how many tasks ended how, how often it was
restarted.  It outlives the processes of its slot: a restarted child reuses it.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.child import ChildSpec

__all__ = ["ChildState", "describe_exit", "hard_timeout_s"]

logger = logging.getLogger(__name__)


def hard_timeout_s(timeout_s: float) -> float:
    """When the supervisor kills a child running one task: ``timeout_s`` plus max(1 s, 10 %)."""
    return timeout_s + max(1.0, timeout_s * 0.1)


def describe_exit(exitcode: int | None) -> str:
    """``exited with code N`` or ``was killed by signal SIGNAME`` (for log lines and dead reasons)."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"was killed by signal {name}"
    return f"exited with code {exitcode}"


@dataclass
class ChildState:
    """One slot of the supervisor: a (queue, worker, slot) and the process currently filling it."""

    spec: ChildSpec
    slot: int
    max_attempts: int = 1
    timeout_s: float | None = None
    #: deaths of its child a task may cause before it is quarantined (:mod:`asynctask.workers.crashes`)
    max_crashes: int = 3
    process: BaseProcess | None = None
    conn: Connection | None = None
    pid: int | None = None
    restarts: int = 0
    backoff_s: float = 1.0
    started_at: float = 0.0
    next_start_at: float = 0.0
    ready: bool = False
    #: wall time of the last fetch (with or without tasks); None before the first
    last_fetch_at: float | None = None
    #: task id -> held entry (:func:`~asynctask.workers.protocol.held_entry`) of every task the child holds
    held: dict[str, P.HeldEntry] = field(default_factory=dict)
    started_ids: set[str] = field(default_factory=set)
    #: where the child writes the task in hand (shared memory); see :meth:`running_task`
    current: P.CurrentTask | None = None
    #: the task in hand from a ``Started`` message (children that send them)
    running: P.Started | None = None
    #: the ids of running tasks passed on to listeners as ``started``
    announced: set[str] = field(default_factory=set)
    kill_cause: str | None = None
    killing: bool = False
    halted: bool = False
    recycling: bool = False
    #: True once this slot must not be (re)started: halted, or shutting down
    done: bool = False
    #: outcome -> count over the slot's life (acked, retried, dead, released, lost)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: the child's resident memory (MiB) at the supervisor's last look, and when (monotonic)
    rss_mb: float | None = None
    rss_at: float = 0.0
    #: tasks the supervisor dead-lettered for this slot's dead children
    dead_lettered: int = 0
    #: its worker's ``process`` is ``async def`` (coroutine lanes: a timeout cancels the task)
    async_lanes: bool = False
    #: the tasks past their ``timeout_s`` when the supervisor killed the child for it
    timed_out_ids: set[str] = field(default_factory=set)

    @property
    def queue(self) -> str:
        return self.spec.queue

    @property
    def worker(self) -> str:
        return self.spec.worker

    @property
    def concurrency(self) -> int:
        return self.spec.concurrency

    def running_tasks(self) -> list[P.Started]:
        """The tasks in hand (id, wall time it started, timeout_s or None), in slot order."""
        if self.current is not None:
            found = self.current.read_all()
            if found:
                return found
        return [self.running] if self.running is not None else []

    def running_task(self) -> P.Started | None:
        """The first task in hand, or None."""
        found = self.running_tasks()
        return found[0] if found else None

    def kill_after_s(self, timeout_s: float) -> float:
        """How long after its start a task with ``timeout_s`` gets before the child is killed: the
        hard timeout, plus the shutdown grace for thread lanes (the child itself settles a thread
        that overran, lets the others finish within that grace, and leaves)."""
        threads = self.concurrency > 1 and not self.async_lanes
        return hard_timeout_s(timeout_s) + (self.spec.shutdown_timeout_s if threads else 0.0)

    def kill_deadline(self) -> float | None:
        """Wall time after which the child is killed for running past ``timeout_s``, or None."""
        deadlines = [r.at + self.kill_after_s(r.timeout_s) for r in self.running_tasks() if r.timeout_s]
        return min(deadlines, default=None)

    def attach(self, process: BaseProcess, conn: Connection) -> None:
        self.process, self.conn, self.pid = process, conn, process.pid
        self.started_at = time.monotonic()
        self.ready = self.halted = self.recycling = self.killing = False
        self.kill_cause = None
        self.timed_out_ids = set()

    def detach(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None
        self.rss_mb = None
        self.held.clear()
        self.started_ids.clear()
        self.running = None
        self.announced = set()
        if self.current is not None:
            self.current.clear_all()

    def handle(self, message: P.Message) -> None:
        """Update the bookkeeping from one child message."""
        match message:
            case P.Fetched():
                # a child fetches only after finishing its previous batch: these are all it holds now
                self.held = {entry.id: entry for entry in message.entries}
                self.started_ids.clear()
                self.last_fetch_at = message.at
            case P.Took():
                self.held.update((entry.id, entry) for entry in message.entries)
                self.last_fetch_at = message.at
            case P.Polled(at):
                self.held.clear()
                self.started_ids.clear()
                self.last_fetch_at = at
            case P.Started():
                self.started_ids.add(message.task_id)
                self.running = message
            case P.Finished(rows):
                self._finished(rows)
            case P.Halted():
                self.halted = True
            case P.Recycle():
                self.recycling = True
            case P.Ready():
                self.ready = True

    def _finished(self, rows: list[P.OutcomeRow]) -> None:
        for task_id, outcome, _ in rows:
            self.held.pop(task_id, None)
            self.started_ids.discard(task_id)
            self.counts[outcome] += 1
            if self.running is not None and self.running.task_id == task_id:
                self.running = None
