"""Cancel on AMQP: marks in the state store, since a queue cannot lose a message from its middle.

``cancel`` writes the task's cancel key (``state_add``) unless a fetch wrote it first: each fetch
claims the keys of the ``@task`` tasks it hands out (one write per task, only when a state store
is set), and acks unrun the tasks it finds marked cancelled; an ack or a dead letter deletes the
marks of its ``@task`` tasks (one call per batch), and a cancel reads the task's record first (a
task keeping results is known to have started).  See
:mod:`asynctask.transports.state` for the exceptions this leaves (a plain task taken by a worker,
an unknown id, a cancel racing the fetch).
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Sequence

from asynctask.message import Task
from asynctask.results import QUEUED, record_key
from asynctask.transports.state import KeyedState

__all__ = ["CANCEL_KEY", "AmqpCancelMarks"]

logger = logging.getLogger("asynctask.transports.amqp")

#: the state key of a task's cancel mark, and its values: cancelled by ``cancel``, or taken by a fetch
CANCEL_KEY = "cancel."
CANCELLED_MARK, TAKEN_MARK = "cancelled", "taken"
#: a cancel mark waits this long for its task to be fetched (a delayed task's delay included)
CANCEL_MARK_TTL_S = 30 * 24 * 3600.0
#: a ``@task`` task's taken mark: a cancel this long after a worker took it would say True
TAKEN_TTL_S = 24 * 3600.0


class AmqpCancelMarks(KeyedState, abc.ABC):
    """The cancel hooks of the AMQP transport (see the module docstring)."""

    @abc.abstractmethod
    def _fetch(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        """The transport's own fetch."""

    @abc.abstractmethod
    def _ack(self, task: Task) -> None: ...

    @abc.abstractmethod
    def _ack_deliveries(self, tasks: Sequence[Task]) -> None:
        """The transport's own ack."""

    @abc.abstractmethod
    def _bury_task(self, task: Task, reason: str) -> None:
        """The transport's own dead-lettering."""

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        self._ack_deliveries(tasks)
        self._forget_taken(tasks)

    def _dead(self, task: Task, reason: str) -> None:
        self._bury_task(task, reason)
        self._forget_taken([task])

    def _forget_taken(self, tasks: Sequence[Task]) -> None:
        """Delete the taken marks of finished ``@task`` tasks (one call per queue): the state store
        keeps nothing of a task beyond its result record."""
        if self.state_store is None:
            return
        by_queue: dict[str, list[str]] = {}
        for task in tasks:
            if task.meta:
                by_queue.setdefault(task.queue, []).append(CANCEL_KEY + task.id)
        for queue, keys in by_queue.items():
            self.state_delete_many(queue, keys)

    keeps_state = False

    def _cancel(self, queue: str, task_id: str) -> bool:
        """Mark the task cancelled unless a fetch claimed it first (see :meth:`_get_tasks`), or its
        record (a task keeping results) says a worker started it."""
        if self.state_store is None:
            raise self._unsupported()
        record = self.state_get(queue, record_key(task_id))
        if record is not None and json.loads(record).get("status") != QUEUED:
            return False
        return self.state_add(queue, CANCEL_KEY + task_id, CANCELLED_MARK, CANCEL_MARK_TTL_S)

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        """Fetch; with a state store, claim each fetched ``@task`` task's cancel key (one write per
        task, so a later cancel says False) and drop the tasks marked cancelled (acked unrun).  A
        plain task (no meta) is only checked for a mark: a cancel after a worker took it says True
        to no effect."""
        tasks = self._fetch(queue, max_count, timeout_s, lease_s)
        if self.state_store is None or not tasks:
            return tasks
        keys = [CANCEL_KEY + task.id for task in tasks]
        claimed = [task for task in tasks if task.meta]
        won = dict(
            zip(
                (task.id for task in claimed),
                self.state_add_many(queue, [CANCEL_KEY + t.id for t in claimed], TAKEN_MARK, TAKEN_TTL_S),
                strict=True,
            )
        )
        marks = self.state_get_many(queue, keys)
        kept = []
        for task, mark in zip(tasks, marks, strict=True):
            if mark == CANCELLED_MARK and not won.get(task.id, False):
                logger.info("task %s on %s was cancelled: dropped unrun", task.id, queue)
                self._ack(task)
            else:
                kept.append(task)
        return kept
