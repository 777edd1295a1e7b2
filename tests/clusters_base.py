"""Plumbing shared by the throwaway clusters of ``clusters.py``: free ports, server processes, waits.

Every process started here carries ``ASYNCTASK_TEST_CLUSTER=<its cluster's temp dir>`` in its
environment (inherited by its children), so :func:`leftovers` finds all of them, and only them, by
that marker: a teardown kills what it started by pid, then whatever still carries its marker.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

MARKER = "ASYNCTASK_TEST_CLUSTER"
HOST = "127.0.0.1"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterUnavailable(Exception):  # noqa: N818 - the name the tests of issue 16 use
    """A throwaway cluster cannot be started here (``reason`` says why: a missing binary, a failed start)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def require_binaries(*names: str) -> None:
    """Raise ClusterUnavailable naming the first of ``names`` that is not on PATH (system dirs included)."""
    for name in names:
        if shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}") is None:
            raise ClusterUnavailable(f"{name} is not installed")


def require_user(name: str) -> pwd.struct_passwd:
    """The account ``name``; we must be root (or that account) to run a server as it."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ClusterUnavailable(f"there is no user {name!r} to run the server as") from None
    if os.geteuid() not in (0, account.pw_uid):
        raise ClusterUnavailable(f"running a server as {name!r} needs root")
    return account


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now (bound to port 0)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_answers(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, error: type[Exception] = ClusterUnavailable
) -> None:
    """Poll ``predicate`` (exceptions count as False) until true; else raise ``error`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except Exception:  # a server still starting answers with all sorts of errors
            pass
        if time.monotonic() > deadline:
            raise error(f"{what} (waited {timeout_s:g} s)")
        time.sleep(0.05)


@contextlib.contextmanager
def cluster_dir(prefix: str, owner: pwd.struct_passwd | None = None) -> Iterator[Path]:
    """A temp directory (owned by ``owner`` when given), removed with everything under it at the end."""
    path = Path(tempfile.mkdtemp(prefix=f"asynctask-{prefix}-"))
    try:
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        yield path
    finally:
        for pid in leftovers(path):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        shutil.rmtree(path, ignore_errors=True)


def chown_tree(path: Path, owner: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)
    os.chown(path, owner.pw_uid, owner.pw_gid)


def leftovers(marker_dir: Path) -> list[int]:
    """Pids of the live (not zombie) processes started for the cluster in ``marker_dir``.

    Erlang's port mapper ``epmd`` is left out: a RabbitMQ node starts it when none runs, and it then
    serves every Erlang node of the machine (the machine's own broker too), so it is never killed.
    """
    found = []
    for proc in psutil.process_iter(["pid", "status", "name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["name"] == "epmd":
                continue
            if proc.environ().get(MARKER) == str(marker_dir):
                found.append(proc.pid)
    return found


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" when unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ServerProcess:
    """One server we run in the foreground: ``argv`` as ``user`` (None: as we are), output to ``log``.

    ``pid`` is the server's own pid: read from ``pid_file`` when the command is a wrapper script
    (RabbitMQ), else the child's.  ``kill`` is SIGKILL, ``stop`` SIGTERM (SIGKILL after
    ``stop_timeout_s``); both reap the child.  ``start`` may be called again after either.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        marker_dir: Path,
        log: Path,
        user: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None,
        pid_file: Path | None = None,
    ) -> None:
        self.argv, self.marker_dir, self.log, self.user = argv, marker_dir, log, user
        self.env, self.pid_file = env or {}, pid_file
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", MARKER: str(self.marker_dir), **self.env}
        ids: dict[str, object] = {}
        if self.user is not None and os.geteuid() != self.user.pw_uid:
            ids = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
            env.update(HOME=self.user.pw_dir, USER=self.user.pw_name, LOGNAME=self.user.pw_name)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(  # type: ignore[call-overload]
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log.parent,
                start_new_session=True,
                **ids,
            )

    @property
    def pid(self) -> int | None:
        """The server's pid (None before start, or while a wrapper has not written its pid file yet)."""
        if self.popen is None:
            return None
        if self.pid_file is None:
            return self.popen.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def exited(self) -> bool:
        """True when the started command has ended (a failed start, or after kill/stop)."""
        return self.popen is None or self.popen.poll() is not None

    def alive(self) -> bool:
        pid = self.pid
        return not self.exited() and pid is not None and pid_alive(pid)

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.log, lines)

    def kill(self) -> None:
        """``kill -9`` of the server's pid, and reap what we started."""
        self._signal(signal.SIGKILL, 0.0)

    def stop(self, stop_timeout_s: float = 10.0) -> None:
        self._signal(signal.SIGTERM, stop_timeout_s)

    def _signal(self, signum: int, timeout_s: float) -> None:
        if self.popen is None:
            return
        pid = self.pid
        if pid is not None and pid != self.popen.pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)  # the server under a wrapper: the wrapper ends with it
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)
        try:
            self.popen.wait(timeout=max(timeout_s, 5.0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.popen = None
