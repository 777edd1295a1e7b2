"""What a worker child and its supervisor tell each other: small typed records over a ``multiprocessing`` Pipe.

Each message is a :class:`~typing.NamedTuple` (cheap to build and to pickle; a child sends one per
batch, not one per task).  The per-task parts of a batch travel as plain tuples (``rows``: a
NamedTuple per task would cost the child several times more to pickle) and are typed on arrival by
:attr:`Fetched.entries` and :attr:`Finished.outcomes`.  The child sends what it does; the
supervisor sends only crash notices, and only on transports without portable receipts (AMQP),
rarely and small, so a child that reads them late never blocks it.  Signals carry the supervisor's
other wishes (stop) to the child.

================================================  ====================================================================
:class:`Ready` ``(pid)``                          ``setup()`` is done, fetching starts
:class:`Fetched` ``(rows, at)``                   the child now holds these tasks (:attr:`Fetched.entries`), and no
                                                  others; ``at`` is the wall time
:class:`Took` ``(rows, at)``                      a child running several tasks at once (``concurrency``) now
                                                  holds these too (it never sends ``Fetched``)
:class:`Polled` ``(at)``                          a fetch came back empty: the child holds nothing
:class:`Started` ``(task_id, at, timeout_s)``     ``process`` began on this task (see below)
:class:`Finished` ``(rows)``                      the child no longer holds these tasks (:attr:`Finished.outcomes`)
:class:`Halted` ``()``                            ``--halt-when-empty``: the queue is empty, exiting 0
:class:`Recycle` ``(reason)``                     leaving on purpose (``max_tasks_per_child``...)
:class:`Settled` ``(task_id, crashes, outcome)``  a crash notice was acted on: ``deferred`` (given back with the crash
                                                  delay) or ``dead``
================================================  ====================================================================

The supervisor sends :class:`CrashNotice` ``(task_id, crashes, attempts, deferred, dead_reason)``:
``crashes`` children died while running this task; the child that next fetches it gives it back with
``attempts`` (the broker's redelivery raised them) after the crash delay unless ``deferred`` already
equals ``crashes``, or dead-letters it with ``dead_reason`` when that is not None (quarantine, or a
timeout at ``max_attempts``).  Where receipts are portable the supervisor does all that itself.

A child with ``concurrency`` above 1 fetches while tasks run: it sends ``Took`` (held in addition)
instead of ``Fetched``, ``Polled`` only when it holds nothing, and always sends ``Finished``.

A :class:`HeldEntry` is enough to give the task back through another transport instance
(:func:`task_from_entry`; transports identify a delivery by its receipt, never by its payload).  A
child fetches a batch only after it finished the previous one, so ``Fetched`` and ``Polled`` also
say that every earlier task is done.

Outcomes in ``Finished``: ``acked`` (processed and acknowledged), ``retried`` (failed, nacked with a
delay), ``dead`` (dead-lettered: rejected, timed out or out of attempts), ``released`` (fetched but
never started, given back without counting an attempt), ``lost`` (the lease was lost before the
outcome could be recorded).  ``duration_s`` is the processing time (0 for ``released``; None in the
``acked`` outcomes the supervisor makes for tasks a dead child had finished and it acked).  Children
send ``Finished`` only when asked to (``report_outcomes``: the supervisor has listeners, e.g.
metrics), as the supervisor's own bookkeeping does not need it.

The tasks in hand are not sent per task (a message per task would cost the supervisor a wake-up per
task): the child writes each into its slot of a :class:`CurrentTask` in shared memory instead, and the supervisor
passes ``Started`` on to its listeners itself once a task has run for a second.  A Runner used
without a CurrentTask (tests, eager mode) reports ``Started`` for every task.

Listeners of the supervisor (:data:`Event`) get every child message, plus two records the supervisor
makes itself: :class:`ChildStarted` and :class:`ChildExited`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from asynctask.message import Task

#: outcomes of a task in :class:`Finished`, and of a crash notice in :class:`Settled`
ACKED = "acked"
RETRIED = "retried"
DEAD = "dead"
RELEASED = "released"
LOST = "lost"
DEFERRED = "deferred"


class HeldEntry(NamedTuple):
    """A task the child holds, as :class:`Fetched` carries it (no payload)."""

    id: str
    attempts: int
    receipt: str
    enqueued_at: float
    priority: int


class Outcome(NamedTuple):
    """How one task ended, in :class:`Finished`."""

    task_id: str
    outcome: str
    #: processing time; None when unknown (the supervisor acked it for a dead child)
    duration_s: float | None


class Ready(NamedTuple):
    pid: int


#: a :class:`HeldEntry` as it travels (the fields in that order)
HeldRow = tuple[str, int, str, float, int]
#: an :class:`Outcome` as it travels (the fields in that order)
OutcomeRow = tuple[str, str, float | None]


class Fetched(NamedTuple):
    rows: list[HeldRow]
    at: float

    @property
    def entries(self) -> list[HeldEntry]:
        return [HeldEntry._make(row) for row in self.rows]


class Took(NamedTuple):
    rows: list[HeldRow]
    at: float

    @property
    def entries(self) -> list[HeldEntry]:
        return [HeldEntry._make(row) for row in self.rows]


class Polled(NamedTuple):
    at: float


class Started(NamedTuple):
    task_id: str
    at: float
    timeout_s: float | None


class Finished(NamedTuple):
    rows: list[OutcomeRow]

    @property
    def outcomes(self) -> list[Outcome]:
        return [Outcome._make(row) for row in self.rows]


class Halted(NamedTuple):
    pass


class Recycle(NamedTuple):
    reason: str


class Settled(NamedTuple):
    task_id: str
    crashes: int
    outcome: str


class CrashNotice(NamedTuple):
    """The supervisor's word to the children of a queue about a task that crashed (AMQP)."""

    task_id: str
    crashes: int
    attempts: int
    deferred: int
    dead_reason: str | None


