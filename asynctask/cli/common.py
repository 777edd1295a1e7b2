"""What both commands (``asynctask-workers`` and ``asynctask``) share on their command lines."""

from __future__ import annotations

import argparse

__all__ = ["LOG_LEVELS", "log_level"]

#: The ``--log-level`` values, accepted in any case.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(text: str) -> str:
    """The argparse ``type`` of ``--log-level``: a level name in any case, returned in lower case."""
    name = text.strip().lower()
    if name not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r}; allowed: {', '.join(LOG_LEVELS)} (any case)")
    return name
