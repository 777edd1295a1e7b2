"""What both commands (``asynctask-workers`` and ``asynctask``) share on their command lines."""

from __future__ import annotations

import argparse
import logging

__all__ = ["LOG_LEVELS", "log_level", "quiet_drivers"]

#: The ``--log-level`` values, accepted in any case.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Loggers of client libraries whose lines repeat what asynctask reports itself (pika logs every
#: channel opened and closed at INFO, and a failed login as ERROR lines with a traceback).
DRIVER_LOGGERS = ("pika",)


def log_level(text: str) -> str:
    """The argparse ``type`` of ``--log-level``: a level name in any case, returned in lower case."""
    name = text.strip().lower()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r}; allowed: {', '.join(LOG_LEVELS)} (any case)")
    return name


def quiet_drivers(level: int) -> None:
    """Silence the drivers' own loggers below ``--log-level debug``.

    Every driver error reaches the user through the transport, translated into one line of ours;
    at DEBUG the drivers speak again, for the full story.
    """
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.CRITICAL)
