"""``@periodic_task`` and ``@cron_task``: a ``@task`` function fired on a schedule.

.. code-block:: python

    from asynctask import periodic_task, cron_task

    @periodic_task(every_s=25, queue="low")
    def refresh() -> None: ...

    @cron_task("0 5 * * tue", timezone="Europe/Paris", max_attempts=3)
    def weekly_report() -> None: ...

The function becomes a ``@task`` (it takes the ``@task`` options, and may still be called or
submitted), and its schedule is fired by any ``asynctask-workers --scheduler`` whose
``--require`` / ``asynctask_require`` imports its module, exactly like an entry of
``asynctask_scheduled_workers`` (same claims, same ``misfire``, ``start_date`` and ``end_date``):
each fire submits a call with no arguments.  ``every_s`` fires at ``start + k * every_s``
(:class:`~asynctask.fire_times.EveryTrigger`).  A bad schedule raises
:class:`~asynctask.errors.ScheduleError` when the decorator runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from asynctask.config_values import did_you_mean
from asynctask.cron import ScheduleEntry, validate_entries
from asynctask.errors import ConfigurationError
from asynctask.tasks import TaskFunction, task

__all__ = ["cron_task", "decorated_schedules", "periodic_task"]

#: function name -> (its module, its schedule)
_schedules: dict[str, tuple[str, ScheduleEntry]] = {}


def decorated_schedules(modules: Sequence[str] | None = None) -> list[ScheduleEntry]:
    """The schedules of the ``@periodic_task`` / ``@cron_task`` functions imported so far; with
    ``modules`` (``asynctask_require``), only those defined in one of them or in a module under one."""
    return [
        entry
        for module, entry in _schedules.values()
        if modules is None or any(module == name or module.startswith(name + ".") for name in modules)
    ]


#: the options that belong to the schedule, not to the ``@task``; those of the ``@task``
SCHEDULE_OPTIONS = ("start_date", "end_date", "misfire")
TASK_OPTIONS = ("name", "max_attempts", "retry_delay_s", "timeout_s", "result_ttl_s", "max_crashes", "concurrency")


def _scheduled(
    schedule: dict[str, Any], label: str, queue: str, options: dict[str, Any]
) -> Callable[[Callable[..., Any]], TaskFunction[Any, Any]]:
    """The decorator: ``schedule`` holds the entry's schedule fields, ``options`` the schedule
    options (:data:`SCHEDULE_OPTIONS`) and the ``@task`` ones."""
    entry_options = {name: options.pop(name) for name in SCHEDULE_OPTIONS if name in options}
    unknown = sorted(set(options) - set(TASK_OPTIONS))
    if unknown:
        known = (*SCHEDULE_OPTIONS, *TASK_OPTIONS)
        hint = did_you_mean(unknown[0], known)
        raise ConfigurationError(f"{label}: unknown option {unknown[0]!r}{hint}; allowed: {', '.join(known)}")

    def decorate(function: Callable[..., Any]) -> TaskFunction[Any, Any]:
        made: TaskFunction[Any, Any] = task(function, queue=queue, **options)
        entry = {
            "worker": "tasks",
            "queue": queue,
            "payload": {"args": [], "kwargs": {}},
            "meta": {"fn": made.name},
            **entry_options,
            **schedule,
        }
        (validated,) = validate_entries([entry], f"{label}({made.name})")
        _schedules[made.name] = (function.__module__, validated)
        return made

    return decorate


def periodic_task(
    every_s: float, *, queue: str = "default", **options: Any
) -> Callable[[Callable[..., Any]], TaskFunction[Any, Any]]:
    """Fire the function every ``every_s`` seconds (see the module docstring).

    ``options``: ``start_date``, ``end_date`` (a date, datetime or ISO text), ``misfire`` (``skip``
    or ``once``), and the ``@task`` options (``max_attempts``, ``timeout_s``, ``result_ttl_s``...).
    """
    return _scheduled({"every_s": every_s}, "@periodic_task", queue, dict(options))


def cron_task(
    crontab: str, *, timezone: str = "UTC", queue: str = "default", **options: Any
) -> Callable[[Callable[..., Any]], TaskFunction[Any, Any]]:
    """Fire the function on a crontab (``"minute hour day month day_of_week"``, 0 and 7 = Sunday)
    in ``timezone``; ``options`` as :func:`periodic_task`'s."""
    return _scheduled({"crontab": crontab, "timezone": timezone}, "@cron_task", queue, dict(options))
