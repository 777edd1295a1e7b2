"""The embedded default: ``filesys:/abs/dir``, ``filesys:relative/dir``, ``file:///abs/dir``.

Queues are files in a directory on a local POSIX filesystem; no server is needed.  Several processes
on one host may submit to and consume the same queues at once.  Options (URL query): ``lease_s``
(default lease, seconds), ``fsync`` (0/1: also fsync files and directories, surviving power loss
and not only process crashes), ``mode`` (file mode in octal, ``0o600`` by default; directories get
the matching ``x`` bits, so ``mode=0o660`` gives ``0o770`` directories).  A relative path is taken
from the current directory when the transport is opened.

Layout under the root (names sort as shown; every field is fixed width or dot-separated)::

    tmp/<pid>.<n>.<rand>                      files being written; never read as tasks
    claims/<sha256(key)[:40]>                 claim_once: flock'ed; mtime = the claim's expiry
    queues/<queue>/ready/<priority 0..9>/<order_ns>.<id>.<deliveries>.<enqueued_us>
    queues/<queue>/delayed/<due_ns>.<id>.<deliveries>.<enqueued_us>.<priority>
    queues/<queue>/inflight/<deadline_ns>.<claimed_ns>.<id>.<deliveries>.<enqueued_us>.<priority>.<nonce>
    queues/<queue>/dead/<dead_ns>.<id>.<deliveries>.<enqueued_us>.<priority>.task   (the body)
    queues/<queue>/dead/<same stem>.reason                                           (the reason)

A task file holds only the JSON body; everything else is in its name, so every state change is one
``rename``.  ``order_ns`` is a per-process strictly increasing wall-clock key (FIFO), ``deliveries``
counts deliveries so far.  The in-flight file name is the delivery's receipt (portable: any process
may ack it).  Its lease ends at ``deadline_ns`` unless ``extend`` set the file's mtime to a later or
earlier instant: the mtime counts when it is >= ``claimed_ns`` (a file's own write time is always
earlier than its claim, and every move out of in-flight resets the mtime to 0).

Operations, and why a crash (SIGKILL) at any instant is safe:

* submit: write ``tmp/x`` (``fsync=1``: fsync it), then ``rename`` into ``ready/<p>/`` or
  ``delayed/`` (``fsync=1``: fsync that directory).  Killed before the rename, only a ``tmp`` file
  remains (swept after 10 minutes): no half task is ever visible.
* claim: ``rename`` ``ready/<p>/<name>`` to ``inflight/<name with deadline and fresh nonce>``, then
  read it.  rename is atomic, so of two consumers exactly one wins; the loser gets ENOENT and skips.
  Killed after the rename, the task is redelivered when its lease ends.
* ack: ``unlink`` the receipt.  An ack of a lost delivery finds no such name: a no-op.
* nack, lease expiry: under ``flock`` of the in-flight file, check it is still there (and expired),
  reset its mtime, ``rename`` it back to ``ready``/``delayed``.  ``extend`` takes the same lock and
  checks the name still exists before setting the mtime, so an extend and a reclaim never both win.
* dead: write ``<stem>.reason`` (tmp + rename), then ``rename`` the in-flight file to
  ``<stem>.task``.  Killed between the two, the task stays in flight (redelivered later) and the
  lone ``.reason`` is ignored and swept.  Only ``.task`` files count as dead letters.
* replay_dead: reset mtime, ``rename`` ``.task`` into ``ready`` (deliveries 0), unlink ``.reason``.

Cost: each transport keeps, per queue and priority, the sorted listing of a ready directory and takes
names from it until it is empty; only then is the directory listed again, so a claim costs one
rename and one read whatever the backlog (listing is O(n log n) once per n tasks).  Each fetch lists
the (normally empty) higher-priority directories, so a new urgent task is seen at once.  Delayed
tasks and expired leases are promoted by fetches in batches of at most 1000; ``delayed/`` is listed
again only when its mtime changed, its head is due, or once a second; ``inflight/`` (small: what
consumers hold) is listed on each fetch and stat'ed fully once a second.  A waiting fetch polls with
:class:`~asynctask.transports.base.Backoff` (at most 50 ms between looks).  Names that are not task
names (not starting with ``.``) and bodies that do not decode go to the dead letters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
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
_S = 1_000_000_000
_RECEIPT_RE = re.compile(r"\d{19}\.\d{19}\.[0-9A-Za-z_-]{1,64}\.\d{1,9}\.\d{1,19}\.\d\.[0-9a-f]{1,32}\Z", re.ASCII)
_READY_RE = re.compile(r"\d{19}\.([0-9A-Za-z_-]{1,64})\.(\d{1,9})\.(\d{1,19})\Z", re.ASCII)
_DELAYED_RE = re.compile(r"\d{19}\.([0-9A-Za-z_-]{1,64})\.(\d{1,9})\.(\d{1,19})\.(\d)\Z", re.ASCII)
_QUEUE_RE = re.compile(r"[a-z](?:_?[a-z0-9])+\Z")
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
    text = value.lower().removeprefix("0o")
    try:
        mode = int(text, 8)
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
    except FileNotFoundError:
        return []


class FilesystemTransport(Transport):
    """Queues as files under one directory; safe across threads and processes of one host."""

    schemes = ("filesys", "file")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        options = take_options(
            parsed, {"lease_s": option_positive_float, "fsync": option_bool, "mode": option_mode}
        )
        forms = "use filesys:/abs/dir, filesys:relative/dir or file:///abs/dir"
        if urlsplit(url).netloc:
            raise TransportURLError(f"transport URL {parsed.masked!r} has a host part: {forms}")
        if not parsed.path:
            raise TransportURLError(f"transport URL {parsed.masked!r} names no directory: {forms}")
        if parsed.scheme == "file" and not parsed.path.startswith("/"):
            raise TransportURLError(f"transport URL {parsed.masked!r}: a file: URL takes an absolute path: {forms}")
        self.lease_s = options.get("lease_s", self.lease_s)
        self.fsync: bool = options.get("fsync", False)
        self.file_mode: int = options.get("mode", 0o600)
        self.dir_mode = self.file_mode | ((self.file_mode & 0o444) >> 2)
        self.root = os.path.abspath(parsed.path)
        self._tmp = os.path.join(self.root, "tmp")
        self._lock = threading.Lock()
        self._ready_cache: dict[tuple[str, int], list[str]] = {}
        self._delayed_cache: dict[str, tuple[int, float, list[str]]] = {}
        self._inflight_full_at: dict[str, float] = {}
        self._known: set[str] = set()
        with self._os_errors("open the store"):
            for sub in ("tmp", "claims", "queues"):
                self._makedir(os.path.join(self.root, sub))
            self._sweep(self._tmp, lambda name: True)

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise TransportError(f"filesystem transport at {self.root}: cannot {action}: {exc}") from None

    def _makedir(self, path: str) -> None:
        if not os.path.isdir(path):
            os.makedirs(path, mode=self.dir_mode, exist_ok=True)
            os.chmod(path, self.dir_mode)

    def _qdir(self, queue: str, *parts: str) -> str:
        return os.path.join(self.root, "queues", queue, *parts)

    def _ensure_queue(self, queue: str) -> None:
        if queue in self._known and os.path.isdir(self._qdir(queue, "dead")):
            return
        self._makedir(self._qdir(queue))
        for sub in [*(f"ready/{p}" for p in PRIORITIES), "delayed", "inflight", "dead"]:
            self._makedir(self._qdir(queue, *sub.split("/")))
        self._known.add(queue)

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_new(self, data: bytes) -> str:
        """Write ``data`` to a fresh file in tmp/ and return its path (to be renamed into place)."""
        path = os.path.join(self._tmp, f"{os.getpid()}.{next(_counter)}.{os.urandom(4).hex()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _sweep(self, directory: str, wanted: Any) -> None:
        """Remove files in ``directory`` older than TMP_MAX_AGE_S for which ``wanted(name)`` holds."""
        limit = time.time() - TMP_MAX_AGE_S
        for name in _listdir(directory):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if wanted(name) and os.stat(path).st_mtime < limit:
                    os.unlink(path)

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

    def _receipt_path(self, task: Task) -> str | None:
        validate_queue_name(task.queue)
        if not isinstance(task.receipt, str) or not _RECEIPT_RE.match(task.receipt):
            return None
        return self._qdir(task.queue, "inflight", task.receipt)

    def _requeue(self, queue: str, src: str, fd: int, meta: tuple[str, int, str, int], delay_ns: int) -> None:
        """Move a locked in-flight file back to ready (or delayed); meta = (id, deliveries, enq_us, p)."""
        task_id, deliveries, enq_us, priority = meta
        os.utime(fd, ns=(0, 0))
        if delay_ns > 0:
            due = time.time_ns() + delay_ns
            dst = self._qdir(queue, "delayed", f"{due:019d}.{task_id}.{deliveries}.{enq_us}.{priority}")
            self._delayed_cache.pop(queue, None)
        else:
            dst = self._qdir(queue, "ready", str(priority), f"{_next_order():019d}.{task_id}.{deliveries}.{enq_us}")
        os.rename(src, dst)
        self._sync_dir(os.path.dirname(dst))

    def _bury(self, queue: str, src: str, meta: tuple[str, int, str, int], reason: str) -> bool:
        """Reason first, then the body: a crash between leaves the task where it was."""
        task_id, deliveries, enq_us, priority = meta
        stem = self._qdir(queue, "dead", f"{time.time_ns():019d}.{task_id}.{deliveries}.{enq_us}.{priority}")
        os.rename(self._write_new(reason.encode("utf-8", "replace")), stem + ".reason")
        try:
            os.rename(src, stem + ".task")
        except FileNotFoundError:
            os.unlink(stem + ".reason")
            return False
        self._sync_dir(os.path.dirname(stem))
        return True

    # -- producing --------------------------------------------------------------------------

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        ids: list[str] = []
        with self._os_errors(f"submit to queue {queue!r}"):
            self._ensure_queue(queue)
            due = time.time_ns() + int(delay_s * _S) if delay_s > 0 else 0
            target = self._qdir(queue, "delayed") if due else self._qdir(queue, "ready", str(priority))
            for body in bodies:
                task_id = new_task_id()
                order = _next_order()
                if due:
                    name = f"{due:019d}.{task_id}.0.{order // 1000}.{priority}"
                else:
                    name = f"{order:019d}.{task_id}.0.{order // 1000}"
                os.rename(self._write_new(body.encode("utf-8")), os.path.join(target, name))
                ids.append(task_id)
            self._sync_dir(target)
            if due:
                self._delayed_cache.pop(queue, None)
        return ids

    # -- consuming --------------------------------------------------------------------------

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        backoff: Backoff | None = None
        while True:
            with self._lock, self._os_errors(f"fetch from queue {queue!r}"):
                tasks = self._take(queue, max_count, int(lease_s * _S))
            if tasks or timeout_s <= 0:
                return tasks
            backoff = backoff or Backoff(timeout_s)
            if not backoff.wait():
                return []

    def _take(self, queue: str, max_count: int, lease_ns: int) -> list[Task]:
        if not os.path.isdir(self._qdir(queue, "inflight")):
            return []
        self._maintain(queue)
        now = time.time_ns()
        tasks: list[Task] = []
        for priority in PRIORITIES:
            buffer = self._ready_cache.get((queue, priority))
            listed = False
            while len(tasks) < max_count:
                if not buffer:
                    if listed:
                        break
                    buffer = sorted(_listdir(self._qdir(queue, "ready", str(priority))), reverse=True)
                    self._ready_cache[(queue, priority)] = buffer
                    listed = True
                    if not buffer:
                        break
                task = self._claim(queue, priority, buffer.pop(), now, lease_ns)
                if task is not None:
                    tasks.append(task)
            if len(tasks) >= max_count:
                break
        return tasks

    def _claim(self, queue: str, priority: int, name: str, now: int, lease_ns: int) -> Task | None:
        src = self._qdir(queue, "ready", str(priority), name)
        match = _READY_RE.match(name)
        bad_name = match is None
        if match is None:
            task_id, deliveries, enq_us = new_task_id(), 1, str(now // 1000)
        else:
            task_id, deliveries, enq_us = match[1], int(match[2]) + 1, match[3]
        receipt = f"{now + lease_ns:019d}.{now:019d}.{task_id}.{deliveries}.{enq_us}.{priority}.{os.urandom(4).hex()}"
        dst = self._qdir(queue, "inflight", receipt)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return None  # another consumer won it
        meta = (task_id, deliveries, enq_us, priority)
        if bad_name:
            reason = dead_reason_for_undecodable(ValueError(f"file name {name!r} is not a task file name"))
            self._bury(queue, dst, meta, reason)
            return None
        fd = os.open(dst, os.O_RDONLY)
        try:
            chunks = [os.read(fd, 1 << 16)]
            while len(chunks[-1]) == 1 << 16:
                chunks.append(os.read(fd, 1 << 16))
        finally:
            os.close(fd)
        try:
            payload = decode_payload(b"".join(chunks))
        except TaskDecodeError as exc:
            self._bury(queue, dst, meta, dead_reason_for_undecodable(exc))
            return None
        return Task(task_id, queue, payload, deliveries, int(enq_us) / 1e6, priority, receipt)

    def _maintain(self, queue: str) -> None:
        """Promote due delayed tasks and reclaim expired leases, each at most PROMOTE_BATCH."""
        now = time.time_ns()
        stamp = f"{now:019d}"
        # Delayed: list again only when something may have changed or come due.
        delayed_dir = self._qdir(queue, "delayed")
        mtime = os.stat(delayed_dir).st_mtime_ns
        cached = self._delayed_cache.get(queue)
        if (
            cached is None
            or cached[0] != mtime
            or now / _S - cached[1] >= 1.0
            or (cached[2] and cached[2][-1][:19] <= stamp)
        ):
            cached = (mtime, now / _S, sorted(_listdir(delayed_dir), reverse=True))
            self._delayed_cache[queue] = cached
        names = cached[2]
        for _ in range(PROMOTE_BATCH):
            if not names or names[-1][:19] > stamp:
                break
            name = names.pop()
            src = os.path.join(delayed_dir, name)
            match = _DELAYED_RE.match(name)
            if match is None:
                meta = (new_task_id(), 0, str(now // 1000), 0)
                reason = dead_reason_for_undecodable(ValueError(f"file name {name!r} is not a task file name"))
                self._bury(queue, src, meta, reason)
                continue
            dst = self._qdir(queue, "ready", match[4], f"{_next_order():019d}.{match[1]}.{match[2]}.{match[3]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(src, dst)
        # In flight: names whose deadline passed, plus (once a second) every one, for shortened extends.
        inflight_dir = self._qdir(queue, "inflight")
        full = now / _S - self._inflight_full_at.get(queue, 0.0) >= 1.0
        if full:
            self._inflight_full_at[queue] = now / _S
        reclaimed = 0
        for name in _listdir(inflight_dir):
            if reclaimed >= PROMOTE_BATCH:
                break
            if not full and name[:19] > stamp:
                continue
            if self._reclaim(queue, inflight_dir, name, now):
                reclaimed += 1

    def _reclaim(self, queue: str, inflight_dir: str, name: str, now: int) -> bool:
        path = os.path.join(inflight_dir, name)
        if not _RECEIPT_RE.match(name):
            meta = (new_task_id(), 0, str(now // 1000), 0)
            reason = dead_reason_for_undecodable(ValueError(f"file name {name!r} is not a task file name"))
            return self._bury(queue, path, meta, reason)
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
            self._requeue(queue, path, fd, (task_id, int(deliveries), enq_us, int(priority)), 0)
            logger.debug("lease of task %s in queue %s expired; ready again", task_id, queue)
            return True

    def ack(self, task: Task) -> None:
        self.ack_tasks([task])

    def ack_tasks(self, tasks: Sequence[Task]) -> None:
        dirs = set()
        with self._os_errors("ack"):
            for task in tasks:
                path = self._receipt_path(task)
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        dirs.add(os.path.dirname(path))
            for directory in dirs:
                self._sync_dir(directory)

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        path = self._receipt_path(task)
        if path is None:
            return
        _, _, task_id, deliveries, enq_us, priority, _ = task.receipt.split(".")
        meta = (task_id, int(deliveries) - (0 if count_attempt else 1), enq_us, int(priority))
        with self._os_errors(f"nack task {task.id}"), self._locked(path) as fd:
            if fd is not None:
                self._requeue(task.queue, path, fd, meta, int(max(delay_s, 0) * _S))

    def extend(self, task: Task, lease_s: float) -> bool:
        path = self._receipt_path(task)
        if path is None:
            return False
        with self._os_errors(f"extend the lease of task {task.id}"), self._locked(path) as fd:
            if fd is None:
                return False
            deadline = time.time_ns() + int(lease_s * _S)
            os.utime(fd, ns=(deadline, deadline))
            return True

    def dead(self, task: Task, reason: str) -> None:
        path = self._receipt_path(task)
        if path is None:
            return
        _, _, task_id, deliveries, enq_us, priority, _ = task.receipt.split(".")
        with self._os_errors(f"dead-letter task {task.id}"):
            self._bury(task.queue, path, (task_id, int(deliveries), enq_us, int(priority)), reason)

    # -- inspecting and administering -------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        validate_queue_name(queue)
        with self._os_errors(f"read the stats of queue {queue!r}"):
            if not os.path.isdir(self._qdir(queue, "inflight")):
                return QueueStats()
            with self._lock:
                self._maintain(queue)
            ready = [name for p in PRIORITIES for name in _listdir(self._qdir(queue, "ready", str(p)))]
            enqueued = [int(match[3]) for match in map(_READY_RE.match, ready) if match]
            oldest = max(time.time() - min(enqueued) / 1e6, 0.0) if enqueued else None
            return QueueStats(
                len(ready),
                len(_listdir(self._qdir(queue, "delayed"))),
                len(_listdir(self._qdir(queue, "inflight"))),
                len(self._dead_names(queue)),
                oldest,
            )

    def _dead_names(self, queue: str) -> list[str]:
        return sorted(name for name in _listdir(self._qdir(queue, "dead")) if name.endswith(".task"))

    def queues(self) -> list[str]:
        with self._os_errors("list queues"):
            names = _listdir(os.path.join(self.root, "queues"))
        return sorted(name for name in names if _QUEUE_RE.match(name) and len(name) <= 100)

    def purge(self, queue: str) -> int:
        validate_queue_name(queue)
        count = 0
        with self._os_errors(f"purge queue {queue!r}"):
            dirs = [self._qdir(queue, "ready", str(p)) for p in PRIORITIES] + [self._qdir(queue, "delayed")]
            for directory in dirs:
                for name in _listdir(directory):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(directory, name))
                        count += 1
                if os.path.isdir(directory):
                    self._sync_dir(directory)
        return count

    def dead_tasks(self, queue: str, limit: int = 100) -> list[DeadTask]:
        validate_queue_name(queue)
        result: list[DeadTask] = []
        with self._os_errors(f"read the dead letters of queue {queue!r}"):
            dead_dir = self._qdir(queue, "dead")
            names = self._dead_names(queue)
            self._sweep(dead_dir, lambda n: n.endswith(".reason") and n[: -len(".reason")] + ".task" not in names)
            for name in names:
                if len(result) >= limit:
                    break
                stem = os.path.join(dead_dir, name[: -len(".task")])
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
            for name in self._dead_names(queue):
                _, task_id, _, _, priority, _ = name.split(".")
                if wanted is not None and task_id not in wanted:
                    continue
                stem = self._qdir(queue, "dead", name[: -len(".task")])
                order = _next_order()
                dst = self._qdir(queue, "ready", priority, f"{order:019d}.{task_id}.0.{order // 1000}")
                try:
                    os.utime(stem + ".task", ns=(0, 0))
                    os.rename(stem + ".task", dst)
                except FileNotFoundError:
                    continue
                count += 1
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stem + ".reason")
        return count

    def claim_once(self, key: str, ttl_s: float) -> bool:
        key, ttl = validate_claim(key, ttl_s)
        path = os.path.join(self.root, "claims", hashlib.sha256(key.encode()).hexdigest()[:40])
        with self._os_errors("claim a key"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, self.file_mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                now = time.time_ns()
                if os.fstat(fd).st_mtime_ns > now:
                    return False
                expiry = now + int(ttl * _S)
                os.utime(fd, ns=(expiry, expiry))
                if self.fsync:
                    os.fsync(fd)
                return True
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._ready_cache.clear()
            self._delayed_cache.clear()
