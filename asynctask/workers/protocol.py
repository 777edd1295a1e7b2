"""What a worker child tells its supervisor: tuples over a ``multiprocessing`` Pipe.

Each message is a tuple whose first item names its kind.  The child only sends; the supervisor
only reads (signals carry the supervisor's wishes to the child), so neither can deadlock the other.

==========================================================  ====================================================
``("ready", pid)``                                           ``setup()`` is done, fetching starts
``("fetched", [task_dict, ...], wall_time)``                 the child now holds these tasks (``Task.to_dict()``)
``("polled", wall_time)``                                    a fetch came back empty (the child is alive)
``("started", task_id, wall_time, timeout_s or None)``       ``process`` began on this task
``("finished", [(task_id, outcome, duration_s), ...])``      the child no longer holds these tasks
``("halted",)``                                              ``--halt-when-empty``: the queue is empty, exiting 0
``("recycle", reason)``                                      leaving on purpose (``max_tasks_per_child``...)
==========================================================  ====================================================

Outcomes in ``finished``: ``acked`` (processed and acknowledged), ``retried`` (failed, nacked with a
delay), ``dead`` (dead-lettered: rejected, timed out or out of attempts), ``released`` (fetched but
never started, given back without counting an attempt), ``lost`` (the lease was lost before the
outcome could be recorded).  ``duration_s`` is the processing time (0 for ``released``).
"""

from __future__ import annotations

from typing import Any

READY = "ready"
FETCHED = "fetched"
POLLED = "polled"
STARTED = "started"
FINISHED = "finished"
HALTED = "halted"
RECYCLE = "recycle"

ACKED = "acked"
RETRIED = "retried"
DEAD = "dead"
RELEASED = "released"
LOST = "lost"

Message = tuple[Any, ...]

__all__ = [
    "ACKED",
    "DEAD",
    "FETCHED",
    "FINISHED",
    "HALTED",
    "LOST",
    "POLLED",
    "READY",
    "RECYCLE",
    "RELEASED",
    "RETRIED",
    "STARTED",
    "Message",
]
