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
    state/<q>/...                         keyed state (records with a TTL): see ``filesystem_state.py``

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
* cancel: ``rename`` the ready or delayed file into ``tmp/``, then unlink it: a claim is a rename of
  the same file, so exactly one of the two wins (``filesystem_state.py``).
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
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from asynctask.errors import TaskDecodeError
from asynctask.message import MAX_PRIORITY, Task, decode_body, new_task_id
from asynctask.transports.admin import AdminHooks
from asynctask.transports.base import Backoff, Transport, dead_reason_for_undecodable
from asynctask.transports.filesystem_admin import FileAdmin
from asynctask.transports.filesystem_layout import (
    BUCKET_SHIFT,
    DELAYED_RE,
    NS,
    READY_RE,
    RECEIPT_RE,
    Dirs,
    FileStore,
    bad_name,
    counter,
    listdir,
    new_task,
    next_order,
    option_mode,
    parse_filesys_url,
    stray_meta,
)
from asynctask.transports.filesystem_state import FileStateHooks
from asynctask.transports.filesystem_transfer import FilesystemTransfer

__all__ = ["BUCKET_SHIFT", "FilesystemTransport", "option_mode"]

logger = logging.getLogger(__name__)

PRIORITIES = range(MAX_PRIORITY, -1, -1)
PROMOTE_BATCH = 1000