class ChildStarted(NamedTuple):
    """To listeners: a child process was started for the slot."""

    pid: int | None


class ChildExited(NamedTuple):
    """To listeners: the slot's child ``pid`` left (its last messages were passed on first)."""

    pid: int | None
    #: it died and will be replaced
    restarted: bool = False
    #: it was replaced on purpose (max tasks or memory)
    recycled: bool = False
    #: the signal that killed it while it held a started task
    signal_name: str | None = None
    #: tasks the supervisor dead-lettered for it (a timeout at max_attempts, a quarantine)
    dead_lettered: int = 0


#: what a child sends
Message = Ready | Fetched | Took | Polled | Started | Finished | Halted | Recycle | Settled
#: what the supervisor's listeners get
Event = Message | ChildStarted | ChildExited


def held_entry(task: Task) -> HeldRow:
    """What a ``Fetched`` message carries per task (a :class:`HeldEntry` once received)."""
    return (task.id, task.attempts, task.receipt, task.enqueued_at, task.priority)


def task_from_entry(queue: str, entry: HeldEntry) -> Task:
    """A Task another transport instance can ack, nack or dead-letter (its payload is not carried)."""
    return Task(entry.id, queue, {}, entry.attempts, entry.enqueued_at, entry.priority, entry.receipt)


__all__ = [
    "ACKED",
    "DEAD",
    "DEFERRED",
    "LOST",
    "RELEASED",
    "RETRIED",
    "ChildExited",
    "ChildStarted",
    "CrashNotice",
    "CurrentTask",
    "Event",
    "Fetched",
    "Finished",
    "Halted",
    "HeldEntry",
    "HeldRow",
    "Message",
    "Outcome",
    "OutcomeRow",
    "Polled",
    "Ready",
    "Recycle",
    "Settled",
    "Started",
    "Took",
    "held_entry",
    "task_from_entry",
]


class CurrentTask:
    """The tasks a child is running, in shared memory: one slot per task it may run at once
    (``concurrency``); the child writes a slot per task without a system call, the supervisor reads
    them (timeouts, and which tasks a dead child was running).

    Each slot is written only by the child's thread or coroutine that owns it; a per-slot sequence
    number (odd while writing) lets the reader skip a torn value.  Created by the supervisor and
    passed to the child as a ``Process`` argument.
    """

    ID_BYTES = 256

    def __init__(self, context: Any = None, slots: int = 1) -> None:
        import ctypes  # noqa: PLC0415
        import multiprocessing  # noqa: PLC0415

        ctx = context or multiprocessing.get_context()
        self.slots = slots
        self._ids = [ctx.RawArray(ctypes.c_char, self.ID_BYTES) for _ in range(slots)]
        # per slot: sequence, started (wall time), timeout_s (0: none)
        self._nums = ctx.RawArray(ctypes.c_double, 3 * slots)

    def set(self, task_id: str, started: float, timeout_s: float | None, slot: int = 0) -> None:
        nums, base = self._nums, 3 * slot
        nums[base] += 1
        self._ids[slot].value = task_id.encode()[: self.ID_BYTES - 1]
        nums[base + 1] = started
        nums[base + 2] = timeout_s or 0.0
        nums[base] += 1

    def clear(self, slot: int = 0) -> None:
        nums, base = self._nums, 3 * slot
        nums[base] += 1
        self._ids[slot].value = b""
        nums[base] += 1

    def clear_all(self) -> None:
        for slot in range(self.slots):
            self.clear(slot)

    def read(self, slot: int = 0) -> Started | None:
        """The task running in ``slot`` (id, wall time it started, timeout_s or None), or None."""
        nums, base, ids = self._nums, 3 * slot, self._ids[slot]
        for _ in range(100):
            before = nums[base]
            if before % 2:
                continue
            raw, started, timeout = ids.value, nums[base + 1], nums[base + 2]
            if nums[base] == before:
                return Started(raw.decode(errors="replace"), started, timeout or None) if raw else None
        return None

    def read_all(self) -> list[Started]:
        """Every task running, in slot order."""
        found = []
        for slot in range(self.slots):
            running = self.read(slot)
            if running is not None:
                found.append(running)
        return found
