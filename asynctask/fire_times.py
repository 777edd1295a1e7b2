"""Fire-time arithmetic of scheduled entries: cron triggers (APScheduler 3) and ``every_s`` ones.

:class:`EveryTrigger` fires at ``start + k * every_s`` (``start``: the entry's ``start_date``, else
the Unix epoch), so every node computes the same fire times and ``claim_once`` keeps each fire
single.  :func:`next_after` and :func:`latest_before` work on either kind of trigger.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

__all__ = ["EPOCH", "EveryTrigger", "Trigger", "latest_before", "next_after"]

_LOOKBACK_S = (60, 3600, 86400, 32 * 86400, 367 * 86400)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EveryTrigger:
    """Fires every ``every_s`` seconds at ``start + k * every_s`` (``start``: ``start_date``, else the
    Unix epoch), so that every node computes the same fire times; none after ``end``.

    The part of APScheduler's trigger interface the scheduler uses: :meth:`get_next_fire_time`.
    """

    def __init__(self, every_s: float, start: datetime | None, end: datetime | None) -> None:
        self.step_us = max(round(every_s * 1_000_000), 1)
        self.start = start or EPOCH
        self.end = end
        self.every_s = every_s

    def __str__(self) -> str:
        return f"every {self.every_s:g} s from {self.start.isoformat()}"

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        """The first fire at or after ``now``; with ``previous``, the first strictly after it (as
        APScheduler's triggers answer the scheduler)."""
        after = now if previous is None else previous + timedelta(microseconds=1)
        elapsed_us = (after - self.start) // timedelta(microseconds=1)
        steps = 0 if elapsed_us <= 0 else -(-elapsed_us // self.step_us)
        fire = self.start + timedelta(microseconds=steps * self.step_us)
        return None if self.end is not None and fire > self.end else fire


#: a trigger of either kind
Trigger = Union["CronTrigger", EveryTrigger]


def next_after(trigger: Trigger, moment: datetime) -> datetime | None:
    """The first fire strictly after ``moment`` (a fire time)."""
    result: datetime | None = trigger.get_next_fire_time(moment, moment)
    return result


def latest_before(trigger: Trigger, limit: datetime, known: datetime | None) -> datetime | None:
    """The latest fire strictly before ``limit`` (looking back at most a year, or from ``known``)."""
    first = known
    for seconds in _LOOKBACK_S:
        start = limit - timedelta(seconds=seconds)
        if known is not None and start <= known:
            break
        found: datetime | None = trigger.get_next_fire_time(None, start)
        if found is not None and found < limit:
            first = found
            break
    if first is None:
        return None
    while (following := next_after(trigger, first)) is not None and following < limit:
        first = following
    return first
