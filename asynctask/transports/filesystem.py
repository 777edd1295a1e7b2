"""The embedded default: ``filesys:/abs/dir``, ``filesys:relative/dir``, ``file:///abs/dir``.

Queues are files under one directory of a local POSIX filesystem; no server.  Several processes of
one host may submit to and consume the same queues at once.  Options (URL query): ``lease_s``
(default lease, seconds), ``fsync`` (0/1: also fsync files and directories, so a power loss loses
nothing acknowledged either), ``mode`` (file mode in octal, default ``0o600``, owner-only;
directories get the matching ``x`` bits: ``mode=0o660`` gives ``0o770`` directories).  A relative
path is taken from the current directory when the transport is opened.

Layout under the root (every name sorts by its first, fixed-width field)::

    tmp/<pid>.<n>.<rand>                  files being written, never read as tasks; swept after 10 min
    claims/<sha256(key)[:40]>             claim_once: flock'ed; mtime = expiry; swept an hour after
    queues/<q>/ready/<priority>/<bucket>/<order_ns>.<id>.<deliveries>.<enqueued_us>
    queues/<q>/delayed/<due_ns>.<id>.<deliveries>.<enqueued_us>.<priority>
    queues/<q>/inflight/<deadline_ns>.<claimed_ns>.<id>.<deliveries>.<enqueued_us>.<priority>.<nonce>
    queues/<q>/dead/<dead_ns>.<id>.<deliveries>.<enqueued_us>.<priority>.task    (the body)
    queues/<q>/dead/<same stem>.reason                                           (the reason)

A file holds only the JSON body; the rest is in its name, so each state change is one ``rename``.
``order_ns`` is a wall-clock key strictly increasing within a process (FIFO); ``<bucket>`` is
``order_ns >> 30`` (1.07 s of submissions), so no directory a consumer lists grows with the backlog
beyond one bucket.  ``deliveries`` counts deliveries so far.  The in-flight name is the delivery's
receipt (portable: any process may ack by it).  The lease ends at ``deadline_ns``, or at the file's
mtime when that is >= ``claimed_ns`` (set by ``extend``; a file's write time is before its claim and
every move out of in-flight resets the mtime to 0).

Each step, and why a process killed at any instant leaves no half task and loses no acknowledged state:

* submit: write ``tmp/x`` (``fsync=1``: fsync it), ``rename`` it into its bucket (``fsync=1``: fsync
  the directory).  Killed before the rename, only a stray ``tmp`` file remains.
* claim: ``rename`` the ready file to a new in-flight name, then read it.  rename is atomic: of two
  consumers exactly one wins, the other gets ENOENT and skips.  Killed after it, the task comes back
  when the lease ends.  (Claims are not fsynced: a power loss may undo one, i.e. deliver again.)
* ack: ``unlink`` the receipt.  A lost delivery's name no longer exists: a no-op.
* nack and lease expiry: under ``flock`` of the in-flight file, check the name still exists (and the
  lease ended), reset the mtime, ``rename`` back to ready or delayed.  ``extend`` takes the same lock
  and checks the name before setting the mtime, so an extend and a reclaim never both win.
* dead: write ``<stem>.reason`` (tmp + rename), then ``rename`` the in-flight file to ``<stem>.task``.
  Killed between, the task stays in flight and the lone ``.reason`` is ignored, then swept.
* replay_dead: reset the mtime, ``rename`` the ``.task`` into ready (deliveries 0), drop the reason.
* empty buckets are removed with ``rmdir`` (fails if a file arrived); a producer whose rename meets a
  removed bucket creates it again and retries.

Cost: a transport keeps, per queue and priority, the sorted names of the bucket it is taking from and
the sorted bucket list, and lists again only when they run out, so a claim is one rename and one read
whatever the backlog.  Each fetch lists the (normally empty) higher-priority directories, so a new
urgent task is seen at once.  Due delayed tasks and expired leases are promoted by fetches, at most
1000 each per fetch; ``delayed/`` is listed again when its mtime changed, its head is due, or once a
second; ``inflight/`` (what consumers hold) is listed on each fetch and fully stat'ed once a second.
A waiting fetch polls with :class:`~asynctask.transports.base.Backoff` (at most 50 ms between looks).
Unknown file names (not starting with ``.``) and bodies that do not decode go to the dead letters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from asynctask.errors import TaskDecodeError, TransportError, TransportURLError
from asynctask.task import MAX_PRIORITY, DeadTask, QueueStats, Task, decode_payload, new_task_id, validate_queue_name
from asynctask.transports.base import (
    Backoff,
    Transport,
    dead_reason_for_undecodable,
    option_bool,
    option_positive_float,
    parse_url,
    take_options,
    validate_claim,
)

logger = logging.getLogger(__name__)

PRIORITIES = range(MAX_PRIORITY, -1, -1)
PROMOTE_BATCH = 1000
TMP_MAX_AGE_S = 600.0
CLAIM_SWEEP_S = 3600.0
BUCKET_SHIFT = 30
_S = 1_000_000_000
_ID = r"[0-9A-Za-z_-]{1,64}"
_RECEIPT_RE = re.compile(rf"\d{{19}}\.\d{{19}}\.{_ID}\.\d{{1,9}}\.\d{{1,19}}\.\d\.[0-9a-f]{{1,32}}\Z", re.ASCII)
_READY_RE = re.compile(rf"\d{{19}}\.({_ID})\.(\d{{1,9}})\.(\d{{1,19}})\Z", re.ASCII)
_DELAYED_RE = re.compile(rf"\d{{19}}\.({_ID})\.(\d{{1,9}})\.(\d{{1,19}})\.(\d)\Z", re.ASCII)
_DEAD_RE = re.compile(rf"\d{{19}}\.{_ID}\.\d{{1,9}}\.\d{{1,19}}\.\d\.task\Z", re.ASCII)
_QUEUE_RE = re.compile(r"[a-z](?:_?[a-z0-9]){1,99}\Z")
Meta = tuple[str, int, str, int]  # id, deliveries, enqueued_us, priority
_counter = itertools.count()
_order_lock = threading.Lock()
_last_order = 0


def _next_order() -> int:
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


def _listdir(path: str) -> list[str]:
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _bad_name(name: str) -> str:
    return dead_reason_for_undecodable(ValueError(f"file name {name!r} is not a task file name"))


def _new_task(*fields: Any) -> Task:
    """Task(*fields), built without the frozen dataclass's per-field __setattr__ (the hot path)."""
    task: Task = object.__new__(Task)
    task.__dict__.update(zip(_TASK_FIELDS, fields, strict=True))
    return task


