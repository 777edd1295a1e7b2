"""Configuration: YAML files, ``--set`` overrides and the environment merged into one ``Settings``.

Order (later wins): the YAML files in the order given (with none given: ``$ASYNCTASK_CONFIG``, else
``./asynctask.yaml`` when it exists), then each ``--set NAME=VALUE`` (the value parsed as YAML), then
the environment (``ASYNCTASK_TRANSPORT``).  Merging follows rex.asynctask:

* ``asynctask_workers`` maps are merged queue by queue; a queue set to ``null`` is disabled;
* ``asynctask_scheduled_workers`` lists are concatenated;
* ``asynctask_require`` lists are concatenated (duplicates dropped);
* every other setting is replaced by the later value.

Settings (rex.asynctask's names):

==========================================  =========================================================
``asynctask_transport``                     transport URL (default: ``$ASYNCTASK_TRANSPORT``, else the
                                            embedded filesystem store under ``$ASYNCTASK_HOME``)
``asynctask_workers``                       ``queue: worker`` or ``queue: {worker, processes,
                                            rate_max_calls, rate_period}`` or ``queue: null``
``asynctask_scheduled_workers``             cron entries (checked here for shape; the scheduler runs them)
``asynctask_require``                       modules to import so their workers register
``asynctask_workers_poll_interval``         ms a worker blocks on an empty queue per fetch (500)
``asynctask_workers_check_child_interval``  ms between the supervisor's child checks (1000)
``asynctask_shutdown_timeout``              seconds running tasks get to finish at shutdown (30)
``asynctask_max_tasks_per_child``           recycle a child after this many tasks (null: never)
``asynctask_max_memory_mb``                 recycle a child above this resident memory (null: never)
==========================================  =========================================================

Every validation error is a :class:`ConfigurationError` whose one-line message names the source
(file, ``--set`` or environment), the key and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from asynctask.errors import ConfigurationError, QueueNameError, ScheduleError, UnknownWorkerError
from asynctask.task import validate_queue_name
from asynctask.transports import default_home
from asynctask.transports.base import mask_url

__all__ = [
    "COMMAND_WORKER",
    "SCHEDULE_FIELDS",
    "SETTING_NAMES",
    "Settings",
    "WorkerEntry",
    "check_worker_names",
    "default_config_files",
    "load_settings",
    "parse_set_option",
    "scheduled_queue_name",
]

#: APScheduler cron fields (plus ``crontab``); a scheduled entry needs at least one.
SCHEDULE_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second", "crontab")
#: The worker name that runs ``command`` entries (registered by :mod:`asynctask.scheduler`).
COMMAND_WORKER = "command"

_DEFAULTS: dict[str, Any] = {
    "asynctask_transport": None,
    "asynctask_workers": {},
    "asynctask_scheduled_workers": [],
    "asynctask_require": [],
    "asynctask_workers_poll_interval": 500,
    "asynctask_workers_check_child_interval": 1000,
    "asynctask_shutdown_timeout": 30,
    "asynctask_max_tasks_per_child": None,
    "asynctask_max_memory_mb": None,
}
SETTING_NAMES = tuple(_DEFAULTS)
_WORKER_KEYS = ("worker", "processes", "rate_max_calls", "rate_period")


def scheduled_queue_name(worker: str) -> str:
    """The queue a scheduled worker that no queue is configured for runs on: ``scheduled_<worker>``.

    The worker name is folded into the queue-name rule (lowercase; other characters become single
    underscores), so any registered name gives a valid queue.
    """
    folded = re.sub(r"[^a-z0-9]+", "_", worker.lower()).strip("_")
    return validate_queue_name(f"scheduled_{folded or 'worker'}"[:100].rstrip("_"))


@dataclass(frozen=True)
class WorkerEntry:
    """One configured queue: the worker that consumes it and how."""

    queue: str
    worker: str
    processes: int = 1
    rate_max_calls: int | None = None
    rate_period: float = 1.0
    source: str = ""


@dataclass(frozen=True)
class Settings:
    """The validated, merged configuration.  Build it with :func:`load_settings`."""

    transport: str | None = None
    workers: tuple[WorkerEntry, ...] = ()
    #: entries as written (dicts), checked for shape only; the scheduler validates the rest
    scheduled_workers: tuple[dict[str, Any], ...] = ()
    #: for each scheduled entry, where it was written ("FILE: asynctask_scheduled_workers entry #N")
    scheduled_sources: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    poll_interval_ms: int = 500
    check_child_interval_ms: int = 1000
    shutdown_timeout_s: float = 30.0
    max_tasks_per_child: int | None = None
    max_memory_mb: int | None = None
    #: the files read, in order
    files: tuple[str, ...] = ()
    #: setting name -> where its value came from (a file, ``--set``, ``environment``, ``default``)
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def transport_url(self) -> str:
        """The URL to use: the configured one (environment included), else the embedded default."""
        return self.transport or "filesys:" + str(default_home())

    @property
    def worker_queues(self) -> dict[str, str]:
        """worker name -> the first queue it is configured on."""
        result: dict[str, str] = {}
        for entry in self.workers:
            result.setdefault(entry.worker, entry.queue)
        return result

    def scheduled_only_workers(self) -> list[str]:
        """Workers named by scheduled entries but configured on no queue (each runs on its
        :func:`scheduled_queue_name` queue), in entry order without repeats."""
        configured = self.worker_queues
        found: list[str] = []
        for entry in self.scheduled_workers:
            name = entry.get("worker") or COMMAND_WORKER
            if name not in configured and name not in found:
                found.append(name)
        return found

    def describe(self) -> dict[str, Any]:
        """Every setting with its value (passwords masked) and origin, for ``asynctask doctor``."""
        values: dict[str, Any] = {
            "asynctask_transport": mask_url(self.transport_url),
            "asynctask_workers": {
                e.queue: {
                    "worker": e.worker,
                    "processes": e.processes,
                    "rate_max_calls": e.rate_max_calls,
                    "rate_period": e.rate_period,
                }
                for e in self.workers
            },
            "asynctask_scheduled_workers": [dict(e) for e in self.scheduled_workers],
            "asynctask_require": list(self.require),
            "asynctask_workers_poll_interval": self.poll_interval_ms,
            "asynctask_workers_check_child_interval": self.check_child_interval_ms,
            "asynctask_shutdown_timeout": self.shutdown_timeout_s,
            "asynctask_max_tasks_per_child": self.max_tasks_per_child,
            "asynctask_max_memory_mb": self.max_memory_mb,
        }
        origin = dict(self.origins)
        if not self.transport:
            origin["asynctask_transport"] = "the embedded default"
        return {
            name: {"value": value, "origin": origin.get(name, "default")} for name, value in values.items()
        }


# -- loading ----------------------------------------------------------------------------------


def default_config_files() -> list[str]:
    """The files read when none is given: ``$ASYNCTASK_CONFIG``, else ``./asynctask.yaml`` if present."""
    named = os.environ.get("ASYNCTASK_CONFIG")
    if named:
        return [named]
    return ["asynctask.yaml"] if os.path.exists("asynctask.yaml") else []


def parse_set_option(text: str) -> tuple[str, Any]:
    """Split ``NAME=VALUE`` (the value parsed as YAML).  Raises ConfigurationError when malformed."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigurationError(f"--set {text!r}: NAME=VALUE is allowed (the value is YAML)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"--set {name}: the value is not valid YAML: {_one_line(exc)}") from None
    return name, value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: YAML syntax error: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: a mapping of setting names to values is allowed, not {type(data).__name__}")
    return data


