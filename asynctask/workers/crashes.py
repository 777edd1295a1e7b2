"""Crashes are not failures: the supervisor's crash ledger, and giving back a dead child's tasks.

A *crash* is a child that dies while running a task: any signal (``kill -9``, the OOM killer), any
exit (``os._exit``, a segfault in C code), except the supervisor's own kill of a task that ran past
``timeout_s``, which stays a failed attempt (``max_attempts``).  What happens to the task it ran:

* below ``max_crashes`` deaths it goes back to the queue at once, uncounted against
  ``max_attempts`` (its next delivery has the same ``attempts``), ready again after a short delay
  (:func:`crash_delay_s`: 1 s, doubling per crash) so that a restarted child takes the tasks behind
  it first: a poison task never blocks its queue;
* at ``max_crashes`` deaths (worker class option, default 3, or ``max_crashes`` in the queue's
  ``asynctask_workers`` entry) it is quarantined: dead-lettered with the cause of every death (exit
  code or signal, the child's pid and resident memory at the supervisor's last look, the host).

A child runs its batch in order, so the tasks before the one it was running are done: the supervisor
acks them (a no-op for those acked or given back already), so that a crash does not run again what
finished within the ack window.  Tasks the child had fetched but not started go back at once,
uncounted; so does the task of a child
the supervisor killed to end a shutdown (a second signal, the end of the grace period): stopping is
the operator's doing, not the task's.

Where receipts are portable (filesystem, Redis, PostgreSQL, memory) the supervisor does this itself
through its own transport.  On AMQP a delivery belongs to the dead child's connection and the broker
gives it back when that closes; the supervisor sends the children of the queue a crash notice
(:class:`~asynctask.workers.protocol.CrashNotice`, and to each new child of the queue the notices
still open), and the child that next fetches the task acts on it
(:mod:`asynctask.workers.crash_notices`): gives it back with the delay
(and the ``attempts`` it had, undoing the broker's redelivery count), or dead-letters it.

Bound: the ledger is the memory of one supervisor, kept for an hour after a task's last crash
(at most 10,000 tasks).  So on one host a task causes at most ``max_crashes`` deaths, with one
exception on AMQP: a queue with ``processes: N`` may hand the redelivered task to a sibling child
before the notice reaches it (at most N - 1 more deaths).  Across H hosts each supervisor counts
its own children's deaths: at most H x ``max_crashes``.  A supervisor restart forgets its ledger.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from asynctask.errors import TransportError
from asynctask.message import Task
from asynctask.transports.base import Transport
from asynctask.workers import protocol as P  # noqa: N812

if TYPE_CHECKING:  # state imports the child, which imports the runner
    from asynctask.workers.state import ChildState

__all__ = [
    "CRASH_DELAY_S",
    "CrashKeeper",
    "CrashLedger",
    "CrashRecord",
    "GivenBack",
    "crash_delay_s",
    "give_back",
]

logger = logging.getLogger(__name__)

#: How many tasks a ledger, and a child's notices, remember at most
MAX_RECORDS = 10_000

#: The delay before a crashed task is ready again after its first crash; doubles per crash.
CRASH_DELAY_S = 1.0
CRASH_DELAY_MAX_S = 30.0
HOST = socket.gethostname()


def crash_delay_s(crashes: int) -> float:
    """How long a task waits after its ``crashes``-th crash: 1 s, 2 s, 4 s... at most 30 s."""
    return float(min(CRASH_DELAY_S * 2.0 ** max(crashes - 1, 0), CRASH_DELAY_MAX_S))


@dataclass
class CrashRecord:
    """What one supervisor knows of one task's crashes."""

    queue: str
    task_id: str
    #: the ``attempts`` of the delivery that crashed (AMQP gives the task back with these)
    attempts: int
    causes: list[str] = field(default_factory=list)
    #: crashes whose give-back with the crash delay is done
    deferred: int = 0
    #: set when the task is to be dead-lettered at its next fetch (AMQP)
    dead_reason: str | None = None
    last_at: float = 0.0

    @property
    def crashes(self) -> int:
        return len(self.causes)

    def notice(self) -> P.CrashNotice:
        return P.CrashNotice(self.task_id, self.crashes, self.attempts, self.deferred, self.dead_reason)

    def open(self) -> bool:
        """True while a child that fetches the task has something to do about it."""
        return self.dead_reason is not None or self.deferred < self.crashes


