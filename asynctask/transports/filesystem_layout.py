"""Names, paths and atomic file moves of the filesystem transport (the layout is in ``filesystem.py``).

:class:`FileStore` opens the store under its root (:func:`parse_filesys_url` reads the URL) and holds the
steps every state change is made of: write a fresh file in ``tmp/`` and rename it into place, lock
an in-flight file, move a delivery back to ready or delayed, move it to the dead letters.  Beside it
are the file-name rules (fixed-width fields, the regexes that check them) and the shared helpers.
:class:`FileStore` is a part of the transport, not a transport: ``filesystem.py`` holds one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from asynctask.errors import TransportError, TransportURLError
from asynctask.message import MAX_PRIORITY, Task, new_task_id, validate_queue_name
from asynctask.transports.base import (
    dead_reason_for_undecodable,
    option_bool,
    option_positive_float,
    parse_url,
    take_options,
)

TMP_MAX_AGE_S = 600.0
BUCKET_SHIFT = 30
NS = 1_000_000_000
_ID = r"[0-9A-Za-z_-]{1,64}"
RECEIPT_RE = re.compile(rf"\d{{19}}\.\d{{19}}\.{_ID}\.\d{{1,9}}\.\d{{1,19}}\.\d\.[0-9a-f]{{1,32}}\Z", re.ASCII)
READY_RE = re.compile(rf"\d{{19}}\.({_ID})\.(\d{{1,9}})\.(\d{{1,19}})\Z", re.ASCII)
DELAYED_RE = re.compile(rf"\d{{19}}\.({_ID})\.(\d{{1,9}})\.(\d{{1,19}})\.(\d)\Z", re.ASCII)
DEAD_RE = re.compile(rf"\d{{19}}\.{_ID}\.\d{{1,9}}\.\d{{1,19}}\.\d\.task\Z", re.ASCII)
QUEUE_RE = re.compile(r"[a-z](?:_?[a-z0-9]){1,99}\Z")
Meta = tuple[str, int, str, int]  # id, deliveries, enqueued_us, priority
counter = itertools.count()
_order_lock = threading.Lock()
_last_order = 0


def next_order() -> int:
    """A wall-clock nanosecond key, strictly increasing within this process."""
    global _last_order
    with _order_lock:
        _last_order = max(time.time_ns(), _last_order + 1)
        return _last_order


def option_mode(name: str, value: str) -> int:
    """Parse ``mode=0o600`` / ``0600`` / ``600``: read and write bits only, owner rw required."""
    try:
        mode = int(value.lower().removeprefix("0o"), 8)
    except ValueError:
        mode = -1
    if mode < 0 or mode & ~0o666 or mode & 0o600 != 0o600:
        raise TransportURLError(
            f"option {name}={value!r}: an octal file mode with owner read and write and no execute bits"
            " is allowed (e.g. 0o600, 0o640, 0o660)"
        )
    return mode


def listdir(path: str) -> list[str]:
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def bad_name(name: str) -> str:
    return dead_reason_for_undecodable(ValueError(f"file name {name!r} is not a task file name"))


def stray_meta() -> Meta:
    """The meta a file that is no task gets on its way to the dead letters: a new id, now."""
    return new_task_id(), 0, str(time.time_ns() // 1000), 0


def new_task(*fields: Any) -> Task:
    """Task(*fields), built without the frozen dataclass's per-field __setattr__ (the hot path)."""
    task: Task = object.__new__(Task)
    task.__dict__.update(zip(_TASK_FIELDS, fields, strict=True))
    return task


_TASK_FIELDS = [field.name for field in dataclasses.fields(Task)]
if hasattr(Task, "__slots__") or getattr(Task, "__post_init__", None):  # pragma: no cover - keep it honest
    new_task = Task


class Dirs:
    """The directory paths of one queue."""

    def __init__(self, base: str) -> None:
        self.base = base
        #: the queue's name: the last part of ``base``
        self.queue = base.rsplit("/", 1)[-1]
        self.ready = [f"{base}/ready/{p}" for p in range(MAX_PRIORITY + 1)]
        self.delayed, self.inflight, self.dead = f"{base}/delayed", f"{base}/inflight", f"{base}/dead"


def parse_filesys_url(url: str) -> tuple[str, dict[str, Any]]:
    """The absolute root directory a ``filesys:`` / ``file:`` URL names, and its options.

    Raises :class:`TransportURLError` for a host part, no path, a relative ``file:`` path or an
    unknown or bad option.
    """
    parsed = parse_url(url)
    options = take_options(parsed, {"lease_s": option_positive_float, "fsync": option_bool, "mode": option_mode})
    forms = "use filesys:/abs/dir, filesys:relative/dir or file:///abs/dir"
    if urlsplit(url).netloc:
        raise TransportURLError(f"transport URL {parsed.masked!r} has a host part: {forms}")
    if not parsed.path:
        raise TransportURLError(f"transport URL {parsed.masked!r} names no directory: {forms}")
    if parsed.scheme == "file" and not parsed.path.startswith("/"):
        raise TransportURLError(f"transport URL {parsed.masked!r}: file: takes an absolute path: {forms}")
    return os.path.abspath(parsed.path), options