def _check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or name not in _DEFAULTS:
        near = difflib.get_close_matches(str(name), SETTING_NAMES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigurationError(
            f"{source}: unknown setting {name!r}{hint}; known settings: {', '.join(SETTING_NAMES)}"
        )
    return name


def load_settings(
    config_files: Sequence[str] | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
    *,
    environ: Mapping[str, str] | None = None,
    require: Iterable[str] = (),
) -> Settings:
    """Merge and validate configuration (see the module docstring for the order).

    ``config_files`` None means :func:`default_config_files`; ``overrides`` are ``(name, value)``
    pairs from ``--set`` (see :func:`parse_set_option`); ``require`` adds modules (``--require``).
    """
    env = os.environ if environ is None else environ
    files = default_config_files() if config_files is None else list(config_files)
    layers: list[tuple[str, dict[str, Any]]] = [(path, _read_file(path)) for path in files]
    for name, value in overrides:
        layers.append(("--set", {name: value}))
    if env.get("ASYNCTASK_TRANSPORT"):
        layers.append(("environment ASYNCTASK_TRANSPORT", {"asynctask_transport": env["ASYNCTASK_TRANSPORT"]}))

    workers: dict[str, WorkerEntry | None] = {}
    scheduled: list[tuple[str, dict[str, Any]]] = []
    requires: list[str] = []
    scalars: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for source, data in layers:
        for raw_name, value in data.items():
            name = _check_name(raw_name, source)
            origins[name] = source if name not in origins or origins[name] == source else origins[name] + ", " + source
            if name == "asynctask_workers":
                workers.update(_workers(value, source))
            elif name == "asynctask_scheduled_workers":
                scheduled.extend(_scheduled(value, source, len(scheduled)))
            elif name == "asynctask_require":
                requires.extend(_str_list(value, source, name))
            else:
                scalars[name] = _scalar(name, value, source)
                origins[name] = source
    for module in require:
        requires.append(module)
    merged = {**_DEFAULTS, **scalars}
    return Settings(
        transport=merged["asynctask_transport"],
        workers=tuple(entry for entry in workers.values() if entry is not None),
        scheduled_workers=tuple(entry for _, entry in scheduled),
        scheduled_sources=tuple(where for where, _ in scheduled),
        require=tuple(dict.fromkeys(requires)),
        poll_interval_ms=merged["asynctask_workers_poll_interval"],
        check_child_interval_ms=merged["asynctask_workers_check_child_interval"],
        shutdown_timeout_s=float(merged["asynctask_shutdown_timeout"]),
        max_tasks_per_child=merged["asynctask_max_tasks_per_child"],
        max_memory_mb=merged["asynctask_max_memory_mb"],
        files=tuple(files),
        origins=origins,
    )


# -- validators -------------------------------------------------------------------------------


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


def _scalar(name: str, value: Any, source: str) -> Any:
    where = f"{source}: {name}"
    if name == "asynctask_transport":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigurationError(f"{where}: a transport URL string is allowed, not {value!r}")
        return value or None
    if name in ("asynctask_workers_poll_interval", "asynctask_workers_check_child_interval"):
        return _int(value, f"{where} (milliseconds)", 1)
    if name == "asynctask_shutdown_timeout":
        return _positive_number(value, f"{where} (seconds)")
    return _int(value, where, 1, nullable=True)


def _str_list(value: Any, source: str, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigurationError(f"{source}: {name}: a module name or a list of module names is allowed, not {value!r}")
    return list(value)


def _workers(value: Any, source: str) -> dict[str, WorkerEntry | None]:
    key = "asynctask_workers"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source}: {key}: a mapping of queue names to worker names is allowed, not {type(value).__name__}"
        )
    result: dict[str, WorkerEntry | None] = {}
    for queue, raw_spec in value.items():
        spec = raw_spec
        where = f"{source}: {key}: {queue!r}"
        try:
            validate_queue_name(queue)
        except QueueNameError as exc:
            raise QueueNameError(f"{source}: {key}: {exc}") from None
        if spec is None:
            result[queue] = None
            continue
        if isinstance(spec, str):
            spec = {"worker": spec}
        if not isinstance(spec, dict):
            raise ConfigurationError(
                f"{where}: a worker name, {{worker, processes, rate_max_calls, rate_period}} or null is allowed,"
                f" not {spec!r}"
            )
        unknown = sorted(set(spec) - set(_WORKER_KEYS), key=str)
        if unknown:
            raise ConfigurationError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(_WORKER_KEYS)}")
        worker = spec.get("worker")
        if not isinstance(worker, str) or not worker:
            raise ConfigurationError(f"{where}: worker: a registered worker name is required, not {worker!r}")
        processes = _int(spec.get("processes", 1), f"{where}: processes", 1)
        rate_max_calls = _int(spec.get("rate_max_calls"), f"{where}: rate_max_calls", 1, nullable=True)
        rate_period = _positive_number(spec.get("rate_period", 1.0), f"{where}: rate_period (seconds)")
        assert processes is not None
        result[queue] = WorkerEntry(queue, worker, processes, rate_max_calls, rate_period, source)
    return result


