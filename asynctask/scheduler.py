"""The cron scheduler: ``asynctask_scheduled_workers`` entries -> task submissions, once per fire.

Entries (as in rex.asynctask; validated by :mod:`asynctask.cron`), each a mapping with:

* exactly one of ``worker`` (a registered worker name) or ``command`` (a command line, a string
  split with :func:`shlex.split` or a list of strings, run with no shell by the built-in
  ``command`` worker, :mod:`asynctask.workers.command`);
* at least one APScheduler cron field ``year, month, day, week, day_of_week, hour, minute, second``
  (APScheduler 3 ``CronTrigger`` semantics: every given field must match, 0 = Monday), or instead
  ``crontab: "m h dom mon dow"`` (crontab semantics for the weekday: 0 and 7 = Sunday; unlike
  cron, day of month and day of week must *both* match when both are restricted);
* or instead of those, ``every_s: N``: every N seconds (> 0), at ``start_date + k * N`` (the Unix
  epoch when no ``start_date``), the same fire times on every node;
* optional ``payload`` (a JSON object; a command fire's payload is ``{"command": [argv...]}`` plus
  it), ``queue``, ``start_date`` and ``end_date`` (ISO text, a YAML date or datetime; naive means in
  the entry's time zone; both inclusive), ``timezone`` (an IANA name, default ``UTC``) and
  ``misfire`` (``skip``, the default, or ``once``).

``@periodic_task`` and ``@cron_task`` functions (:mod:`asynctask.schedules`) are entries too, fired by
every scheduler whose process imported them.

Where a fire goes: the entry's ``queue``, else the queue the worker is configured on (the
``worker_queues`` mapping), else ``scheduled_<worker>`` (:func:`~asynctask.cron.scheduled_queue_name`),
which every supervisor consumes (see :func:`~asynctask.cron.scheduled_queues`).

Several nodes may run the scheduler at once.  Each fire is claimed with
``transport.claim_once("schedule:<schedule id>:<fire time, UTC ISO>", ttl)`` and only the winner
submits it.  The schedule id is a hash of the entry's canonical JSON (defaults filled in), so it is
the same on every node, across restarts, and across config edits that do not change the entry.  The
claim lives until the entry's next fire time plus the grace and a margin, so a node that restarts
cannot claim a fire again that another node submitted.

Order is claim, then submit.  A submit that fails with a transport error is retried by the claim's
holder until it succeeds (the fire is kept in memory); a node that *dies* between a successful claim
and the submit (or whose claim reply is lost) loses that one fire: exactly-once with a
microsecond-wide loss window was chosen over at-least-once with doubled runs.

Lateness: a fire is on time while it is at most :data:`MISFIRE_GRACE_S` old.  Older fires (the
scheduler was down, blocked, or the transport unreachable) are missed: ``skip`` drops them (logged);
``once`` submits one catch-up (the latest missed fire) unless an on-time fire is being submitted in
the same tick anyway.  On start, a ``once`` entry looks back (up to a year) for its latest past
fire and claims it: if no node submitted it, it runs now, anacron-like.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from asynctask.cron import DEFAULT_SOURCE, ScheduleEntry, latest_before, next_after, validate_entries
from asynctask.errors import AsyncTaskError, TransportError
from asynctask.middleware import MiddlewareChain
from asynctask.transports import get_transport
from asynctask.transports.base import Transport, mask_url
from asynctask.workers.base import registered_workers

__all__ = ["MISFIRE_GRACE_S", "Fire", "Scheduler"]

logger = logging.getLogger(__name__)

#: A fire at most this old is on time; older ones are missed (see ``misfire``).
MISFIRE_GRACE_S = 10.0
#: Added to every claim's lifetime (beyond the next fire time and the grace).
CLAIM_MARGIN_S = 60.0
#: Lifetime of the claim of an entry's last fire ever (end_date reached).
LAST_CLAIM_TTL_S = 367 * 86400.0
#: The run loop re-reads the clock at least this often (wall-clock jumps).
MAX_SLEEP_S = 30.0
#: After an error the run loop retries after this long, doubling up to MAX_SLEEP_S.
RETRY_FIRST_S = 1.0


@dataclass(frozen=True)
class Fire:
    """A fire this scheduler claimed and submitted (``task_id`` empty while its submit is pending)."""

    schedule_id: str
    entry_index: int
    queue: str
    fire_time: datetime
    task_id: str = ""
    catch_up: bool = False


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


#: the state key under which the last fire of a schedule is kept (``asynctask schedules`` reads it)
LAST_FIRE_KEY = "schedule."
LAST_FIRE_TTL_S = 367 * 86400.0


def record_last_fire(transport: Transport, queue: str, schedule_id: str, fire_time: str, task_id: str) -> None:
    """Keep the last fire of a schedule in the state store, for ``asynctask schedules``; a transport
    that keeps no state (AMQP without a state store) is skipped, as is any error: it is a report."""
    try:
        text = json.dumps({"fire_time": fire_time, "task_id": task_id})
        transport.state_put(queue, LAST_FIRE_KEY + schedule_id, text, LAST_FIRE_TTL_S)
    except AsyncTaskError as exc:
        logger.debug("cannot record the last fire of schedule %s: %s", schedule_id, exc)


# -- the scheduler --------------------------------------------------------------------------------


class Scheduler:
    """Submits the fires of ``entries`` to the transport at ``transport_url``, each once across nodes.

    ``worker_queues`` maps a worker name to the queue it is configured on; ``decorated`` adds the
    schedules of ``@periodic_task`` / ``@cron_task`` functions (validated already).  ``clock`` returns the
    current time (timezone-aware; default: now in UTC).  The constructor validates (raising
    :class:`ScheduleError`); :meth:`tick` does one round at a given time; :meth:`run` loops.  One
    thread at a time may use an instance.
    """

    def __init__(  # noqa: PLR0913 - the decorated schedules joined the configured ones
        self,
        entries: list[dict[str, Any]],
        transport_url: str,
        worker_queues: Mapping[str, str],
        *,
        clock: Callable[[], datetime] | None = None,
        source: str = DEFAULT_SOURCE,
        decorated: Sequence[ScheduleEntry] = (),
    ) -> None:
        self.entries = validate_entries(entries, source, known_workers=registered_workers()) + list(decorated)
        self.source = source
        self.transport_url = transport_url
        self.queues = {entry.schedule_id: entry.queue_for(worker_queues) for entry in self.entries}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._transport: Transport | None = None
        self._next: dict[str, datetime | None] = {}
        #: the producer middleware of the fires (``before_submit``); set by the supervisor
        self.middleware: MiddlewareChain | None = None
        self._pending: list[Fire] = []

    def _open(self) -> Transport:
        if self._transport is None:
            self._transport = get_transport(self.transport_url)
            self._transport.middleware = self.middleware
        return self._transport

    def close(self) -> None:
        """Close the transport this scheduler opened (it reopens on the next tick)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except AsyncTaskError as exc:
                logger.debug("closing the transport failed: %s", exc)

    def next_fire_time(self) -> datetime | None:
        """The earliest fire time not yet handled (None when no entry fires again or before the first tick)."""
        times = [moment for moment in self._next.values() if moment is not None]
        return min(times, default=None)

    def tick(self, now: datetime) -> list[Fire]:
        """Claim and submit every fire due at ``now``; return the fires this instance submitted.

        Fires another node claimed are not returned.  A :class:`TransportError` propagates after
        the state is kept consistent: a claimed fire whose submit failed is retried first on the
        next tick, an unclaimed one is claimed again.
        """
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        transport = self._open()
        done: list[Fire] = []
        while self._pending:
            done.append(self._submit(transport, self._pending[0]))
            self._pending.pop(0)
        for entry in self.entries:
            if entry.schedule_id not in self._next:
                self._next[entry.schedule_id] = self._first_next(entry, now)
            for fire_time, catch_up in self._due(entry, now):
                ttl = CLAIM_MARGIN_S + MISFIRE_GRACE_S
                following = next_after(entry.trigger, fire_time)
                ttl += LAST_CLAIM_TTL_S if following is None else (following - fire_time).total_seconds()
                key = f"schedule:{entry.schedule_id}:{_utc_iso(fire_time)}"
                claimed = transport.claim_once(key, ttl)
                self._next[entry.schedule_id] = following
                if not claimed:
                    logger.debug("%s fire %s was claimed elsewhere", entry.label, _utc_iso(fire_time))
                    continue
                fire = Fire(entry.schedule_id, entry.index, self.queues[entry.schedule_id], fire_time, "", catch_up)
                self._pending.append(fire)
                done.append(self._submit(transport, fire))
                self._pending.pop()
        return done

    def _submit(self, transport: Transport, fire: Fire) -> Fire:
        entry = next(e for e in self.entries if e.schedule_id == fire.schedule_id)
        task_id = transport.submit_task(fire.queue, entry.payload, meta=entry.meta or None)
        record_last_fire(transport, fire.queue, entry.schedule_id, _utc_iso(fire.fire_time), task_id)
        logger.info(
            "%s%s fire %s -> queue %s, task %s",
            entry.label,
            " catch-up" if fire.catch_up else "",
            _utc_iso(fire.fire_time),
            fire.queue,
            task_id,
        )
        return replace(fire, task_id=task_id)

    def _first_next(self, entry: ScheduleEntry, now: datetime) -> datetime | None:
        """Where a fresh scheduler starts: at ``now``; for ``once`` at the latest past fire (claimed if nobody did)."""
        result: datetime | None = entry.trigger.get_next_fire_time(None, now)
        if entry.misfire == "once":
            return latest_before(entry.trigger, now, None) or result
        return result

    def _due(self, entry: ScheduleEntry, now: datetime) -> list[tuple[datetime, bool]]:
        """The fires of ``entry`` to claim at ``now``, oldest first, as (fire time, catch-up)."""
        moment = self._next[entry.schedule_id]
        if moment is None or moment > now:
            return []
        cutoff = now - timedelta(seconds=MISFIRE_GRACE_S)
        due: list[tuple[datetime, bool]] = []
        if moment < cutoff:
            latest = latest_before(entry.trigger, cutoff, moment)
            assert latest is not None
            following = next_after(entry.trigger, latest)
            if entry.misfire == "once" and (following is None or following > now):
                due.append((latest, True))
            else:
                logger.warning(
                    "%s missed its fires from %s to %s (misfire %s)%s",
                    entry.label,
                    _utc_iso(moment),
                    _utc_iso(latest),
                    entry.misfire,
                    "; they coalesce into the on-time fire" if entry.misfire == "once" else ": skipped",
                )
            moment = following
        while moment is not None and moment <= now:
            due.append((moment, False))
            moment = next_after(entry.trigger, moment)
        if not due:
            self._next[entry.schedule_id] = moment
        return due

    def describe(self) -> list[str]:
        """One line per entry: what, when, time zone, misfire mode, queue and schedule id."""
        return [
            f"{e.source}[{e.index}]: {e.label} at {e.trigger} timezone {e.timezone}, misfire {e.misfire}"
            f" -> queue {self.queues[e.schedule_id]} (schedule {e.schedule_id})"
            for e in self.entries
        ]

    def run(self, stop: threading.Event) -> None:
        """Tick at each fire time until ``stop`` is set, then close the transport.

        Opens its own transport (in the calling thread).  Transport errors (and any other error) are
        logged and retried with a growing delay, so the thread only ends when ``stop`` is set.
        """
        if not self.entries:
            logger.info("scheduler: no entries in %s; nothing is scheduled", self.source)
            return
        for line in self.describe():
            logger.info("%s", line)
        logger.info(
            "scheduler running: %d entries, fires claimed on %s", len(self.entries), mask_url(self.transport_url)
        )
        delay = RETRY_FIRST_S
        try:
            while not stop.is_set():
                try:
                    self.tick(self._clock())
                except Exception as exc:
                    if isinstance(exc, TransportError):
                        logger.warning("scheduler: transport error: %s; retrying in %.0f s", exc, delay)
                    else:
                        logger.exception("scheduler: unexpected error; retrying in %.0f s", delay)
                    self.close()
                    stop.wait(delay)
                    delay = min(delay * 2, MAX_SLEEP_S)
                    continue
                delay = RETRY_FIRST_S
                upcoming = self.next_fire_time()
                wait = MAX_SLEEP_S
                if upcoming is not None:
                    wait = min(wait, (upcoming - self._clock()).total_seconds() + 0.001)
                stop.wait(max(wait, 0.001))
        finally:
            self.close()
