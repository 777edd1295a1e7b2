"""Log formats of ``asynctask-workers --log-format``: ``text`` (the default) and ``json``.

:class:`JsonFormatter` writes one JSON object per record, on one line (a newline in a message or a
traceback is escaped), keys in this order:

``time``
    when the record was made, ISO-8601 in UTC with milliseconds (``2026-11-30T00:12:03.456Z``);
``level``, ``logger``, ``message``
    the level name, the logger's name, the message with its arguments;
``process``, ``process_name``
    the pid and the process's name (the supervisor's ``MainProcess`` or a child's);
``task_id``, ``queue``, ``worker``, ``attempt``
    while a task runs, the fields :class:`asynctask.middleware.LoggingContext` puts on the records of
    its thread or coroutine (absent outside a task; ``--log-format json`` adds that middleware to the
    workers when ``asynctask_middleware`` does not list it);
any ``extra={...}`` field
    a logging call's extra fields, as JSON (``str()`` of a value JSON cannot hold);
``exception``, ``stack``
    the formatted traceback of ``exc_info`` and the ``stack_info``, when the record has them.

Only the standard library: no dependency.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSON", "LOG_FORMATS", "TASK_FIELDS", "TEXT", "JsonFormatter", "make_formatter"]

TEXT = "text"
JSON = "json"
#: the values of ``--log-format``
LOG_FORMATS = (TEXT, JSON)
#: the fields :class:`~asynctask.middleware.LoggingContext` puts on a record (``-`` outside a task)
TASK_FIELDS = ("task_id", "queue", "worker", "attempt")

#: what every record has: the rest are a call's ``extra`` fields
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", *TASK_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=str)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "process_name": record.processName,
        }
        task_id = getattr(record, "task_id", "-")
        if task_id != "-":
            for name in TASK_FIELDS:
                line[name] = getattr(record, name, None)
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line.setdefault(name, value)
        if record.exc_info:
            # cached as logging.Formatter does, for the other handlers of the record
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return self._encoder.encode(line)


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_formatter(log_format: str, text_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (:data:`LOG_FORMATS`); ``text_format`` is the ``%``-style
    format of ``text``.  Raises ValueError naming a format that is not one of them."""
    if log_format == JSON:
        return JsonFormatter()
    if log_format == TEXT:
        return logging.Formatter(text_format)
    raise ValueError(f"invalid log format {log_format!r}; allowed: {', '.join(LOG_FORMATS)}")