_TASK_FIELDS = [field.name for field in dataclasses.fields(Task)]
if hasattr(Task, "__slots__") or getattr(Task, "__post_init__", None):  # pragma: no cover - keep it honest
    _new_task = Task


class _Dirs:
    """The directory paths of one queue."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ready = [f"{base}/ready/{p}" for p in range(MAX_PRIORITY + 1)]
        self.delayed, self.inflight, self.dead = f"{base}/delayed", f"{base}/inflight", f"{base}/dead"


class FilesystemTransport(Transport):
    """Queues as files under one directory; safe across threads and processes of one host."""

    schemes = ("filesys", "file")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        options = take_options(parsed, {"lease_s": option_positive_float, "fsync": option_bool, "mode": option_mode})
        forms = "use filesys:/abs/dir, filesys:relative/dir or file:///abs/dir"
        if urlsplit(url).netloc:
            raise TransportURLError(f"transport URL {parsed.masked!r} has a host part: {forms}")
        if not parsed.path:
            raise TransportURLError(f"transport URL {parsed.masked!r} names no directory: {forms}")
        if parsed.scheme == "file" and not parsed.path.startswith("/"):
            raise TransportURLError(f"transport URL {parsed.masked!r}: file: takes an absolute path: {forms}")
        self.lease_s = options.get("lease_s", self.lease_s)
        self.fsync: bool = options.get("fsync", False)
        self.file_mode: int = options.get("mode", 0o600)
        self.dir_mode = self.file_mode | ((self.file_mode & 0o444) >> 2)
        self.root = os.path.abspath(parsed.path)
        self._tmp = f"{self.root}/tmp"
        self._pid = os.getpid()  # a forked child opens its own transport (see Transport)
        self._lock = threading.Lock()
        self._dirs: dict[str, _Dirs] = {}
        self._names: dict[tuple[str, int], list[str]] = {}  # sorted names of the current bucket, reversed
        self._current: dict[tuple[str, int], str] = {}  # the bucket being taken from
        self._buckets: dict[tuple[str, int], list[str]] = {}  # later buckets, reversed
        self._delayed_cache: dict[str, tuple[int, float, list[str]]] = {}
        self._full_scan_at: dict[str, float] = {}
        self._claims_swept_at = 0.0
        with self._os_errors("open the store"):
            for sub in ("", "/tmp", "/claims", "/queues"):
                if not os.path.isdir(f"{self.root}{sub}"):
                    self._makedir(f"{self.root}{sub}")
            self._sweep(self._tmp, lambda name: True)

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise TransportError(f"filesystem transport at {self.root}: cannot {action}: {exc}") from None

    def _makedir(self, path: str) -> None:
        """Create ``path`` (and missing parents under the root) with the directory mode."""
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            return
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent.startswith(self.root + "/"):
                self._makedir(parent)
            else:
                os.makedirs(parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, self.dir_mode)
        with contextlib.suppress(FileNotFoundError):  # the umask may have taken bits; a bucket may go at once
            os.chmod(path, self.dir_mode)
        self._sync_dir(os.path.dirname(path))

    def _queue_dirs(self, queue: str, create: bool = False) -> _Dirs | None:
        """The queue's paths; None when it does not exist (and ``create`` is false)."""
        dirs = self._dirs.get(queue)
        if dirs is not None and not create:
            return dirs
        dirs = dirs or _Dirs(f"{self.root}/queues/{queue}")
        if not os.path.isdir(dirs.dead):
            if not create:
                return None
            for path in [*dirs.ready, dirs.delayed, dirs.inflight, dirs.dead]:
                self._makedir(path)
        self._dirs[queue] = dirs
        return dirs

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_new(self, data: bytes) -> str:
        """Write ``data`` to a fresh file in tmp/ and return its path (to be renamed into place)."""
        path = f"{self._tmp}/{self._pid}.{next(_counter)}.{random.getrandbits(32):08x}"
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

    def _place(self, src: str, priority_dir: str, name: str) -> str | None:
        """rename ``src`` into its bucket of ``priority_dir``; the bucket, or None when src is gone."""
        bucket = f"{priority_dir}/{int(name[:19]) >> BUCKET_SHIFT:012d}"
        for _ in range(10):
            try:
                os.rename(src, f"{bucket}/{name}")
                return bucket
            except FileNotFoundError:
                if not os.path.exists(src):
                    return None
                self._makedir(bucket)  # new, or removed as empty by a consumer meanwhile
        raise FileNotFoundError(f"bucket {bucket} keeps disappearing")

    def _sweep(self, directory: str, wanted: Callable[[str], bool]) -> None:
        """Remove files in ``directory`` older than TMP_MAX_AGE_S for which ``wanted(name)`` holds."""
        limit = time.time() - TMP_MAX_AGE_S
        for name in _listdir(directory):
            with contextlib.suppress(OSError):
                if wanted(name) and os.stat(f"{directory}/{name}").st_mtime < limit:
                    os.unlink(f"{directory}/{name}")

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[int | None]:
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

    def _receipt(self, task: Task) -> tuple[_Dirs, str, Meta] | None:
        """The queue dirs, in-flight path and meta a task's receipt names (None: not ours / malformed)."""
        dirs = self._dirs.get(task.queue)
        if dirs is None:
            validate_queue_name(task.queue)
        if not isinstance(task.receipt, str) or not _RECEIPT_RE.match(task.receipt):
            return None
        dirs = dirs or self._queue_dirs(task.queue)
        if dirs is None:
            return None
        _, _, task_id, deliveries, enq_us, priority, _ = task.receipt.split(".")
        return dirs, f"{dirs.inflight}/{task.receipt}", (task_id, int(deliveries), enq_us, int(priority))

    def _requeue(self, queue: str, dirs: _Dirs, src: str, fd: int, meta: Meta, *, delay_ns: int = 0) -> None:
        """Move a locked in-flight file back to ready (or delayed)."""
        task_id, deliveries, enq_us, priority = meta
        os.utime(fd, ns=(0, 0))
        if delay_ns > 0:
            due = time.time_ns() + delay_ns
            os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.{deliveries}.{enq_us}.{priority}")
            self._delayed_cache.pop(queue, None)
            self._sync_dir(dirs.delayed)
        elif bucket := self._place(src, dirs.ready[priority], f"{_next_order():019d}.{task_id}.{deliveries}.{enq_us}"):
            self._sync_dir(bucket)

    def _bury(self, dirs: _Dirs, src: str, meta: Meta, reason: str) -> bool:
        """Reason first, then the body: a crash between leaves the task where it was."""
        task_id, deliveries, enq_us, priority = meta
        stem = f"{dirs.dead}/{time.time_ns():019d}.{task_id}.{deliveries}.{enq_us}.{priority}"
        os.rename(self._write_new(reason.encode("utf-8", "replace")), stem + ".reason")
        try:
            os.rename(src, stem + ".task")
        except FileNotFoundError:
            os.unlink(stem + ".reason")
            return False
        self._sync_dir(dirs.dead)
        return True

    # -- producing --------------------------------------------------------------------------

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        ids: list[str] = []
        with self._os_errors(f"submit to queue {queue!r}"):
            dirs = self._queue_dirs(queue, create=True)  # one stat: the queue may have been removed by hand
            assert dirs is not None
            due = time.time_ns() + int(delay_s * _S) if delay_s > 0 else 0
            touched = {dirs.delayed} if due else set()
            for body in bodies:
                task_id, order = new_task_id(), _next_order()
                src = self._write_new(body.encode("utf-8"))
                if due:
                    try:
                        os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.0.{order // 1000}.{priority}")
                    except FileNotFoundError:  # the queue was removed under us: make it again
                        self._queue_dirs(queue, create=True)
                        os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.0.{order // 1000}.{priority}")
                elif bucket := self._place(src, dirs.ready[priority], f"{order:019d}.{task_id}.0.{order // 1000}"):
                    touched.add(bucket)
                ids.append(task_id)
            for path in touched:
                self._sync_dir(path)
            if due:
                self._delayed_cache.pop(queue, None)
        return ids

    # -- consuming --------------------------------------------------------------------------

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        backoff: Backoff | None = None
        while True:
            with self._lock, self._os_errors(f"fetch from queue {queue!r}"):
                dirs = self._queue_dirs(queue)
                tasks = self._take(queue, dirs, max_count, int(lease_s * _S)) if dirs else []
            if tasks or timeout_s <= 0:
                return tasks
            backoff = backoff or Backoff(timeout_s)
            if not backoff.wait():
                return []

    def _take(self, queue: str, dirs: _Dirs, max_count: int, lease_ns: int) -> list[Task]:
        try:
            self._maintain(queue, dirs)
        except FileNotFoundError:  # the queue's directories were removed by hand: look again next time
            self._dirs.pop(queue, None)
            return []
        now = time.time_ns()
        tasks: list[Task] = []
        listed: set[str] = set()
        for priority in PRIORITIES:
            key = (queue, priority)
            while len(tasks) < max_count and (self._names.get(key) or self._refill(key, dirs, listed)):
                self._claim(queue, dirs, key, tasks, max_count, f"{now + lease_ns:019d}.{now:019d}.")
        return tasks

    def _refill(self, key: tuple[str, int], dirs: _Dirs, listed: set[str]) -> bool:
        """Load the next names to claim for (queue, priority); False when none are to be seen.

        The current bucket is listed again (once per fetch) until it is empty, then removed, and the
        next bucket is taken; the bucket list itself is listed again (once per fetch) when used up.
        """
        while True:
            bucket = self._current.get(key)
            if bucket is not None:
                if bucket not in listed:
                    listed.add(bucket)
                    if os.path.isfile(bucket):  # not a bucket: a stray file
                        self._bury(dirs, bucket, (new_task_id(), 0, str(time.time_ns() // 1000), 0), _bad_name(bucket))
                    elif names := sorted(_listdir(bucket), reverse=True):
                        self._names[key] = names
                        return True
                    elif bucket[-12:].isdigit() and int(bucket[-12:]) < (time.time_ns() >> BUCKET_SHIFT) - 1:
                        with contextlib.suppress(OSError):
                            os.rmdir(bucket)  # fails if a task arrived meanwhile: seen with the next listing
                del self._current[key]
            buckets = self._buckets.get(key)
            if not buckets:
                priority_dir = dirs.ready[key[1]]
                if priority_dir in listed:
                    return False
                listed.add(priority_dir)
                buckets = self._buckets[key] = sorted(_listdir(priority_dir), reverse=True)
                if not buckets:
                    return False
            self._current[key] = f"{dirs.ready[key[1]]}/{buckets.pop()}"

    def _claim(self, queue: str, dirs: _Dirs, key: tuple[str, int], tasks: list[Task], *args: Any) -> None:
        """Claim names of the current bucket of ``key`` into ``tasks`` until it holds ``max_count``.

        The hot loop: one rename, one read per task.  args = (max_count, receipt prefix).
        """
        max_count, prefix = args
        priority, bucket, names, inflight = key[1], self._current[key], self._names[key], dirs.inflight
        suffix = f".{priority}.{self._pid:x}"
        while names and len(tasks) < max_count:
            name = names.pop()
            match = _READY_RE.match(name)
            if match is None:
                task_id, deliveries, enq_us = new_task_id(), 1, str(time.time_ns() // 1000)
            else:
                task_id, deliveries, enq_us = match[1], int(match[2]) + 1, match[3]
            receipt = f"{prefix}{task_id}.{deliveries}.{enq_us}{suffix}{next(_counter) & 0xFFFFFFFF:08x}"
            path = f"{inflight}/{receipt}"
            try:
                os.rename(f"{bucket}/{name}", path)
            except FileNotFoundError:
                continue  # another consumer won it
            if match is None:
                self._bury(dirs, path, (task_id, deliveries, enq_us, priority), _bad_name(name))
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # reclaimed at once: only with a lease shorter than this pause
            try:
                data = os.read(fd, 1 << 16)
                while len(data) % (1 << 16) == 0 and (more := os.read(fd, 1 << 16)):
                    data += more
            finally:
                os.close(fd)
            try:
                payload = decode_payload(data.decode("utf-8"))
            except (UnicodeDecodeError, TaskDecodeError) as exc:
                self._bury(dirs, path, (task_id, deliveries, enq_us, priority), dead_reason_for_undecodable(exc))
                continue
            tasks.append(_new_task(task_id, queue, payload, deliveries, int(enq_us) / 1e6, priority, receipt))

    def _maintain(self, queue: str, dirs: _Dirs) -> None:
        """Promote due delayed tasks and reclaim expired leases, at most PROMOTE_BATCH of each."""
        now = time.time_ns()
        stamp = f"{now:019d}"
        mtime = os.stat(dirs.delayed).st_mtime_ns
        cached = self._delayed_cache.get(queue)
        if (
            cached is None
            or cached[0] != mtime
            or now / _S - cached[1] >= 1.0
            or (cached[2] and cached[2][-1][:19] <= stamp)
        ):
            names = sorted(_listdir(dirs.delayed), reverse=True)
            cached = self._delayed_cache[queue] = (mtime, now / _S, names)
            for name in [name for name in names if not _DELAYED_RE.match(name)]:
                names.remove(name)
                self._bury(dirs, f"{dirs.delayed}/{name}", (new_task_id(), 0, str(now // 1000), 0), _bad_name(name))
        names = cached[2]
        for _ in range(PROMOTE_BATCH):
            if not names or names[-1][:19] > stamp:
                break
            name = names.pop()
            if match := _DELAYED_RE.match(name):
                ready_name = f"{_next_order():019d}.{match[1]}.{match[2]}.{match[3]}"
                self._place(f"{dirs.delayed}/{name}", dirs.ready[int(match[4])], ready_name)
        full = now / _S - self._full_scan_at.get(queue, 0.0) >= 1.0  # also finds shortened extends
        if full:
            self._full_scan_at[queue] = now / _S
        reclaimed = 0
        for name in _listdir(dirs.inflight):
            if reclaimed < PROMOTE_BATCH and (full or name[:19] <= stamp) and self._reclaim(queue, dirs, name, now):
                reclaimed += 1

    def _reclaim(self, queue: str, dirs: _Dirs, name: str, now: int) -> bool:
        path = f"{dirs.inflight}/{name}"
        if not _RECEIPT_RE.match(name):
            return self._bury(dirs, path, (new_task_id(), 0, str(now // 1000), 0), _bad_name(name))
        deadline, claimed, task_id, deliveries, enq_us, priority, _ = name.split(".")
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return False
        if (mtime if mtime >= int(claimed) else int(deadline)) > now:
            return False
        with self._locked(path) as fd:
            if fd is None:
                return False
            mtime = os.fstat(fd).st_mtime_ns
            if (mtime if mtime >= int(claimed) else int(deadline)) > time.time_ns():
                return False  # extended meanwhile
            self._requeue(queue, dirs, path, fd, (task_id, int(deliveries), enq_us, int(priority)))
        logger.debug("lease of task %s in queue %s ended; ready again", task_id, queue)
        return True

    def ack(self, task: Task) -> None:
        self.ack_tasks([task])

    def ack_tasks(self, tasks: Sequence[Task]) -> None:
        synced: set[str] = set()
        with self._os_errors("ack"):
            for task in tasks:
                receipt, dirs = task.receipt, self._dirs.get(task.queue)
                # a name without "/" can only be an entry of inflight/: the full check is for strangers
                if dirs is None or not isinstance(receipt, str) or "/" in receipt or receipt.count(".") != 6:
                    if (found := self._receipt(task)) is None:
                        continue
                    dirs = found[0]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{dirs.inflight}/{receipt}")
                    synced.add(dirs.inflight)
            for path in synced:
                self._sync_dir(path)

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        with self._os_errors(f"nack task {task.id}"):
            found = self._receipt(task)
            if found is None:
                return
            dirs, path, (task_id, deliveries, enq_us, priority) = found
            meta = (task_id, deliveries - (0 if count_attempt else 1), enq_us, priority)
            with self._locked(path) as fd:
                if fd is not None:
                    self._requeue(task.queue, dirs, path, fd, meta, delay_ns=int(max(delay_s, 0) * _S))

    def extend(self, task: Task, lease_s: float) -> bool:
        with self._os_errors(f"extend the lease of task {task.id}"):
            found = self._receipt(task)
            if found is None:
                return False
            with self._locked(found[1]) as fd:
                if fd is None:
                    return False
                deadline = time.time_ns() + int(lease_s * _S)
                os.utime(fd, ns=(deadline, deadline))
                return True

    def dead(self, task: Task, reason: str) -> None:
        with self._os_errors(f"dead-letter task {task.id}"):
            found = self._receipt(task)
            if found is not None:
                self._bury(found[0], found[1], found[2], reason)

    # -- inspecting and administering -------------------------------------------------------

    def _ready_files(self, dirs: _Dirs) -> Iterator[tuple[str, str]]:
        for priority_dir in dirs.ready:
            for bucket in _listdir(priority_dir):
                for name in _listdir(f"{priority_dir}/{bucket}"):
                    yield f"{priority_dir}/{bucket}", name

    def stats(self, queue: str) -> QueueStats:
        validate_queue_name(queue)
        with self._os_errors(f"read the stats of queue {queue!r}"):
            with self._lock:
                dirs = self._queue_dirs(queue)
                if dirs is None:
                    return QueueStats()
                self._maintain(queue, dirs)
            ready = [name for _, name in self._ready_files(dirs)]
            enqueued = [int(match[3]) for match in map(_READY_RE.match, ready) if match]
            return QueueStats(
                len(ready),
                len(_listdir(dirs.delayed)),
                len(_listdir(dirs.inflight)),
                len(self._dead_names(dirs)),
                max(time.time() - min(enqueued) / 1e6, 0.0) if enqueued else None,
            )

    def _dead_names(self, dirs: _Dirs) -> list[str]:
        return sorted(name for name in _listdir(dirs.dead) if _DEAD_RE.match(name))

    def queues(self) -> list[str]:
        with self._os_errors("list queues"):
            return sorted(name for name in _listdir(f"{self.root}/queues") if _QUEUE_RE.match(name))

    def purge(self, queue: str) -> int:
        validate_queue_name(queue)
        count = 0
        with self._os_errors(f"purge queue {queue!r}"):
            dirs = self._queue_dirs(queue)
            if dirs is None:
                return 0
            files = [*self._ready_files(dirs), *((dirs.delayed, name) for name in _listdir(dirs.delayed))]
            for directory, name in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{directory}/{name}")
                    count += 1
            for directory in {directory for directory, _ in files}:
                self._sync_dir(directory)
        return count

    def dead_tasks(self, queue: str, limit: int = 100) -> list[DeadTask]:
        validate_queue_name(queue)
        result: list[DeadTask] = []
        with self._os_errors(f"read the dead letters of queue {queue!r}"):
            dirs = self._queue_dirs(queue)
            if dirs is None:
                return []
            names = self._dead_names(dirs)
            self._sweep(dirs.dead, lambda n: n.endswith(".reason") and n.removesuffix(".reason") + ".task" not in names)
            for name in names[:limit]:
                stem = f"{dirs.dead}/{name.removesuffix('.task')}"
                try:
                    with open(stem + ".task", "rb") as stream:
                        body = stream.read().decode("utf-8", "replace")
                except FileNotFoundError:
                    continue
                try:
                    with open(stem + ".reason", encoding="utf-8", errors="replace") as stream:
                        reason = stream.read()
                except FileNotFoundError:
                    reason = "(reason lost: the process died while dead-lettering)"
                parts = name.split(".")
                result.append(DeadTask(parts[1], queue, body, reason, int(parts[2]), int(parts[0]) / 1e9))
        return result

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        validate_queue_name(queue)
        wanted = None if ids is None else set(ids)
        count = 0
        with self._os_errors(f"replay the dead letters of queue {queue!r}"):
            dirs = self._queue_dirs(queue)
            if dirs is None:
                return 0
            for name in self._dead_names(dirs):
                _, task_id, _, _, priority, _ = name.split(".")
                if wanted is not None and task_id not in wanted:
                    continue
                stem, order = f"{dirs.dead}/{name.removesuffix('.task')}", _next_order()
                with contextlib.suppress(FileNotFoundError):
                    os.utime(stem + ".task", ns=(0, 0))
                    new_name = f"{order:019d}.{task_id}.0.{order // 1000}"
                    if self._place(stem + ".task", dirs.ready[int(priority)], new_name):
                        count += 1
                        os.unlink(stem + ".reason")
        return count

    def claim_once(self, key: str, ttl_s: float) -> bool:
        key, ttl = validate_claim(key, ttl_s)
        path = f"{self.root}/claims/{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        with self._os_errors("claim a key"):
            if time.monotonic() >= self._claims_swept_at + CLAIM_SWEEP_S:
                self._sweep_claims()
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, self.file_mode)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    stat = os.fstat(fd)
                    if stat.st_nlink == 0:
                        continue  # swept while we waited for the lock: open the new file
                    now = time.time_ns()
                    if stat.st_mtime_ns > now:
                        return False
                    os.utime(fd, ns=(now + int(ttl * _S), now + int(ttl * _S)))
                    if self.fsync:
                        os.fsync(fd)
                    return True
                finally:
                    os.close(fd)

    def _sweep_claims(self) -> None:
        """Remove claim files that expired over CLAIM_SWEEP_S ago (under their lock, see claim_once)."""
        self._claims_swept_at = time.monotonic()
        limit = time.time_ns() - int(CLAIM_SWEEP_S * _S)
        for name in _listdir(f"{self.root}/claims"):
            with contextlib.suppress(OSError), self._locked(f"{self.root}/claims/{name}") as fd:
                if fd is not None and os.fstat(fd).st_mtime_ns < limit:
                    os.unlink(f"{self.root}/claims/{name}")

    def close(self) -> None:
        with self._lock:
            for cache in (self._names, self._current, self._buckets, self._delayed_cache):
                cache.clear()
