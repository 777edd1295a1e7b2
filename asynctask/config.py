"""Configuration: YAML files, ``--set`` overrides and the environment merged into one ``Settings``.

Order (later wins): the YAML files in the order given (with none given: ``$ASYNCTASK_CONFIG``, else
``./asynctask.yaml`` when it exists), then each ``--set NAME=VALUE`` (the value parsed as YAML), then
the environment (``ASYNCTASK_TRANSPORT``).  Merging follows rex.asynctask:

* across files, ``asynctask_workers`` maps are merged queue by queue (a queue set to ``null`` is
  disabled), ``asynctask_scheduled_workers`` and ``asynctask_require`` lists are concatenated
  (duplicate modules dropped);
* ``--set NAME=VALUE`` replaces the value: ``--set asynctask_workers='{emails: send_email}'`` runs
  that worker and no other (``--require`` modules are still added);
* every other setting is replaced by the later value.

Every error of one file is reported at once (``load_settings`` raises one error naming them all).

Settings (rex.asynctask's names):

==========================================  =========================================================
``asynctask_transport``                     transport URL (default: ``$ASYNCTASK_TRANSPORT``, else the
                                            embedded filesystem store under ``$ASYNCTASK_HOME``)
``asynctask_workers``                       ``queue: worker`` or ``queue: {worker, processes,
                                            concurrency, rate_max_calls, rate_period,
                                            max_crashes}`` or ``queue: null``
``asynctask_scheduled_workers``             cron entries (:mod:`asynctask.cron` checks them)
``asynctask_require``                       modules to import so their workers register
``asynctask_workers_poll_interval``         ms a worker blocks on an empty queue per fetch (500)
``asynctask_workers_check_child_interval``  ms between the supervisor's child checks (1000)
``asynctask_shutdown_timeout``              seconds running tasks get to finish at shutdown (30)
``asynctask_max_tasks_per_child``           recycle a child after this many tasks (null: never)
``asynctask_max_memory_mb``                 recycle a child above this resident memory (null: never)
``asynctask_state_store``                   the transport URL that keeps task results, status and
                                            cancel marks (default: the transport itself; required
                                            for results on AMQP); ``$ASYNCTASK_STATE_STORE``
``asynctask_eager``                         ``true``: ``submit`` runs the task at once in the
                                            submitting process (tests); ``$ASYNCTASK_EAGER``
``asynctask_middleware``                    dotted paths of middleware classes, for workers and
                                            producers (:mod:`asynctask.middleware`)
``asynctask_heartbeat_s``                   seconds between two records of a supervisor in the
                                            worker registry (5; :mod:`asynctask.registry`);
                                            ``$ASYNCTASK_HEARTBEAT_S``
==========================================  =========================================================

Every validation error is a :class:`ConfigurationError` whose one-line message names the source
(file, ``--set`` or environment), the key and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asynctask import config_values as values
from asynctask.config_values import WorkerEntry, did_you_mean
from asynctask.cron import COMMAND_WORKER
from asynctask.errors import ConfigurationError, UnknownWorkerError
from asynctask.transports.base import mask_url

__all__ = [
    "SETTING_NAMES",
    "Settings",
    "WorkerEntry",
    "check_worker_names",
    "configured_transport",
    "default_config_files",
    "embedded_default_url",
    "load_settings",
    "parse_set_option",
    "transport_choice",
    "where_looked",
]

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
    "asynctask_state_store": None,
    "asynctask_eager": False,
    "asynctask_middleware": [],
    "asynctask_heartbeat_s": 5.0,
}
SETTING_NAMES = tuple(_DEFAULTS)
#: environment variables that override a setting of the files
_ENVIRONMENT = {
    "ASYNCTASK_TRANSPORT": "asynctask_transport",
    "ASYNCTASK_STATE_STORE": "asynctask_state_store",
    "ASYNCTASK_EAGER": "asynctask_eager",
    "ASYNCTASK_HEARTBEAT_S": "asynctask_heartbeat_s",
}
#: the settings whose values merge across files (maps queue by queue, lists by concatenation)
_MERGED = ("asynctask_workers", "asynctask_scheduled_workers", "asynctask_require")
#: the source name of ``--set`` layers: their values replace, never merge
SET_SOURCE = "--set"


@dataclass(frozen=True)
class Settings:
    """The validated, merged configuration.  Build it with :func:`load_settings`."""

    transport: str | None = None
    workers: tuple[WorkerEntry, ...] = ()
    #: entries as written (dicts), checked for shape only; :mod:`asynctask.cron` validates the rest
    scheduled_workers: tuple[dict[str, Any], ...] = ()
    #: for each scheduled entry, where it was written ("FILE: asynctask_scheduled_workers entry #N")
    scheduled_sources: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    poll_interval_ms: int = 500
    check_child_interval_ms: int = 1000
    shutdown_timeout_s: float = 30.0
    max_tasks_per_child: int | None = None
    max_memory_mb: int | None = None
    #: the transport that keeps results, status and cancel marks (None: the transport itself)
    state_store: str | None = None
    #: run submitted tasks at once in the submitting process (tests)
    eager: bool = False
    #: dotted paths of the middleware classes (:mod:`asynctask.middleware`)
    middleware: tuple[str, ...] = ()
    #: seconds between two heartbeats of a supervisor in the worker registry (:mod:`asynctask.registry`)
    heartbeat_s: float = 5.0
    #: the files read, in order
    files: tuple[str, ...] = ()
    #: setting name -> where its value came from (a file, ``--set``, ``environment``, ``default``)
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def transport_url(self) -> str:
        """The URL to use: the configured one (environment included), else the embedded default."""
        return self.transport or embedded_default_url()

    @property
    def worker_queues(self) -> dict[str, str]:
        """worker name -> the first queue it is configured on."""
        result: dict[str, str] = {}
        for entry in self.workers:
            result.setdefault(entry.worker, entry.queue)
        return result

    def scheduled_only_workers(self) -> list[str]:
        """Workers named by scheduled entries but configured on no queue (each runs on its
        :func:`~asynctask.cron.scheduled_queue_name` queue), in entry order without repeats."""
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
                    "concurrency": e.concurrency,
                    "rate_max_calls": e.rate_max_calls,
                    "rate_period": e.rate_period,
                    "max_crashes": e.max_crashes,
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
            "asynctask_state_store": mask_url(self.state_store) if self.state_store else None,
            "asynctask_eager": self.eager,
            "asynctask_middleware": list(self.middleware),
            "asynctask_heartbeat_s": self.heartbeat_s,
        }
        origin = dict(self.origins)
        if not self.transport:
            origin["asynctask_transport"] = "the embedded default"
        return {name: {"value": value, "origin": origin.get(name, "default")} for name, value in values.items()}


# -- loading ----------------------------------------------------------------------------------


def default_config_files(environ: Mapping[str, str] | None = None) -> list[str]:
    """The files read when none is given: ``$ASYNCTASK_CONFIG``, else ``./asynctask.yaml`` if present."""
    named = (os.environ if environ is None else environ).get("ASYNCTASK_CONFIG")
    if named:
        return [named]
    return ["asynctask.yaml"] if os.path.exists("asynctask.yaml") else []


def where_looked(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """Where the configuration was looked for, for a user who expected workers and got none."""
    env = os.environ if environ is None else environ
    places = list(settings.files)
    if not places:
        places = ["$ASYNCTASK_CONFIG (not set)", f"{os.path.abspath('asynctask.yaml')} (not found)"]
    elif env.get("ASYNCTASK_CONFIG") and places == [env["ASYNCTASK_CONFIG"]]:
        places = [f"{places[0]} (named by $ASYNCTASK_CONFIG)"]
    places.append(SET_SOURCE if SET_SOURCE in settings.origins.get("asynctask_workers", "") else "--set (none)")
    return "looked for asynctask_workers in " + ", ".join(places)


def configured_transport(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(url, file)``: the ``asynctask_transport`` of the default configuration files
    (:func:`default_config_files`), or None when none sets it.

    The whole file is checked as ``asynctask-workers`` checks it, so a misspelled setting raises
    :class:`ConfigurationError` (with "did you mean") instead of falling back to the default."""
    files = default_config_files(environ)
    if not files:
        return None
    settings = load_settings(files, environ={}, named_by_environment=os.environ if environ is None else environ)
    if settings.transport is None:
        return None
    return settings.transport, settings.origins.get("asynctask_transport", files[-1])


