"""Cron entries of ``asynctask_scheduled_workers``: validation, queues and fire-time arithmetic.

The one home of what a scheduled entry may be.  :func:`check_entry_shape` is the check
:mod:`asynctask.config` runs on each entry as it reads a file (a mapping with exactly one of
``worker`` / ``command`` and a schedule field); :func:`validate_entries` turns the entries as written
into :class:`ScheduleEntry` objects (an APScheduler 3 ``CronTrigger`` each) or raises one-line
:class:`ScheduleError` messages naming ``source[index]``, the entry's worker or command, the field
and what is allowed.  APScheduler is imported only then, so that loading the configuration (and
every worker child) does without it.  The entry format and the scheduling rules are described in
:mod:`asynctask.scheduler`, which uses this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asynctask.errors import AsyncTaskError, QueueNameError, ScheduleError
from asynctask.fire_times import EveryTrigger, latest_before, next_after
from asynctask.message import encode_payload, validate_queue_name

if TYPE_CHECKING:  # imported when an entry is validated: loading config must not load APScheduler
    from apscheduler.triggers.cron import CronTrigger

__all__ = [
    "ALLOWED_KEYS",
    "COMMAND_WORKER",
    "CRON_FIELDS",
    "DEFAULT_SOURCE",
    "MISFIRE_MODES",
    "SCHEDULE_FIELDS",
    "EveryTrigger",
    "ScheduleEntry",
    "check_entry_shape",
    "latest_before",
    "next_after",
    "scheduled_queue_name",
    "scheduled_queues",
    "validate_entries",
]

logger = logging.getLogger(__name__)

CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
#: The fields that schedule an entry: the cron fields, ``crontab``, or ``every_s`` alone.
SCHEDULE_FIELDS = (*CRON_FIELDS, "crontab", "every_s")
MISFIRE_MODES = ("skip", "once")
#: ``meta`` is set by the schedule decorators (:mod:`asynctask.schedules`), not by configuration
OPTIONAL_KEYS = ("payload", "queue", "start_date", "end_date", "timezone", "misfire", "meta")
ALLOWED_KEYS = ("worker", "command", *CRON_FIELDS, "crontab", "every_s", *OPTIONAL_KEYS)
#: The setting the entries come from, named in error messages.
DEFAULT_SOURCE = "asynctask_scheduled_workers"
#: The built-in worker that runs ``command`` entries (:mod:`asynctask.workers.command`).
COMMAND_WORKER = "command"
_DOW = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def scheduled_queue_name(worker: str) -> str:
    """The queue a scheduled worker that no queue is configured for runs on: ``scheduled_<worker>``.

    The worker name is folded into the queue-name rule (lowercase; other characters become single
    underscores), so any registered name gives a valid queue.
    """
    folded = re.sub(r"[^a-z0-9]+", "_", worker.lower()).strip("_")
    return validate_queue_name(f"scheduled_{folded or 'worker'}"[:100].rstrip("_"))


@dataclass(frozen=True)
class ScheduleEntry:
    """One validated entry.  ``payload`` is what each fire submits (the argv included for a command)."""

    index: int
    schedule_id: str
    worker: str
    command: tuple[str, ...] | None
    payload: dict[str, Any] = field(hash=False)
    queue: str | None
    trigger: CronTrigger | EveryTrigger = field(hash=False)
    timezone: str
    misfire: str
    canonical: str = field(repr=False)
    #: the meta each fire submits (a ``@periodic_task`` / ``@cron_task`` names its function)
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    #: where the entry was defined, for ``asynctask schedules`` and messages
    source: str = DEFAULT_SOURCE

    @property
    def label(self) -> str:
        """``worker 'x'``, ``command 'a b'`` or ``function 'm.f'`` (a decorated one): how messages
        name the entry."""
        if self.command is not None:
            return f"command {shlex.join(self.command)!r}"
        if isinstance(self.meta.get("fn"), str):
            return f"function {self.meta['fn']!r}"
        return f"worker {self.worker!r}"

    def queue_for(self, worker_queues: Mapping[str, str]) -> str:
        """The queue this entry's fires go to (see the module docstring)."""
        return self.queue or worker_queues.get(self.worker) or scheduled_queue_name(self.worker)


