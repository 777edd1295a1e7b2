"""Imported by the supervisor's fork server only (a preload module): it survives a group SIGTERM.

``systemd`` (``KillMode=control-group``), ``timeout`` and ``kill -TERM -PGID`` signal every process
of the group.  A fork server killed that way makes every child look dead to the supervisor (exit
code 255, as multiprocessing reads exit codes from the server) while the child still runs its task.
So the server records SIGTERM instead of dying of it; it leaves when the supervisor does (its pipe
closes).  A child forked before it installed its own handler looks at :data:`terminated_pid`, as a
SIGTERM that reached it that early ran this handler in the child.
"""

from __future__ import annotations

import os
import signal

__all__ = ["terminated_pid"]

#: the pid of the process this handler last ran in (a child compares it with its own pid)
terminated_pid: int | None = None


def _on_sigterm(signum: int, frame: object) -> None:
    global terminated_pid  # set from a signal handler, read once by the child
    terminated_pid = os.getpid()


signal.signal(signal.SIGTERM, _on_sigterm)
