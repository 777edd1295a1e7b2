"""``asynctask schedules``: every schedule, from the configuration and from the decorators.

Lists the entries of ``asynctask_scheduled_workers`` and the ``@periodic_task`` / ``@cron_task``
functions of the required modules (``asynctask_require`` / ``--require``), with where each was
defined, what it fires and when (the trigger, the next fire time) and, when the state store knows
it, its last fire and the task it submitted (recorded by the schedulers).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from asynctask.config import Settings
from asynctask.cron import ScheduleEntry, validate_entries
from asynctask.errors import AsyncTaskError
from asynctask.importing import import_modules
from asynctask.scheduler import LAST_FIRE_KEY
from asynctask.schedules import decorated_schedules
from asynctask.transports.base import Transport
from asynctask.workers.base import registered_workers

from .admin_output import CommandError, print_json
from .admin_settings import AdminSettings
from .exit_codes import EXIT_OK, EXIT_USAGE

__all__ = ["cmd_schedules", "schedule_entries", "schedule_rows"]


def _last_fire(transport: Transport, queue: str, entry: ScheduleEntry) -> dict[str, Any] | None:
    try:
        text = transport.state_get(queue, LAST_FIRE_KEY + entry.schedule_id)
    except AsyncTaskError:  # a transport that keeps no state: nothing recorded
        return None
    return json.loads(text) if text else None


def schedule_entries(settings: Settings) -> list[ScheduleEntry]:
    """The configured entries and the decorated schedules of the required modules (imported here)."""
    import_modules(list(settings.require))
    entries = validate_entries(list(settings.scheduled_workers), known_workers=registered_workers())
    return entries + decorated_schedules(settings.require)


def schedule_rows(
    settings: Settings, transport: Transport, entries: list[ScheduleEntry] | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready row per schedule (``asynctask schedules --json`` and the dashboard): where it
    was defined, what it fires and where, the trigger, the next fire and the last fire recorded in
    the state store.  ``entries``: as :func:`schedule_entries` gives them (loaded when None)."""
    now = datetime.now(UTC)
    rows = []
    for entry in schedule_entries(settings) if entries is None else entries:
        queue = entry.queue_for(settings.worker_queues)
        upcoming = entry.trigger.get_next_fire_time(None, now)
        last = _last_fire(transport, queue, entry)
        rows.append(
            {
                "defined_in": f"{entry.source}[{entry.index}]"
                if entry.source.startswith("asynctask_")
                else entry.source,
                "fires": entry.label if not entry.meta else f"function {entry.meta.get('fn')!r}",
                "when": str(entry.trigger),
                "timezone": entry.timezone,
                "queue": queue,
                "next_fire": upcoming.astimezone(UTC).isoformat() if upcoming else None,
                "last_fire": last.get("fire_time") if last else None,
                "last_task": last.get("task_id") if last else None,
                "schedule_id": entry.schedule_id,
            }
        )
    return rows


def cmd_schedules(resolved: AdminSettings, transport: Transport, args: argparse.Namespace) -> int:
    settings = resolved.settings
    if settings is None:
        raise CommandError("schedules: the configuration does not load", EXIT_USAGE)
    rows = schedule_rows(settings, transport)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no schedules (asynctask_scheduled_workers is empty and no required module defines one)")
    out = sys.stdout
    for row in rows:
        out.write(f"{row['defined_in']}: {row['fires']} -> queue {row['queue']}\n")
        out.write(f"    when:  {row['when']} ({row['timezone']})\n")
        out.write(f"    next:  {row['next_fire'] or 'never again'}\n")
        out.write(
            f"    last:  {row['last_fire'] or '-'}" + (f" (task {row['last_task']})" if row["last_task"] else "") + "\n"
        )
    return EXIT_OK
