"""Stop requests as countable events: SIGTERM, SIGINT and :meth:`StopSignals.request`.

Signals are counted from the signal wake-up pipe, one byte each, not in the Python-level handler:
that handler runs once for two signals that arrive before it could run, so a quick double Ctrl-C
would count as one.  (Two signals of the same number that reach the process before the kernel has
delivered the first are merged by the kernel itself; no program can count those.)
"""

from __future__ import annotations

import os
import signal
import threading
from types import TracebackType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context manager: opens the wake-up pipe and installs the handlers (on the main thread only).

    While entered, :meth:`fileno` is the pipe to wait on and :meth:`take` returns how many stop
    events came since its last call.  :meth:`request` is safe from another thread, entered or not.
    """

    def __init__(self) -> None:
        self._read_fd = self._write_fd = -1
        self._requests = 0
        self._previous: dict[int, Any] = {}
        self._previous_fd: int | None = None

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, _counted_from_the_pipe)
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous, self._previous_fd = {}, None
        os.close(self._read_fd)
        os.close(self._write_fd)
        self._read_fd = self._write_fd = -1

    def fileno(self) -> int:
        return self._read_fd

    def request(self) -> None:
        """One stop event, as a SIGTERM would be."""
        self._requests += 1
        try:
            os.write(self._write_fd, b"\0")
        except OSError:  # closed, or full: the count is kept either way
            pass

    def take(self) -> int:
        """Stop events since the last call: the signals read from the pipe and the requests."""
        try:
            woken_by = os.read(self._read_fd, 512)
        except (BlockingIOError, OSError):
            woken_by = b""
        requests, self._requests = self._requests, 0
        return requests + sum(1 for byte in woken_by if byte in STOP_SIGNALS)


def _counted_from_the_pipe(signum: int, frame: object) -> None:
    """Nothing: the wake-up pipe counts the signal (this handler only replaces KeyboardInterrupt)."""