class FilesystemTransport(FilesystemTransfer, AdminHooks, FileStateHooks, Transport):
    """Queues as files under one directory; safe across threads and processes of one host.

    It holds a :class:`FileStore` (paths and atomic moves) and a :class:`FileAdmin` (inspection
    and administration over that store, which answers the admin hooks: :class:`AdminHooks`); the
    keyed state and cancel are :class:`FileStateHooks` (``filesystem_state.py``), moving tasks
    between stores :class:`FilesystemTransfer` (``filesystem_transfer.py``); the fetch
    (``_take`` and the maintenance it runs) lives here.
    """

    schemes = ("filesys", "file")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        root, options = parse_filesys_url(url)
        self.lease_s = options.get("lease_s", self.lease_s)
        self.store = FileStore(root, fsync=options.get("fsync", False), file_mode=options.get("mode", 0o600))
        self.admin = FileAdmin(self.store, self._maintain)
        self.root, self.fsync, self.file_mode = root, self.store.fsync, self.store.file_mode
        self._names: dict[tuple[str, int], list[str]] = {}  # sorted names of the current bucket, reversed
        self._current: dict[tuple[str, int], str] = {}  # the bucket being taken from
        self._buckets: dict[tuple[str, int], list[str]] = {}  # later buckets, reversed
        self._full_scan_at: dict[str, float] = {}

    # -- producing --------------------------------------------------------------------------

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        ids: list[str] = []
        with self.store.os_errors(f"submit to queue {queue!r}"):
            dirs = self.store.queue_dirs(queue, create=True)  # one stat: the queue may have been removed by hand
            assert dirs is not None
            due = time.time_ns() + int(delay_s * NS) if delay_s > 0 else 0
            touched = {dirs.delayed} if due else set()
            for body in bodies:
                task_id, order = new_task_id(), next_order()
                src = self.store.write_new(body.encode("utf-8"))
                if due:
                    try:
                        os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.0.{order // 1000}.{priority}")
                    except FileNotFoundError:  # the queue was removed under us: make it again
                        self.store.queue_dirs(queue, create=True)
                        os.rename(src, f"{dirs.delayed}/{due:019d}.{task_id}.0.{order // 1000}.{priority}")
                elif bucket := self.store.place(src, dirs.ready[priority], f"{order:019d}.{task_id}.0.{order // 1000}"):
                    touched.add(bucket)
                ids.append(task_id)
            for path in touched:
                self.store.sync_dir(path)
            if due:
                self.store.delayed_cache.pop(queue, None)
        return ids

    # -- consuming --------------------------------------------------------------------------

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        backoff: Backoff | None = None
        while True:
            with self.store.lock, self.store.os_errors(f"fetch from queue {queue!r}"):
                dirs = self.store.queue_dirs(queue)
                tasks = self._take(queue, dirs, max_count, int(lease_s * NS)) if dirs else []
            if tasks or timeout_s <= 0:
                return tasks
            backoff = backoff or Backoff(timeout_s)
            if not backoff.wait():
                return []

    def _take(self, queue: str, dirs: Dirs, max_count: int, lease_ns: int) -> list[Task]:
        try:
            self._maintain(queue, dirs)
        except FileNotFoundError:  # the queue's directories were removed by hand: look again next time
            self.store.queue_cache.pop(queue, None)
            return []
        now = time.time_ns()
        tasks: list[Task] = []
        listed: set[str] = set()
        for priority in PRIORITIES:
            key = (queue, priority)
            while len(tasks) < max_count and (self._names.get(key) or self._refill(key, dirs, listed)):
                self._claim(queue, dirs, key, tasks, max_count, f"{now + lease_ns:019d}.{now:019d}.")
        return tasks

    def _refill(self, key: tuple[str, int], dirs: Dirs, listed: set[str]) -> bool:
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
                        self.store.bury(dirs, bucket, stray_meta(), bad_name(bucket))
                    elif names := sorted(listdir(bucket), reverse=True):
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
                buckets = self._buckets[key] = sorted(listdir(priority_dir), reverse=True)
                if not buckets:
                    return False
            self._current[key] = f"{dirs.ready[key[1]]}/{buckets.pop()}"

    def _claim(self, queue: str, dirs: Dirs, key: tuple[str, int], tasks: list[Task], *args: Any) -> None:
        """Claim names of the current bucket of ``key`` into ``tasks`` until it holds ``max_count``.

        The hot loop: one rename, one read per task.  args = (max_count, receipt prefix).
        """
        max_count, prefix = args
        priority, bucket, names, inflight = key[1], self._current[key], self._names[key], dirs.inflight
        suffix = f".{priority}.{self.store.pid:x}"
        while names and len(tasks) < max_count:
            name = names.pop()
            match = READY_RE.match(name)
            if match is None:
                task_id, deliveries, enq_us = new_task_id(), 1, str(time.time_ns() // 1000)
            else:
                task_id, deliveries, enq_us = match[1], int(match[2]) + 1, match[3]
            receipt = f"{prefix}{task_id}.{deliveries}.{enq_us}{suffix}{next(counter) & 0xFFFFFFFF:08x}"
            path = f"{inflight}/{receipt}"
            try:
                os.rename(f"{bucket}/{name}", path)
            except FileNotFoundError:
                continue  # another consumer won it
            if match is None:
                self.store.bury(dirs, path, (task_id, deliveries, enq_us, priority), bad_name(name))
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
                payload, meta = decode_body(data)
            except TaskDecodeError as exc:
                self.store.bury(dirs, path, (task_id, deliveries, enq_us, priority), dead_reason_for_undecodable(exc))
                continue
            tasks.append(new_task(task_id, queue, payload, deliveries, int(enq_us) / 1e6, priority, receipt, meta))

    def _maintain(self, queue: str, dirs: Dirs) -> None:
        """Promote due delayed tasks and reclaim expired leases, at most PROMOTE_BATCH of each."""
        now = time.time_ns()
        stamp = f"{now:019d}"
        mtime = os.stat(dirs.delayed).st_mtime_ns
        cached = self.store.delayed_cache.get(queue)
        if (
            cached is None
            or cached[0] != mtime
            or now / NS - cached[1] >= 1.0
            or (cached[2] and cached[2][-1][:19] <= stamp)
        ):
            names = sorted(listdir(dirs.delayed), reverse=True)
            cached = self.store.delayed_cache[queue] = (mtime, now / NS, names)
            for name in [name for name in names if not DELAYED_RE.match(name)]:
                names.remove(name)
                self.store.bury(dirs, f"{dirs.delayed}/{name}", stray_meta(), bad_name(name))
        names = cached[2]
        for _ in range(PROMOTE_BATCH):
            if not names or names[-1][:19] > stamp:
                break
            name = names.pop()
            if match := DELAYED_RE.match(name):
                ready_name = f"{next_order():019d}.{match[1]}.{match[2]}.{match[3]}"
                self.store.place(f"{dirs.delayed}/{name}", dirs.ready[int(match[4])], ready_name)
        full = now / NS - self._full_scan_at.get(queue, 0.0) >= 1.0  # also finds shortened extends
        if full:
            self._full_scan_at[queue] = now / NS
        reclaimed = 0
        for name in listdir(dirs.inflight):
            if reclaimed < PROMOTE_BATCH and (full or name[:19] <= stamp) and self._reclaim(queue, dirs, name, now):
                reclaimed += 1

    def _reclaim(self, queue: str, dirs: Dirs, name: str, now: int) -> bool:
        path = f"{dirs.inflight}/{name}"
        if not RECEIPT_RE.match(name):
            return self.store.bury(dirs, path, stray_meta(), bad_name(name))
        deadline, claimed, task_id, deliveries, enq_us, priority, _ = name.split(".")
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return False
        if (mtime if mtime >= int(claimed) else int(deadline)) > now:
            return False
        with self.store.locked(path) as fd:
            if fd is None:
                return False
            mtime = os.fstat(fd).st_mtime_ns
            if (mtime if mtime >= int(claimed) else int(deadline)) > time.time_ns():
                return False  # extended meanwhile
            self.store.requeue(dirs, path, fd, (task_id, int(deliveries), enq_us, int(priority)))
        logger.debug("lease of task %s in queue %s ended; ready again", task_id, queue)
        return True

    def _ack(self, task: Task) -> None:
        self._ack_tasks([task])

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        synced: set[str] = set()
        with self.store.os_errors("ack"):
            for task in tasks:
                receipt, dirs = task.receipt, self.store.queue_cache.get(task.queue)
                # a name without "/" can only be an entry of inflight/: the full check is for strangers
                if dirs is None or not isinstance(receipt, str) or "/" in receipt or receipt.count(".") != 6:
                    if (found := self.store.delivery(task)) is None:
                        continue
                    dirs = found[0]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{dirs.inflight}/{receipt}")
                    synced.add(dirs.inflight)
            for path in synced:
                self.store.sync_dir(path)

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        with self.store.os_errors(f"nack task {task.id}"):
            found = self.store.delivery(task)
            if found is None:
                return
            dirs, path, (task_id, deliveries, enq_us, priority) = found
            meta = (task_id, deliveries - (0 if count_attempt else 1), enq_us, priority)
            with self.store.locked(path) as fd:
                if fd is not None:
                    self.store.requeue(dirs, path, fd, meta, delay_ns=int(delay_s * NS))

    def _extend(self, task: Task, lease_s: float) -> bool:
        with self.store.os_errors(f"extend the lease of task {task.id}"):
            found = self.store.delivery(task)
            if found is None:
                return False
            with self.store.locked(found[1]) as fd:
                if fd is None:
                    return False
                deadline = time.time_ns() + int(lease_s * NS)
                os.utime(fd, ns=(deadline, deadline))
                return True

    def _dead(self, task: Task, reason: str) -> None:
        with self.store.os_errors(f"dead-letter task {task.id}"):
            found = self.store.delivery(task)
            if found is not None:
                self.store.bury(found[0], found[1], found[2], reason)

    def close(self) -> None:
        """Forget the cached listings (the next call lists again).  Idempotent."""
        with self.store.lock:
            for cache in (self._names, self._current, self._buckets, self.store.delayed_cache):
                cache.clear()
            self._forget_transfer_listings()
