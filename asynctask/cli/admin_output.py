"""Output helpers of the ``asynctask`` admin command: exit codes, one-line errors, tables, progress.

Every user error leaves through :class:`CommandError`: ``main`` prints its message as ONE line on
stderr (``asynctask: error: ...``) and exits with its code, one of :mod:`asynctask.cli.exit_codes`.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from asynctask.cli.exit_codes import EXIT_FAILURE, EXIT_TRANSPORT, EXIT_UNAVAILABLE, EXIT_USAGE
from asynctask.errors import (
    AsyncTaskError,
    ConfigurationError,
    PayloadError,
    TransportUnavailableError,
)


class CommandError(Exception):
    """A user-facing failure: ``message`` is printed as one line, ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code_for(exc: AsyncTaskError) -> int:
    """The exit code for an asynctask error: 3 unreachable, 2 configuration or payload, else 5."""
    if isinstance(exc, TransportUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (ConfigurationError, PayloadError)):
        return EXIT_USAGE
    return EXIT_TRANSPORT


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` squeezed onto one line (newlines become `` | ``), cut at ``limit`` characters."""
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_age(seconds: float | None) -> str:
    """A short human age: ``-`` for None, ``850ms``, ``12.3s``, ``4m05s``, ``3h07m``, ``2d04h``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_time(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC to the second."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    """Print an aligned text table; numeric-looking columns are right-aligned."""
    stream = out or sys.stdout
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]
    for row in cells:
        parts = [cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        stream.write("  ".join(parts).rstrip() + "\n")


def _is_number(text: str) -> bool:
    return text.isdigit()


def print_json(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as indented JSON (for ``--json``)."""
    stream = out or sys.stdout
    stream.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


class Progress:
    """A one-line progress bar on a terminal (``\\r``-redrawn), silent elsewhere.

    Shown only when ``stream`` is a terminal and ``total`` reaches ``minimum``; ``update(done)`` redraws
    at most once per percent, ``finish()`` ends the line.
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, minimum: int = 1000) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.total = total
        self.enabled = total >= minimum and _isatty(self.stream)
        self._last = -1

    def update(self, done: int) -> None:
        if not self.enabled or self.total <= 0:
            return
        percent = done * 100 // self.total
        if percent == self._last:
            return
        self._last = percent
        filled = done * self.WIDTH // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {percent:3d}%")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._last >= 0:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(question: str, *, assume_yes: bool, what: str) -> None:
    """Ask ``question`` on the terminal unless ``assume_yes``.

    Raises :class:`CommandError` (EXIT_USAGE) without asking when stdin is not a terminal, and
    (EXIT_FAILURE) when the answer is not yes.
    """
    if assume_yes:
        return
    if sys.stdin is None or not _isatty(sys.stdin):
        raise CommandError(f"refusing to {what} without --yes: stdin is not a terminal to ask on", EXIT_USAGE)
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CommandError(f"not confirmed: nothing was done ({what})", EXIT_FAILURE)
