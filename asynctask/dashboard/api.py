"""What the dashboard shows, as JSON-ready values: the same records as the admin CLI's ``--json``.

Each function takes the open transport and returns plain dicts and lists, built with the CLI's own
builders (:func:`~asynctask.cli.admin_commands.queue_dict`,
:func:`~asynctask.cli.admin_commands.dead_dict`,
:func:`~asynctask.cli.admin_schedules.schedule_rows`, :func:`asynctask.registry.list_supervisors`),
so ``/api/...`` and ``asynctask ... --json`` agree.  A user mistake (bad queue name, unknown queue,
bad page number) raises :class:`ApiError` with the HTTP status to answer.

Every listing is paginated so that a store with thousands of queues and a hundred thousand dead
letters answers fast: :func:`queues_page` reads the counts of the queues of one page only, and
:func:`dead_letters` reads one page of dead letters through ``Transport.dead_page`` (a cursor),
falling back to ``dead_tasks`` (an offset) on a transport that cannot page.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from asynctask.cli.admin_commands import dead_dict, queue_dict
from asynctask.config import Settings
from asynctask.cron import ScheduleEntry
from asynctask.errors import AsyncTaskError, QueueNameError
from asynctask.message import DeadTask, validate_queue_name
from asynctask.results import UNKNOWN
from asynctask.transports.base import Transport
from asynctask.transports.transfer import UnsupportedOperationError

__all__ = [
    "DEAD_PER_PAGE",
    "MAX_PER_PAGE",
    "QUEUES_PER_PAGE",
    "ApiError",
    "dead_letters",
    "find_task",
    "known_queue",
    "list_supervisors_or_none",
    "queue_stats",
    "queues_page",
    "schedules",
    "shown_url",
    "workers",
]

logger = logging.getLogger(__name__)

#: queues per page unless asked otherwise
QUEUES_PER_PAGE = 50
#: dead letters per page unless asked otherwise
DEAD_PER_PAGE = 50
#: the most of either one page may hold
MAX_PER_PAGE = 500
#: the prefix of the cursors of the offset fallback
_OFFSET_CURSOR = "offset:"


class ApiError(Exception):
    """A request the dashboard cannot answer: ``status`` is the HTTP status, ``message`` one line."""

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: more fields of the JSON answer
        self.extra = extra or {}


def shown_url(url: str) -> str:
    """``url`` as the dashboard may show it: the password masked (and secret-looking options)."""
    try:
        from asynctask.registry import masked_url  # noqa: PLC0415 - the registry may be missing

        return masked_url(url)
    except ImportError:
        from asynctask.transports.base import mask_url  # noqa: PLC0415

        return mask_url(url)


def _count(value: str | None, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if not minimum <= number <= maximum:
        raise ApiError(400, f"{name}={value!r:.40}: a whole number from {minimum} to {maximum} is allowed")
    return number


def known_queue(transport: Transport, queue: str) -> str:
    """``queue`` when its name is valid (else 400) and the transport knows it (else 404)."""
    try:
        validate_queue_name(queue)
    except QueueNameError as exc:
        raise ApiError(400, exc.message) from None
    if queue not in transport.queues():
        raise ApiError(404, f"unknown queue {queue!r}")
    return queue


def queues_page(
    transport: Transport, page: str | None = None, per_page: str | None = None, prefix: str = ""
) -> dict[str, Any]:
    """One page of the queues (sorted by name, those starting with ``prefix``) with their counts.

    ``{"page", "per_page", "pages", "total", "prefix", "queues": [queues --json rows]}``; only the
    queues of the page are counted.
    """
    size = _count(per_page, "per_page", QUEUES_PER_PAGE, MAX_PER_PAGE)
    names = [name for name in transport.queues() if name.startswith(prefix)]
    pages = max(1, math.ceil(len(names) / size))
    number = _count(page, "page", 1, max(pages, 1))
    shown = names[(number - 1) * size : number * size]
    return {
        "page": number,
        "per_page": size,
        "pages": pages,
        "total": len(names),
        "prefix": prefix,
        "queues": [queue_dict(name, transport.stats(name)) for name in shown],
    }


def queue_stats(transport: Transport, queue: str) -> dict[str, Any]:
    """One queue's ``queues --json`` row (404 for a queue the transport does not know)."""
    return queue_dict(queue, transport.stats(known_queue(transport, queue)))


