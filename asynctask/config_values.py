"""The checks of each setting's value, for :mod:`asynctask.config` (which merges the layers).

Each checker takes the value as written and its source (a file, ``--set``, the environment) and
returns the value to keep, or raises :class:`ConfigurationError` naming the source, the key and what
is allowed.  :func:`workers` and :func:`scheduled` check every entry and append each bad one's error
to ``errors`` instead of stopping at the first, so one run reports every mistake of a file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from asynctask.cron import check_entry_shape
from asynctask.errors import ConfigurationError, QueueNameError, ScheduleError
from asynctask.message import validate_queue_name
from asynctask.workers.base import MAX_CONCURRENCY

__all__ = ["WORKER_KEYS", "WorkerEntry", "did_you_mean", "flag", "scalar", "scheduled", "str_list", "workers"]

#: The longest ``asynctask_heartbeat_s`` (seconds): a supervisor killed is forgotten within 2.5 times it.
MAX_HEARTBEAT_S = 3600

#: The keys of one ``asynctask_workers`` entry written as a mapping.
WORKER_KEYS = ("worker", "processes", "concurrency", "rate_max_calls", "rate_period", "max_crashes")


@dataclass(frozen=True)
class WorkerEntry:
    """One configured queue: the worker that consumes it and how."""

    queue: str
    worker: str
    processes: int = 1
    rate_max_calls: int | None = None
    rate_period: float = 1.0
    source: str = ""
    #: deaths of its child a task may cause before quarantine (None: the worker class's own)
    max_crashes: int | None = None
    #: tasks each of its children runs at once (None: the worker class's own ``concurrency``)
    concurrency: int | None = None


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name nearest to ``name``, or ``""``."""
    near = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _int(value: object, where: str, minimum: int, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if nullable else ""
        raise ConfigurationError(f"{where}: {value!r} is not allowed; an integer >= {minimum}{extra} is allowed")
    return value


def _positive_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{where}: {value!r} is not allowed; a number > 0 is allowed")
    return float(value)


def _seconds(name: str, value: Any, source: str) -> float:
    """A duration in seconds > 0; ``asynctask_heartbeat_s`` at most :data:`MAX_HEARTBEAT_S`, and
    written as text in the environment."""
    where = f"{source}: {name} (seconds)"
    if name != "asynctask_heartbeat_s":
        return _positive_number(value, where)
    if isinstance(value, str) and source.startswith("environment"):
        try:
            value = float(value)
        except ValueError:
            pass
    seconds = _positive_number(value, where)
    if seconds > MAX_HEARTBEAT_S:
        raise ConfigurationError(f"{where}: {value!r} is not allowed; a number > 0 and <= {MAX_HEARTBEAT_S} is allowed")
    return seconds


def scalar(name: str, value: Any, source: str) -> Any:
    """A setting that is replaced as a whole (the transport URL, intervals, limits)."""
    where = f"{source}: {name}"
    if name in ("asynctask_transport", "asynctask_state_store"):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(f"{where}: a transport URL string is allowed, not {value!r}")
        return value or None
    if name == "asynctask_eager":
        return flag(value, where)
    if name == "asynctask_middleware":
        return str_list(value, source, name, "dotted class path")
    if name in ("asynctask_workers_poll_interval", "asynctask_workers_check_child_interval"):
        return _int(value, f"{where} (milliseconds)", 1)
    if name in ("asynctask_shutdown_timeout", "asynctask_heartbeat_s"):
        return _seconds(name, value, source)
    return _int(value, where, 1, nullable=True)


def flag(value: Any, where: str) -> bool:
    """A yes/no setting: true/false (YAML), or 1/0, yes/no, on/off, true/false as text (environment)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{where}: {value!r} is not allowed; true or false (1 or 0) is allowed")


def str_list(value: Any, source: str, name: str, what: str = "module name") -> list[str]:
    """A dotted name or a list of them (``asynctask_require``: modules; ``asynctask_middleware``:
    classes; ``what`` names one in the message)."""
    if isinstance(value, str):
        value = [value]
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigurationError(f"{source}: {name}: a {what} or a list of {what}s is allowed, not {value!r}")
    return list(value)


def workers(value: Any, source: str, errors: list[ConfigurationError]) -> dict[str, WorkerEntry | None]:
    """``asynctask_workers``: queue -> entry (None disables the queue); bad entries go to ``errors``."""
    key = "asynctask_workers"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source}: {key}: a mapping of queue names to worker names is allowed, not {type(value).__name__}"
        )
    result: dict[str, WorkerEntry | None] = {}
    for queue, spec in value.items():
        try:
            result[queue] = _worker_entry(queue, spec, source)
        except ConfigurationError as exc:
            errors.append(exc)
    return result


def _worker_entry(queue: Any, spec: Any, source: str) -> WorkerEntry | None:
    key = "asynctask_workers"
    where = f"{source}: {key}: {queue!r}"
    try:
        validate_queue_name(queue)
    except QueueNameError as exc:
        raise QueueNameError(f"{source}: {key}: {exc}") from None
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"worker": spec}
    if not isinstance(spec, dict):
        raise ConfigurationError(
            f"{where}: a worker name, {{{', '.join(WORKER_KEYS)}}} or null is allowed, not {spec!r}"
        )
    unknown = sorted(set(spec) - set(WORKER_KEYS), key=str)
    if unknown:
        hint = did_you_mean(unknown[0], WORKER_KEYS)
        raise ConfigurationError(f"{where}: unknown key {unknown[0]!r}{hint}; allowed keys: {', '.join(WORKER_KEYS)}")
    worker = spec.get("worker")
    if not isinstance(worker, str) or not worker:
        raise ConfigurationError(f"{where}: worker: a registered worker name is required, not {worker!r}")
    processes = _int(spec.get("processes", 1), f"{where}: processes", 1)
    rate_max_calls = _int(spec.get("rate_max_calls"), f"{where}: rate_max_calls", 1, nullable=True)
    rate_period = _positive_number(spec.get("rate_period", 1.0), f"{where}: rate_period (seconds)")
    max_crashes = _int(spec.get("max_crashes"), f"{where}: max_crashes", 1, nullable=True)
    concurrency = _int(spec.get("concurrency"), f"{where}: concurrency", 1, nullable=True)
    if concurrency is not None and concurrency > MAX_CONCURRENCY:
        raise ConfigurationError(
            f"{where}: concurrency: {concurrency!r} is not allowed; an integer from 1 to {MAX_CONCURRENCY} is allowed"
        )
    assert processes is not None
    return WorkerEntry(queue, worker, processes, rate_max_calls, rate_period, source, max_crashes, concurrency)


def scheduled(
    value: Any, source: str, offset: int, errors: list[ConfigurationError]
) -> list[tuple[str, dict[str, Any]]]:
    """``asynctask_scheduled_workers``: (where, entry) pairs, numbered from ``offset + 1``; bad
    entries go to ``errors``.  Only the shape is checked here (:func:`asynctask.cron.check_entry_shape`);
    :func:`asynctask.cron.validate_entries` checks the fields."""
    key = "asynctask_scheduled_workers"
    if value is None:
        return []
    if not isinstance(value, list):
        raise ScheduleError(f"{source}: {key}: a list of entries is allowed, not {type(value).__name__}")
    entries = []
    for index, entry in enumerate(value, start=offset + 1):
        where = f"{source}: {key} entry #{index}"
        try:
            check_entry_shape(entry, where)
        except ConfigurationError as exc:
            errors.append(exc)
        else:
            entries.append((where, dict(entry)))
    return entries