def _scheduled(value: Any, source: str, offset: int) -> list[tuple[str, dict[str, Any]]]:
    key = "asynctask_scheduled_workers"
    if value is None:
        return []
    if not isinstance(value, list):
        raise ScheduleError(f"{source}: {key}: a list of entries is allowed, not {type(value).__name__}")
    entries = []
    for index, entry in enumerate(value, start=offset + 1):
        where = f"{source}: {key} entry #{index}"
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
        entries.append((where, dict(entry)))
    return entries


def check_worker_names(settings: Settings, registered: Iterable[str]) -> None:
    """Raise UnknownWorkerError (naming the source, the key and the registered names) when a
    configured or scheduled worker is not registered.  Call it after importing ``require``."""
    known = sorted(registered)
    listing = ", ".join(known) if known else "none (is asynctask_require / --require set?)"
    for entry in settings.workers:
        if entry.worker not in known:
            raise UnknownWorkerError(
                f"{entry.source}: asynctask_workers: {entry.queue!r}: unknown worker {entry.worker!r};"
                f" registered workers: {listing}"
            )
    for sched, where in zip(settings.scheduled_workers, settings.scheduled_sources, strict=False):
        name = sched.get("worker")
        if name is not None and name not in known:
            raise UnknownWorkerError(f"{where}: unknown worker {name!r}; registered workers: {listing}")
