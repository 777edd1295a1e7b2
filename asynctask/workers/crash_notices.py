"""The child's side of crash notices (AMQP): act on the supervisor's word about a fetched task.

Where receipts are not portable the supervisor cannot give back a dead child's deliveries itself
(:mod:`asynctask.workers.crashes`); it tells the queue's children instead, and the child that
fetches the task next gives it back with the crash delay, or dead-letters it when quarantined.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from asynctask.message import Task
from asynctask.workers import protocol as P  # noqa: N812
from asynctask.workers.crashes import MAX_RECORDS, crash_delay_s

if TYPE_CHECKING:  # the runner imports this module
    from asynctask.workers.runner import Runner

__all__ = ["CrashNotices", "Inbox", "settle_fetched"]

# the crash lines are the crash module's, wherever they are written
logger = logging.getLogger("asynctask.workers.crashes")

#: A child's read of the supervisor's messages received so far (crash notices)
Inbox = Callable[[], Sequence[object]]


class CrashNotices:
    """The child's side (AMQP): the crash notices it heard from its supervisor, by task id (the
    latest per task, at most :data:`MAX_RECORDS`)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.notices: dict[str, P.CrashNotice] = {}

    def settle(self, runner: Runner, tasks: list[Task]) -> list[Task]:
        """Hear the notices that came, then act on those naming fetched ``tasks`` (:func:`settle_fetched`)."""
        for message in self.inbox():
            if isinstance(message, P.CrashNotice):
                self.notices.pop(message.task_id, None)
                self.notices[message.task_id] = message
        while len(self.notices) > MAX_RECORDS:
            del self.notices[next(iter(self.notices))]
        return settle_fetched(runner, self.notices, tasks) if self.notices else tasks


def settle_fetched(runner: Runner, notices: dict[str, P.CrashNotice], tasks: list[Task]) -> list[Task]:
    """A child's side (AMQP): act on the crash ``notices`` heard (task id -> message) for the fetched
    ``tasks``: give back with the crash delay, or dead-letter; returns the tasks to run.

    A task to run that crashed before is put in ``runner.ack_before``: the acks of the tasks before
    it go out first, so that if it crashes again they are not run twice.
    """
    runnable = []
    for task in tasks:
        notice = notices.get(task.id)
        if notice is None:
            runnable.append(task)
            continue
        if notice.dead_reason is not None:
            logger.error("task %s on %s dead-lettered: %s", task.id, task.queue, notice.dead_reason)
            runner.dead(task, notice.dead_reason)
            del notices[task.id]
            outcome = P.DEAD
        elif notice.deferred < notice.crashes:
            # the broker's redelivery raised attempts: give it back with those it had
            runner.nack(
                dataclasses.replace(task, attempts=notice.attempts),
                delay_s=crash_delay_s(notice.crashes),
                count_attempt=False,
            )
            notices[task.id] = notice._replace(deferred=notice.crashes, dead_reason=None)
            outcome = P.DEFERRED
        else:
            runnable.append(task)
            runner.ack_before.add(task.id)
            continue
        runner.send(P.Settled(task.id, notice.crashes, outcome))
        runner.finish([(task, P.DEAD if outcome == P.DEAD else P.RELEASED, 0.0)])
    return runnable