class CrashLedger:
    """Task id -> :class:`CrashRecord`, forgotten ``forget_after_s`` after the last crash and
    bounded to ``max_records`` (the oldest go first)."""

    def __init__(
        self,
        *,
        forget_after_s: float = 3600.0,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.forget_after_s, self.max_records, self.clock = forget_after_s, max_records, clock
        self._records: collections.OrderedDict[str, CrashRecord] = collections.OrderedDict()

    def _expire(self) -> None:
        limit = self.clock() - self.forget_after_s
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.last_at > limit and len(self._records) <= self.max_records:
                break
            self._records.popitem(last=False)

    def get(self, task_id: str) -> CrashRecord | None:
        self._expire()
        return self._records.get(task_id)

    def record(self, queue: str, task_id: str, attempts: int, cause: str) -> CrashRecord:
        """Count one more crash of ``task_id`` with its ``cause``; returns its record."""
        found = self._touch(queue, task_id, attempts)
        found.causes.append(cause)
        return found

    def condemn(self, queue: str, task_id: str, attempts: int, reason: str) -> CrashRecord:
        """Mark ``task_id`` to be dead-lettered at its next fetch with ``reason`` (no crash counted)."""
        found = self._touch(queue, task_id, attempts)
        found.dead_reason = reason
        return found

    def _touch(self, queue: str, task_id: str, attempts: int) -> CrashRecord:
        """The record of ``task_id`` (made when missing), updated now and moved to the newest end."""
        self._expire()
        found = self._records.pop(task_id, None) or CrashRecord(queue, task_id, attempts)
        found.attempts, found.last_at = attempts, self.clock()
        self._records[task_id] = found
        return found

    def forget(self, task_id: str) -> None:
        self._records.pop(task_id, None)

    def open_records(self, queue: str) -> list[CrashRecord]:
        """The records of ``queue`` a newly started child must hear about."""
        self._expire()
        return [r for r in self._records.values() if r.queue == queue and r.open()]

    def settled(self, task_id: str, crashes: int, outcome: str) -> CrashRecord | None:
        """A child acted on a notice (``deferred`` or ``dead``); returns the record still kept."""
        found = self._records.get(task_id)
        if found is None:
            return None
        if outcome == P.DEAD:
            self.forget(task_id)
            return None
        found.deferred = max(found.deferred, crashes)
        return found


def quarantine_reason(record: CrashRecord, max_crashes: int) -> str:
    """The dead-letter reason of a task quarantined after ``record.crashes`` deaths: a summary line,
    then one line per death (``asynctask dead show`` prints them all, ``dead list`` the first)."""
    deaths = "".join(f"\n#{number} {cause}" for number, cause in enumerate(record.causes, start=1))
    return (
        f"quarantined: {record.crashes} worker children died while running the task (max_crashes={max_crashes}){deaths}"
    )


def crash_cause(child: ChildState, how: str) -> str:
    """One death, for the dead-letter reason: ``worker child (pid N) <how>, rss M MiB, host H``."""
    rss = f", rss {child.rss_mb:.0f} MiB" if child.rss_mb is not None else ""
    return f"worker child (pid {child.pid}) {how}{rss}, host {HOST}"


class GivenBack(NamedTuple):
    """What :func:`give_back` did that the supervisor passes on."""

    #: crash records that changed: notices for the queue's children (AMQP)
    notices: list[CrashRecord]
    #: ids of the tasks the child had finished and the supervisor acked
    acked: list[str]


def give_back(transport: Transport, child: ChildState, ledger: CrashLedger, how: str) -> GivenBack:
    """Give back at once the tasks a dead child held (see :class:`GivenBack` for what it returns).

    ``how`` is :func:`~asynctask.workers.state.describe_exit`'s text.  Each task it was running is a
    crash (see the module docstring) unless the supervisor killed the child (``child.kill_cause``):
    for a timeout (the tasks past theirs, ``child.timed_out_ids``, nacked with the attempt counted,
    or dead-lettered at ``max_attempts``; the child's other running tasks nacked uncounted) or to end
    a shutdown (nacked uncounted, like the tasks it had not started).  A child running one task at a
    time had finished those before it: they are acked.  With ``concurrency`` above 1 what it
    finished cannot be told from what it had not started: all go back uncounted (those acked
    already are not touched: a nack of a spent receipt is a no-op), so a task finished in the last
    ``ack_window_s`` may run again.  Without portable receipts (AMQP) the broker gives the
    deliveries back itself; crash records are then notices to send to the queue's children.
    ``child.dead_lettered`` counts the tasks this call dead-lettered.
    """
    entries = [child.held[r.task_id] for r in child.running_tasks() if r.task_id in child.held]
    changed: list[CrashRecord] = []
    acked: list[str] = []
    if entries and child.concurrency == 1:
        acked = _ack_finished(transport, child, entries[0])
    crashed: list[Task] = []
    for entry in entries:
        task = P.task_from_entry(child.queue, entry)
        if child.kill_cause is None:
            del child.held[task.id]
            changed += _crashed(transport, child, ledger, task, crash_cause(child, how))
            crashed.append(task)
        elif child.kill_cause.startswith("TaskTimeout") and (not child.timed_out_ids or task.id in child.timed_out_ids):
            del child.held[task.id]
            changed += _timed_out(transport, child, ledger, task)
    _log_crashed(child, ledger, crashed, crash_cause(child, how))
    if not transport.portable_receipts:
        if child.held:
            logger.info("%d task(s) of the dead worker %s go back through the broker", len(child.held), child.worker)
    else:
        for unstarted in child.held.values():
            try:
                transport.nack(P.task_from_entry(child.queue, unstarted), count_attempt=False)
            except TransportError as exc:
                logger.error("cannot give back task %s (its lease will): %s", unstarted.id, exc)
    child.held.clear()
    return GivenBack(changed, acked)


def _ack_finished(transport: Transport, child: ChildState, running: P.HeldEntry) -> list[str]:
    """Ack (and forget) the held tasks before ``running``: the child finished them, in order.

    Returns their ids, but none on AMQP (their acks died with the connection) or when acking failed.
    """
    done = list(itertools.takewhile(lambda held: held is not running, child.held.values()))
    for held in done:
        del child.held[held.id]
    if not done or not transport.portable_receipts:
        return []
    try:
        transport.ack_tasks([P.task_from_entry(child.queue, held) for held in done])
    except TransportError as exc:
        logger.error("cannot ack the %d task(s) the dead child finished: %s", len(done), exc)
        return []
    return [held.id for held in done]


def _timed_out(transport: Transport, child: ChildState, ledger: CrashLedger, task: Task) -> list[CrashRecord]:
    cause = f"{child.kill_cause} (attempt {task.attempts} of {child.max_attempts})"
    last = task.attempts >= child.max_attempts
    if not transport.portable_receipts:
        # the broker's redelivery counts the attempt; only the last one needs a word to the children
        return [ledger.condemn(child.queue, task.id, task.attempts, cause)] if last else []
    try:
        if last:
            logger.error("task %s on %s dead-lettered: %s", task.id, task.queue, cause)
            transport.dead(task, cause)
            child.dead_lettered += 1
        else:
            transport.nack(task)
    except TransportError as exc:
        logger.error("cannot give back task %s (its lease will): %s", task.id, exc)
    return []


def _log_crashed(child: ChildState, ledger: CrashLedger, crashed: list[Task], cause: str) -> None:
    """One warning for the tasks given back after a crash (quarantines have their own error lines)."""
    if len(crashed) > 1:
        logger.warning(
            "%d tasks on %s crashed their worker: %s; given back (quarantined after max_crashes=%d)",
            len(crashed),
            child.queue,
            cause,
            child.max_crashes,
        )
        return
    record = ledger.get(crashed[0].id) if crashed else None
    if record is not None and record.dead_reason is None:
        logger.warning(
            "task %s on %s crashed its worker (%d of max_crashes=%d): %s; again in %.1f s",
            record.task_id,
            child.queue,
            record.crashes,
            child.max_crashes,
            cause,
            crash_delay_s(record.crashes),
        )


def _crashed(transport: Transport, child: ChildState, ledger: CrashLedger, task: Task, cause: str) -> list[CrashRecord]:
    """Count a crash of ``task`` and give it back, or quarantine it at ``max_crashes``."""
    record = ledger.record(child.queue, task.id, task.attempts, cause)
    quarantine = record.crashes >= child.max_crashes
    if quarantine:
        record.dead_reason = quarantine_reason(record, child.max_crashes)
        logger.error("task %s on %s quarantined after %d crash(es): %s", task.id, task.queue, record.crashes, cause)
    if not transport.portable_receipts:
        return [record]
    try:
        if quarantine:
            transport.dead(task, record.dead_reason or "")
            child.dead_lettered += 1
            ledger.forget(task.id)
        else:
            transport.nack(task, delay_s=crash_delay_s(record.crashes), count_attempt=False)
            record.deferred = record.crashes
    except TransportError as exc:
        logger.error("cannot give back task %s (its lease will): %s", task.id, exc)
    return []


class CrashKeeper:
    """The supervisor's side: its ledger, the give-back of a dead child's tasks, and the notices to
    the children of a queue where receipts are not portable (AMQP)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.ledger = CrashLedger()

    def child_started(self, child: ChildState) -> None:
        """Tell a new child the open records of its queue."""
        if not self.transport.portable_receipts:
            self.notify([child], self.ledger.open_records(child.queue))

    def child_died(self, child: ChildState, siblings: list[ChildState], how: str) -> GivenBack:
        """:func:`give_back`, then the notices to ``siblings`` (the queue's other children)."""
        given = give_back(self.transport, child, self.ledger, how)
        self.notify(siblings, given.notices)
        return given

    def settled(self, message: P.Settled, siblings: list[ChildState]) -> None:
        """A child's ``Settled`` message: keep the ledger and the queue's other children in step."""
        record = self.ledger.settled(message.task_id, message.crashes, message.outcome)
        self.notify(siblings, [record] if record is not None else [])

    @staticmethod
    def notify(children: list[ChildState], records: list[CrashRecord]) -> None:
        """Send crash notices to the children that still listen."""
        for child in children:
            for record in records:
                if child.conn is None:
                    break
                try:
                    child.conn.send(record.notice())
                except OSError:  # it is leaving; its replacement hears of the open records at start
                    break