# -- validation ------------------------------------------------------------------------------------


def check_entry_shape(entry: Any, where: str) -> None:
    """The shape of one entry as a configuration file holds it: a mapping with string keys, exactly
    one of ``worker`` (a non-empty string) or ``command``, and at least one :data:`SCHEDULE_FIELDS`.
    Raises :class:`ScheduleError` naming ``where``; :func:`validate_entries` checks the rest."""
    if not isinstance(entry, dict):
        raise ScheduleError(f"{where}: a mapping is allowed, not {entry!r}")
    if any(not isinstance(name, str) for name in entry):
        raise ScheduleError(f"{where}: keys must be strings")
    has_worker, has_command = entry.get("worker") is not None, entry.get("command") is not None
    if has_worker == has_command:
        raise ScheduleError(f"{where}: exactly one of 'worker' or 'command' is allowed (found {sorted(entry)})")
    if has_worker and (not isinstance(entry["worker"], str) or not entry["worker"]):
        raise ScheduleError(f"{where}: worker: a registered worker name is allowed, not {entry['worker']!r}")
    if not any(entry.get(name) is not None for name in SCHEDULE_FIELDS):
        raise ScheduleError(f"{where}: at least one schedule field is required: {', '.join(SCHEDULE_FIELDS)}")
    if entry.get("every_s") is not None:
        _every_alone(entry, where)


def _every_alone(entry: Mapping[str, Any], where: str) -> float:
    """``every_s`` as a number of seconds > 0, with no cron field beside it; else ScheduleError."""
    others = [name for name in (*CRON_FIELDS, "crontab") if entry.get(name) is not None]
    if others:
        raise _fail(where, "every_s", f"every_s or cron fields are allowed, not both (found {', '.join(others)})")
    every = entry["every_s"]
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every < 10**9:
        raise _fail(where, "every_s", f"{every!r}: a number of seconds > 0 is allowed")
    return float(every)


def _fail(where: str, key: str, problem: str) -> ScheduleError:
    return ScheduleError(f"{where}: {key}: {problem}")


def _crontab_weekdays(expr: str) -> str:
    """Translate a crontab weekday field (0/7 = Sunday) into APScheduler names (0 = Monday there)."""
    days: set[int] = set()
    for part in expr.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in {part!r}")
        if body == "*":
            first, last = 0, 6
        else:
            ends = [_DOW.index(x) if x in _DOW else int(x) for x in body.split("-", 1)]
            if any(not 0 <= x <= 7 for x in ends):
                raise ValueError(f"weekday out of range in {part!r}")
            first, last = ends[0], ends[-1]
            if first == 7 and last == 7:
                first = last = 0
            if first > last:
                raise ValueError(f"range {body!r} runs backwards")
            if step is not None and len(ends) == 1:
                last = 7
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return "*" if len(days) == 7 else ",".join(_DOW[d] for d in (1, 2, 3, 4, 5, 6, 0) if d in days)


def _parse_date(value: object, tz: ZoneInfo | timezone) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise TypeError(type(value).__name__)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def _entry_label(entry: Mapping[str, Any]) -> str:
    worker, command = entry.get("worker"), entry.get("command")
    if worker is not None and command is not None:
        return f"worker {worker!r} and command {command!r}"
    if worker is not None:
        return f"worker {worker!r}"
    if command is not None:
        return f"command {command!r}"
    return "no worker or command"


def _cron_trigger(**fields: Any) -> CronTrigger:
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - only where entries are validated

    return CronTrigger(**fields)