class FileStore:
    """The store under one root directory: its paths and the atomic file moves (see ``filesystem.py``).

    Opening it creates the root's directories and sweeps stale ``tmp/`` files.  ``lock`` guards
    the caches (``queue_cache``, ``delayed_cache``) between threads of one process; the files
    themselves need no lock but the ``flock`` of :meth:`locked`.
    """

    def __init__(self, root: str, *, fsync: bool = False, file_mode: int = 0o600) -> None:
        self.fsync = fsync
        self.file_mode = file_mode
        self.dir_mode = file_mode | ((file_mode & 0o444) >> 2)
        self.root = root
        self.tmp = f"{root}/tmp"
        self.pid = os.getpid()  # a forked child opens its own transport (see Transport)
        self.lock = threading.Lock()
        self.queue_cache: dict[str, Dirs] = {}
        self.delayed_cache: dict[str, tuple[int, float, list[str]]] = {}  # the fetch's; dropped by writers
        with self.os_errors("open the store"):
            for sub in ("", "/tmp", "/claims", "/queues"):
                if not os.path.isdir(f"{root}{sub}"):
                    self.makedir(f"{root}{sub}")
            self.sweep(self.tmp, lambda name: True)

    # -- names, paths and atomic moves -------------------------------------------------------

    @contextlib.contextmanager
    def os_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise TransportError(f"filesystem transport at {self.root}: cannot {action}: {exc}") from None

    def makedir(self, path: str) -> None:
        """Create ``path`` (and missing parents under the root) with the directory mode."""
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            return
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent.startswith(self.root + "/"):
                self.makedir(parent)
            else:
                os.makedirs(parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, self.dir_mode)
        with contextlib.suppress(FileNotFoundError):  # the umask may have taken bits; a bucket may go at once
            os.chmod(path, self.dir_mode)
        self.sync_dir(os.path.dirname(path))

    def queue_dirs(self, queue: str, create: bool = False) -> Dirs | None:
        """The queue's paths; None when it does not exist (and ``create`` is false)."""
        dirs = self.queue_cache.get(queue)
        if dirs is not None and not create:
            return dirs
        dirs = dirs or Dirs(f"{self.root}/queues/{queue}")
        if not os.path.isdir(dirs.dead):
            if not create:
                return None
            for path in [*dirs.ready, dirs.delayed, dirs.inflight, dirs.dead]:
                self.makedir(path)
        self.queue_cache[queue] = dirs
        return dirs

    def sync_dir(self, path: str) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_new(self, data: bytes) -> str:
        """Write ``data`` to a fresh file in tmp/ and return its path (to be renamed into place)."""
        path = f"{self.tmp}/{self.pid}.{next(counter)}.{random.getrandbits(32):08x}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            if self.file_mode != 0o600:
                os.fchmod(fd, self.file_mode)  # the umask may have taken group bits away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def place(self, src: str, priority_dir: str, name: str) -> str | None:
        """rename ``src`` into its bucket of ``priority_dir``; the bucket, or None when src is gone."""
        bucket = f"{priority_dir}/{int(name[:19]) >> BUCKET_SHIFT:012d}"
        for _ in range(10):
            try:
                os.rename(src, f"{bucket}/{name}")
                return bucket
            except FileNotFoundError:
                if not os.path.exists(src):
                    return None
                self.makedir(bucket)  # new, or removed as empty by a consumer meanwhile
        raise FileNotFoundError(f"bucket {bucket} keeps disappearing")

    def sweep(self, directory: str, wanted: Callable[[str], bool]) -> None:
        """Remove files in ``directory`` older than TMP_MAX_AGE_S for which ``wanted(name)`` holds."""
        limit = time.time() - TMP_MAX_AGE_S
        for name in listdir(directory):
            with contextlib.suppress(OSError):
                if wanted(name) and os.stat(f"{directory}/{name}").st_mtime < limit:
                    os.unlink(f"{directory}/{name}")

    @contextlib.contextmanager
    def locked(self, path: str) -> Iterator[int | None]:
        """flock an in-flight file; yield its fd, or None when the name is gone (delivery not current)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd if os.path.exists(path) else None
        finally:
            os.close(fd)

    def delivery(self, task: Task) -> tuple[Dirs, str, Meta] | None:
        """The queue dirs, in-flight path and meta a task's receipt names (None: not ours / malformed)."""
        dirs = self.queue_cache.get(task.queue)
        if dirs is None:
            validate_queue_name(task.queue)
        if not isinstance(task.receipt, str) or not RECEIPT_RE.match(task.receipt):
            return None
        dirs = dirs or self.queue_dirs(task.queue)
        if dirs is None:
            return None
        _, _, task_id, deliveries, enq_us, priority, _ = task.receipt.split(".")
        return dirs, f"{dirs.inflight}/{task.receipt}", (task_id, int(deliveries), enq_us, int(priority))

    def requeue(self, dirs: Dirs, src: str, fd: int, meta: Meta, *, delay_ns: int = 0) -> None:
        """Move a locked in-flight file back to ready (or delayed)."""
        task_id, deliveries, enq_us, priority = meta
        os.utime(fd, ns=(0, 0))
        if delay_ns > 0:
            due = time.time_ns() + delay_ns
            os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.{deliveries}.{enq_us}.{priority}")
            self.delayed_cache.pop(dirs.queue, None)
            self.sync_dir(dirs.delayed)
        elif bucket := self.place(src, dirs.ready[priority], f"{next_order():019d}.{task_id}.{deliveries}.{enq_us}"):
            self.sync_dir(bucket)

    def bury(self, dirs: Dirs, src: str, meta: Meta, reason: str) -> bool:
        """Reason first, then the body: a crash between leaves the task where it was."""
        task_id, deliveries, enq_us, priority = meta
        stem = f"{dirs.dead}/{time.time_ns():019d}.{task_id}.{deliveries}.{enq_us}.{priority}"
        os.rename(self.write_new(reason.encode("utf-8", "replace")), stem + ".reason")
        try:
            os.rename(src, stem + ".task")
        except FileNotFoundError:
            os.unlink(stem + ".reason")
            return False
        self.sync_dir(dirs.dead)
        return True