def default_home() -> Path:
    """Where the embedded default keeps its queues: ``$ASYNCTASK_HOME`` or ``~/.local/share/asynctask``."""
    home = os.environ.get("ASYNCTASK_HOME")
    return Path(home) if home else Path.home() / ".local" / "share" / "asynctask"


def embedded_default_url() -> str:
    """The URL used when nothing names one: the filesystem store under ``$ASYNCTASK_HOME`` (else
    ``~/.local/share/asynctask``; :func:`default_home`)."""
    return "filesys:" + str(default_home())


def transport_choice(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(url, source)`` of the transport to use when no URL is given (``get_transport()``):
    ``$ASYNCTASK_TRANSPORT``, else ``asynctask_transport`` of the default configuration files
    (:func:`configured_transport`, which checks the whole file), else :func:`embedded_default_url`.
    ``source`` names where the URL came from, for a log line."""
    env = os.environ if environ is None else environ
    if env.get("ASYNCTASK_TRANSPORT"):
        return env["ASYNCTASK_TRANSPORT"], "ASYNCTASK_TRANSPORT"
    return configured_transport(env) or (embedded_default_url(), "the embedded default")


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


def _read_file(path: str, named_by: str = "") -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: configuration file not found{named_by}") from None
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
        raise ConfigurationError(
            f"{source}: unknown setting {name!r}{did_you_mean(name, SETTING_NAMES)};"
            f" known settings: {', '.join(SETTING_NAMES)}"
        )
    return name


def _raise_all(errors: list[ConfigurationError]) -> None:
    """Raise the errors of one layer as one: the first's class when all share it, every message."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    kinds = {type(exc) for exc in errors}
    kind = kinds.pop() if len(kinds) == 1 else ConfigurationError
    raise kind("; ".join(exc.message for exc in errors))


class _Merge:
    """The layers merged so far (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerEntry | None] = {}
        self.scheduled: list[tuple[str, dict[str, Any]]] = []
        self.requires: list[str] = []
        self.scalars: dict[str, Any] = {}
        self.origins: dict[str, str] = {}

    def layer(self, source: str, data: Mapping[Any, Any]) -> None:
        """Merge one file (or one ``--set``); raises every error of it at once."""
        errors: list[ConfigurationError] = []
        for raw_name, value in data.items():
            try:
                name = _check_name(raw_name, source)
                self._setting(name, value, source, errors)
            except ConfigurationError as exc:
                errors.append(exc)
        _raise_all(errors)

    def _setting(self, name: str, value: Any, source: str, errors: list[ConfigurationError]) -> None:
        replace = source == SET_SOURCE or name not in _MERGED
        if name == "asynctask_workers":
            found = values.workers(value, source, errors)
            if replace:
                self.workers.clear()
            self.workers.update(found)
        elif name == "asynctask_scheduled_workers":
            if replace:
                self.scheduled.clear()
            self.scheduled.extend(values.scheduled(value, source, len(self.scheduled), errors))
        elif name == "asynctask_require":
            found_modules = values.str_list(value, source, name)
            if replace:
                self.requires.clear()
            self.requires.extend(found_modules)
        else:
            self.scalars[name] = values.scalar(name, value, source)
        previous = self.origins.get(name)
        self.origins[name] = source if replace or previous in (None, source) else f"{previous}, {source}"


def load_settings(
    config_files: Sequence[str] | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
    *,
    environ: Mapping[str, str] | None = None,
    require: Iterable[str] = (),
    named_by_environment: Mapping[str, str] | None = None,
) -> Settings:
    """Merge and validate configuration (see the module docstring for the order).

    ``config_files`` None means :func:`default_config_files` (of ``environ``); ``overrides`` are
    ``(name, value)`` pairs from ``--set`` (see :func:`parse_set_option`), each replacing the value
    of the files; ``require`` adds modules (``--require``).  Every error of the first file that has
    any is raised at once, as one :class:`ConfigurationError`.  ``named_by_environment``: the
    environment the files came from, for the "not found" message (default ``environ``).
    """
    env = os.environ if environ is None else environ
    files = default_config_files(env) if config_files is None else list(config_files)
    named_env = env if named_by_environment is None else named_by_environment
    named_by = " (named by $ASYNCTASK_CONFIG)" if files == [named_env.get("ASYNCTASK_CONFIG")] else ""
    merge = _Merge()
    for path in files:
        merge.layer(path, _read_file(path, named_by))
    for name, value in overrides:
        merge.layer(SET_SOURCE, {name: value})
    for variable, name in _ENVIRONMENT.items():
        if env.get(variable):
            merge.layer(f"environment {variable}", {name: env[variable]})
    requires = [*merge.requires, *require]
    merged = {**_DEFAULTS, **merge.scalars}
    return Settings(
        transport=merged["asynctask_transport"],
        workers=tuple(entry for entry in merge.workers.values() if entry is not None),
        scheduled_workers=tuple(entry for _, entry in merge.scheduled),
        scheduled_sources=tuple(where for where, _ in merge.scheduled),
        require=tuple(dict.fromkeys(requires)),
        poll_interval_ms=merged["asynctask_workers_poll_interval"],
        check_child_interval_ms=merged["asynctask_workers_check_child_interval"],
        shutdown_timeout_s=float(merged["asynctask_shutdown_timeout"]),
        max_tasks_per_child=merged["asynctask_max_tasks_per_child"],
        max_memory_mb=merged["asynctask_max_memory_mb"],
        state_store=merged["asynctask_state_store"],
        eager=merged["asynctask_eager"],
        middleware=tuple(merged["asynctask_middleware"]),
        heartbeat_s=float(merged["asynctask_heartbeat_s"]),
        files=tuple(files),
        origins=merge.origins,
    )


def check_worker_names(settings: Settings, registered: Iterable[str]) -> None:
    """Raise UnknownWorkerError when configured or scheduled workers are not registered: one line
    naming the source and key of each, the nearest registered name, then the registered names.
    Call it after importing ``require``."""
    known = sorted(registered)
    unknown = [
        f"{entry.source}: asynctask_workers: {entry.queue!r}: unknown worker {entry.worker!r}"
        f"{did_you_mean(entry.worker, known)}"
        for entry in settings.workers
        if entry.worker not in known
    ]
    for sched, where in zip(settings.scheduled_workers, settings.scheduled_sources, strict=False):
        name = sched.get("worker")
        if name is not None and name not in known:
            unknown.append(f"{where}: unknown worker {name!r}{did_you_mean(name, known)}")
    if unknown:
        listing = ", ".join(known) if known else "none (is asynctask_require / --require set?)"
        raise UnknownWorkerError(f"{'; '.join(unknown)}; registered workers: {listing}")