def _entry_worker(
    entry: Mapping[str, Any], where: str, known_workers: Collection[str] | None, canonical: dict[str, Any]
) -> tuple[str, tuple[str, ...] | None]:
    """(worker, argv of a command entry or None)."""
    if ("worker" in entry) == ("command" in entry):
        raise _fail(where, "worker/command", "exactly one of 'worker' (a registered worker) or 'command' is allowed")
    if "worker" in entry:
        worker = entry["worker"]
        if not isinstance(worker, str) or not worker:
            raise _fail(where, "worker", "a registered worker name (a non-empty string) is allowed")
        if known_workers is not None and worker not in known_workers:
            known = ", ".join(sorted(known_workers))
            raise _fail(where, "worker", f"unknown worker {worker!r}; registered workers: {known}")
        canonical["worker"] = worker
        return worker, None
    raw = entry["command"]
    try:
        argv = shlex.split(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise _fail(where, "command", f"cannot split {raw!r}: {exc}") from None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise _fail(where, "command", "a non-empty command line (string) or list of non-empty strings is allowed")
    canonical["command"] = argv
    return COMMAND_WORKER, tuple(argv)


def _entry_timezone(tz_name: object, where: str) -> ZoneInfo | timezone:
    try:
        if not isinstance(tz_name, str):
            raise ValueError(tz_name)
        return UTC if tz_name == "UTC" else ZoneInfo(tz_name)
    except (ValueError, ZoneInfoNotFoundError):
        allowed = "an IANA name such as 'UTC' or 'Europe/Paris' is allowed"
        raise _fail(where, "timezone", f"unknown time zone {tz_name!r}; {allowed}") from None


def _entry_fields(entry: Mapping[str, Any], where: str, canonical: dict[str, Any]) -> dict[str, Any]:
    """The cron fields of the entry (a ``crontab`` translated), each checked."""
    fields = {k: entry[k] for k in CRON_FIELDS if k in entry}
    if "crontab" in entry:
        if fields:
            found = ", ".join(fields)
            raise _fail(where, "crontab", f"either crontab or cron fields are allowed, not both (found {found})")
        crontab = entry["crontab"]
        parts = crontab.split() if isinstance(crontab, str) else []
        if len(parts) != 5:
            raise _fail(where, "crontab", f"{crontab!r}: five fields 'minute hour day month day_of_week' are allowed")
        try:
            parts[4] = _crontab_weekdays(parts[4])
        except ValueError as exc:
            allowed = "0-7 (0 and 7 = Sunday) or sun-sat allowed"
            raise _fail(where, "crontab", f"{crontab!r}: day of week: {exc}; {allowed}") from None
        fields = dict(zip(("minute", "hour", "day", "month", "day_of_week"), parts, strict=True))
        canonical["crontab"] = " ".join(crontab.split())
    elif not fields:
        raise _fail(where, "schedule", f"at least one cron field ({', '.join(CRON_FIELDS)}) or 'crontab' is needed")
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _fail(where, key, f"{value!r}: an integer or a cron expression string is allowed")
        try:
            _cron_trigger(**{key: value}, timezone=UTC)
        except ValueError as exc:
            raise _fail(where, key, f"{value!r}: {exc}") from None
        if "crontab" not in entry:
            canonical[key] = str(value)
    return fields


def _entry_dates(
    entry: Mapping[str, Any], where: str, tz: ZoneInfo | timezone, canonical: dict[str, Any]
) -> dict[str, datetime]:
    dates: dict[str, datetime] = {}
    for key in ("start_date", "end_date"):
        if entry.get(key) is not None:
            try:
                dates[key] = _parse_date(entry[key], tz)
            except (TypeError, ValueError):
                allowed = "an ISO date or date-time ('2026-01-31T03:00') is allowed"
                raise _fail(where, key, f"{entry[key]!r}: {allowed}") from None
            canonical[key] = dates[key].isoformat()
    if len(dates) == 2 and dates["end_date"] < dates["start_date"]:
        raise _fail(where, "end_date", f"{entry['end_date']!r} is before start_date {entry['start_date']!r}")
    return dates


def _entry_payload(entry: Mapping[str, Any], where: str, command: tuple[str, ...] | None) -> dict[str, Any]:
    """What each fire submits (a command entry's argv under ``command``)."""
    payload = entry.get("payload") or {}
    try:
        encode_payload(payload)
    except AsyncTaskError as exc:
        raise _fail(where, "payload", exc.message) from None
    if command is not None:
        if "command" in payload:
            raise _fail(where, "payload", "a command entry's payload may not hold a 'command' key")
        payload = {"command": list(command), **payload}
    return dict(payload)


def _validate_entry(index: int, entry: object, source: str, known_workers: Collection[str] | None) -> ScheduleEntry:
    if not isinstance(entry, Mapping):
        raise ScheduleError(f"{source}[{index}]: each entry must be a mapping, not {type(entry).__name__}")
    entry = {key: value for key, value in entry.items() if value is not None}  # null is absent
    where = f"{source}[{index}] ({_entry_label(entry)})"
    unknown = sorted(str(k) for k in entry if k not in ALLOWED_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key; allowed: {', '.join(ALLOWED_KEYS)}")
    canonical: dict[str, Any] = {}
    worker, command = _entry_worker(entry, where, known_workers, canonical)
    tz_name = entry.get("timezone", "UTC")
    tz = _entry_timezone(tz_name, where)
    every = _every_alone(entry, where) if "every_s" in entry else None
    fields = _entry_fields(entry, where, canonical) if every is None else {}
    if every is not None:
        canonical["every_s"] = every
    dates = _entry_dates(entry, where, tz, canonical)
    misfire = entry.get("misfire", "skip")
    if misfire not in MISFIRE_MODES:
        raise _fail(where, "misfire", f"{misfire!r}: one of {', '.join(MISFIRE_MODES)} is allowed")
    payload = _entry_payload(entry, where, command)
    queue = entry.get("queue")
    try:
        validate_queue_name(queue if queue is not None else scheduled_queue_name(worker))
    except QueueNameError as exc:
        raise _fail(where, "queue" if queue is not None else "worker", exc.message) from None
    meta = entry.get("meta") or {}
    if not isinstance(meta, dict):
        raise _fail(where, "meta", f"{meta!r}: a mapping is allowed")
    canonical.update(payload=entry.get("payload") or {}, queue=queue, timezone=tz_name, misfire=misfire)
    if meta:
        canonical["meta"] = meta
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    start, end = dates.get("start_date"), dates.get("end_date")
    trigger: CronTrigger | EveryTrigger
    if every is not None:
        trigger = EveryTrigger(every, start, end)
    else:
        trigger = _cron_trigger(**fields, start_date=start, end_date=end, timezone=tz)
    schedule_id = hashlib.sha256(text.encode()).hexdigest()[:16]
    return ScheduleEntry(
        index, schedule_id, worker, command, payload, queue, trigger, tz_name, misfire, text, dict(meta), source
    )


def validate_entries(
    entries: object, source: str = DEFAULT_SOURCE, *, known_workers: Collection[str] | None = None
) -> list[ScheduleEntry]:
    """Validate ``entries`` (a list of mappings; None is empty) into :class:`ScheduleEntry` objects.

    Raises :class:`ScheduleError` with one line naming ``source[index]``, the entry's worker or
    command, the field and what is allowed.  Worker names are checked against ``known_workers``
    only when it is given (the ``command`` worker is always known).  Identical entries get distinct
    ids (a ``-2``, ``-3``... suffix), so each still fires.
    """
    if entries is None:
        return []
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ScheduleError(f"{source}: a list of entries is allowed, not {type(entries).__name__}")
    known = None if known_workers is None else {*known_workers, COMMAND_WORKER}
    result: list[ScheduleEntry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        entry = _validate_entry(index, raw, source, known)
        seen[entry.schedule_id] = count = seen.get(entry.schedule_id, 0) + 1
        if count > 1:
            logger.warning("%s[%d] repeats an earlier entry; it fires separately", source, index)
            entry = replace(entry, schedule_id=f"{entry.schedule_id}-{count}")
        result.append(entry)
    return result


def scheduled_queues(entries: Sequence[ScheduleEntry], worker_queues: Mapping[str, str]) -> dict[str, str]:
    """``{queue: worker}`` for the queues fires go to that ``worker_queues`` does not configure.

    The supervisor runs a child for each of these (``scheduled_<worker>`` and explicit ``queue``s),
    with or without ``--scheduler``, so a fire runs wherever a supervisor runs.
    """
    configured = set(worker_queues.values())
    result: dict[str, str] = {}
    for entry in entries:
        queue = entry.queue_for(worker_queues)
        if queue not in configured:
            result.setdefault(queue, entry.worker)
    return result
