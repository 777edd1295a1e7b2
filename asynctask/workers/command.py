"""The built-in ``command`` worker: runs the command line of a scheduled ``command`` entry.

Payload: ``{"command": ["argv0", "arg", ...]}`` (a list of strings, run with no shell: the scheduler
splits an entry's command line with :func:`shlex.split`), plus optional ``cwd`` (a directory) and
``env`` (a mapping of extra environment variables).  The command's standard output and error are
logged line by line (logger ``asynctask.worker.command``, INFO and WARNING); a non-zero exit status,
a missing program or a run past ``timeout_s`` (a payload key, else the worker's ``timeout_s``)
raises, which counts as a failed attempt (``max_attempts`` 1 by default: cron runs are not retried).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from asynctask.workers.base import AsyncTaskWorker, Reject

__all__ = ["CommandFailed", "CommandWorker"]

#: Characters of output kept for the error message of a failed command.
_TAIL_CHARS = 2000


class CommandFailed(Exception):  # noqa: N818 - reads as an event, like CalledProcessError
    """The command exited with a non-zero status, or could not be started."""


class CommandWorker(AsyncTaskWorker):
    """Runs ``payload["command"]`` (an argv list) with no shell and logs its output."""

    name = "command"

    def process(self, payload: dict[str, Any]) -> None:
        argv = payload.get("command")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise Reject(f"command worker: payload 'command' must be a non-empty list of strings, not {argv!r:.200}")
        env = payload.get("env")
        if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise Reject("command worker: payload 'env' must map names to strings")
        timeout = payload.get("timeout_s", self.timeout_s)
        shown = " ".join(argv)
        self.logger.info("running %s", shown)
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                cwd=payload.get("cwd"),
                env={**os.environ, **env} if env else None,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise CommandFailed(f"{shown}: cannot start: {exc}") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{shown}: still running after {timeout} s; killed") from None
        except OSError as exc:
            raise CommandFailed(f"{shown}: cannot start: {exc}") from None
        for line in result.stdout.splitlines():
            self.logger.info("%s: %s", argv[0], line)
        for line in result.stderr.splitlines():
            self.logger.warning("%s: %s", argv[0], line)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout)[-_TAIL_CHARS:].strip()
            raise CommandFailed(f"{shown}: exit status {result.returncode}" + (f": {tail}" if tail else ""))
        self.logger.info("%s: exit status 0", shown)