def dead_letters(
    transport: Transport, queue: str, after: str = "", limit: str | None = None, *, check_queue: bool = True
) -> dict[str, Any]:
    """One page of the dead letters of ``queue``, oldest first.

    ``{"queue", "after", "next", "dead": [dead show --json rows: id, queue, attempts, dead_at,
    dead_at_utc, reason (whole: the traceback), payload or body]}``; ``next`` is the cursor of the
    next page, ``""`` after the last one.
    """
    if check_queue:
        known_queue(transport, queue)
    size = _count(limit, "limit", DEAD_PER_PAGE, MAX_PER_PAGE)
    found, following = _dead_page(transport, queue, after, size)
    return {"queue": queue, "after": after, "next": following, "dead": [dead_dict(d, full=True) for d in found]}


def _dead_page(transport: Transport, queue: str, after: str, size: int) -> tuple[list[DeadTask], str]:
    if not after.startswith(_OFFSET_CURSOR):
        try:
            return transport.dead_page(queue, after=after, limit=size)
        except UnsupportedOperationError:
            if after:
                raise ApiError(400, f"after={after!r:.60}: not a cursor this dashboard gave") from None
        except ValueError as exc:
            raise ApiError(400, f"after={after!r:.60}: {exc}") from None
    # The fallback: an offset into dead_tasks (slower the further it goes).
    try:
        offset = int(after.removeprefix(_OFFSET_CURSOR) or 0)
    except ValueError:
        raise ApiError(400, f"after={after!r:.60}: not a cursor this dashboard gave") from None
    if offset < 0:
        raise ApiError(400, f"after={after!r:.60}: not a cursor this dashboard gave")
    found = transport.dead_tasks(queue, offset + size + 1)
    page = found[offset : offset + size]
    return page, f"{_OFFSET_CURSOR}{offset + size}" if len(found) > offset + size else ""


def list_supervisors_or_none(transport: Transport) -> list[dict[str, Any]] | None:
    """The registry's records, or None when :mod:`asynctask.registry` cannot be imported."""
    try:
        from asynctask.registry import list_supervisors  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    return list_supervisors(transport)


def workers(transport: Transport) -> dict[str, Any]:
    """``{"available": bool, "error": str | None, "supervisors": [registry records]}``."""
    try:
        records = list_supervisors_or_none(transport)
    except AsyncTaskError as exc:
        return {"available": False, "error": f"the registry cannot be read: {exc.message}", "supervisors": []}
    if records is None:
        return {"available": False, "error": "registry not available", "supervisors": []}
    for record in records:
        if isinstance(record.get("transport"), str):
            record["transport"] = shown_url(record["transport"])
    return {"available": True, "error": None, "supervisors": records}


def schedules(settings: Settings | None, entries: list[ScheduleEntry] | None, transport: Transport) -> dict[str, Any]:
    """``{"available": bool, "error": str | None, "schedules": [schedules --json rows]}``."""
    if settings is None or entries is None:
        return {"available": False, "error": "the configuration does not load", "schedules": []}
    from asynctask.cli.admin_schedules import schedule_rows  # noqa: PLC0415 - imports the scheduler

    return {"available": True, "error": None, "schedules": schedule_rows(settings, transport, entries)}


def find_task(transport: Transport, task_id: str, queue: str = "") -> dict[str, Any]:
    """A task's record as ``asynctask task ID --json`` gives it: ``{"queue", "status", ...}``.

    Without ``queue``, every queue the transport knows is looked in.  404 (``status``
    ``unknown``) when no queue has a record of it.
    """
    task_id = task_id.strip()
    if not task_id or len(task_id) > 200:
        raise ApiError(400, f"task id {task_id!r:.60}: 1 to 200 characters are allowed")
    names = [known_queue(transport, queue)] if queue else transport.queues()
    for name in names:
        record = transport.handle(name, task_id).record()
        if record is not None:
            return {"queue": name, "id": task_id, **record}
    where = f"queue {queue!r}" if queue else "any queue"
    raise ApiError(
        404,
        f"task {task_id!r}: no record in {where} (it keeps no results, its record expired, or the id is wrong)",
        {"id": task_id, "status": UNKNOWN},
    )
