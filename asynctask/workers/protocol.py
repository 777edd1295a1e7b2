"""What a worker child and its supervisor tell each other: tuples over a ``multiprocessing`` Pipe.

Each message is a tuple whose first item names its kind.  The child sends what it does; the
supervisor sends only crash notices, and only on transports without portable receipts (AMQP), rarely
and small, so a child that reads them late never blocks it.  Signals carry the supervisor's other
wishes (stop) to the child.

==========================================================  ====================================================
``("ready", pid)``                                           ``setup()`` is done, fetching starts
``("fetched", [held_entry, ...], wall_time)``                the child now holds these tasks, and no others
``("polled", wall_time)``                                    a fetch came back empty: the child holds nothing
``("started", task_id, wall_time, timeout_s or None)``       ``process`` began on this task (see below)
``("finished", [(task_id, outcome, duration_s), ...])``      the child no longer holds these tasks (see below)
``("halted",)``                                              ``--halt-when-empty``: the queue is empty, exiting 0
``("recycle", reason)``                                      leaving on purpose (``max_tasks_per_child``...)
``("settled", task_id, crashes, outcome)``                   a crash notice was acted on: ``deferred`` (given
                                                             back with the crash delay) or ``dead``
==========================================================  ====================================================

The supervisor sends ``("crash", task_id, crashes, attempts, deferred, dead_reason)`` (:func:`crash_notice`):
``crashes`` children died while running this task; the child that next fetches it gives it back with
``attempts`` (the broker's redelivery raised them) after the crash delay unless ``deferred`` already
equals ``crashes``, or dead-letters it with ``dead_reason`` when that is not None (quarantine, or a
timeout at ``max_attempts``).  Where receipts are portable the supervisor does all that itself.

A ``held_entry`` is ``(id, attempts, receipt, enqueued_at, priority)`` (:func:`held_entry`): enough
to give the task back through another transport instance (:func:`task_from_entry`; transports
identify a delivery by its receipt, never by its payload).  A child fetches a batch only after it
finished the previous one, so ``fetched`` and ``polled`` also say that every earlier task is done.

Outcomes in ``finished``: ``acked`` (processed and acknowledged), ``retried`` (failed, nacked with a
delay), ``dead`` (dead-lettered: rejected, timed out or out of attempts), ``released`` (fetched but
never started, given back without counting an attempt), ``lost`` (the lease was lost before the
outcome could be recorded).  ``duration_s`` is the processing time (0 for ``released``; None in the
``acked`` entries the supervisor makes for tasks a dead child had finished and it acked).  Children
send ``finished`` only when asked to (``report_outcomes``: the supervisor has metrics or listeners),
as the supervisor's own bookkeeping does not need it.

The task in hand is not sent per task (a message per task would cost the supervisor a wake-up per
task): the child writes it into a :class:`CurrentTask` in shared memory instead, and the supervisor
passes ``started`` on to its listeners (metrics) itself once a task has run for a second.  A Runner
used without a CurrentTask (tests, eager mode) reports ``started`` for every task.
"""

from __future__ import annotations

from typing import Any

from asynctask.task import Task

READY = "ready"
FETCHED = "fetched"
POLLED = "polled"
STARTED = "started"
FINISHED = "finished"
HALTED = "halted"
RECYCLE = "recycle"
SETTLED = "settled"
CRASH = "crash"
DEFERRED = "deferred"

ACKED = "acked"
RETRIED = "retried"
DEAD = "dead"
RELEASED = "released"
LOST = "lost"

Message = tuple[Any, ...]
HeldEntry = tuple[str, int, str, float, int]


def held_entry(task: Task) -> HeldEntry:
    """What a ``fetched`` message carries per task."""
    return (task.id, task.attempts, task.receipt, task.enqueued_at, task.priority)


def crash_notice(task_id: str, crashes: int, attempts: int, deferred: int, dead_reason: str | None) -> Message:
    """The supervisor's ``crash`` message (see the module docstring)."""
    return (CRASH, task_id, crashes, attempts, deferred, dead_reason)


def task_from_entry(queue: str, entry: HeldEntry) -> Task:
    """A Task another transport instance can ack, nack or dead-letter (its payload is not carried)."""
    task_id, attempts, receipt, enqueued_at, priority = entry
    return Task(task_id, queue, {}, attempts, enqueued_at, priority, receipt)

__all__ = [
    "ACKED",
    "CRASH",
    "DEAD",
    "DEFERRED",
    "FETCHED",
    "FINISHED",
    "HALTED",
    "LOST",
    "POLLED",
    "READY",
    "RECYCLE",
    "RELEASED",
    "RETRIED",
    "SETTLED",
    "STARTED",
    "CurrentTask",
    "HeldEntry",
    "Message",
    "crash_notice",
    "held_entry",
    "task_from_entry",
]


class CurrentTask:
    """The task a child is running, in shared memory: the child writes it per task without a system
    call, the supervisor reads it (timeouts, and which task a dead child was running).

    Written only by the child; a sequence number (odd while writing) lets the reader skip a torn
    value.  Created by the supervisor and passed to the child as a ``Process`` argument.
    """

    ID_BYTES = 256

    def __init__(self, context: Any = None) -> None:
        import ctypes  # noqa: PLC0415
        import multiprocessing  # noqa: PLC0415

        ctx = context or multiprocessing.get_context()
        self._id = ctx.RawArray(ctypes.c_char, self.ID_BYTES)
        self._nums = ctx.RawArray(ctypes.c_double, 3)  # sequence, started (wall time), timeout_s (0: none)

    def set(self, task_id: str, started: float, timeout_s: float | None) -> None:
        nums = self._nums
        nums[0] += 1
        self._id.value = task_id.encode()[: self.ID_BYTES - 1]
        nums[1] = started
        nums[2] = timeout_s or 0.0
        nums[0] += 1

    def clear(self) -> None:
        nums = self._nums
        nums[0] += 1
        self._id.value = b""
        nums[0] += 1

    def read(self) -> tuple[str, float, float | None] | None:
        """(task id, wall time it started, timeout_s or None), or None when no task is running."""
        nums = self._nums
        for _ in range(100):
            before = nums[0]
            if before % 2:
                continue
            raw, started, timeout = self._id.value, nums[1], nums[2]
            if nums[0] == before:
                return (raw.decode(errors="replace"), started, timeout or None) if raw else None
        return None
