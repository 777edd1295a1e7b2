"""Inspecting and administering the filesystem transport: stats, queues, purge, dead letters, claims.

:class:`FileAdmin` works on a :class:`~asynctask.transports.filesystem_layout.FileStore`; the
:class:`~asynctask.transports.filesystem.FilesystemTransport` holds one of each and calls it from
its admin hooks (layout and crash safety: see ``filesystem.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator

from asynctask.message import DeadTask, QueueStats
from asynctask.transports.filesystem_layout import (
    DEAD_RE,
    NS,
    QUEUE_RE,
    READY_RE,
    Dirs,
    FileStore,
    listdir,
    next_order,
)

CLAIM_SWEEP_S = 3600.0


class FileAdmin:
    """The inspecting and administering side of the filesystem transport, over its :class:`FileStore`.

    ``maintain(queue, dirs)`` is the fetch's maintenance (promote due delayed tasks, reclaim
    expired leases), run under the store's lock before counting, so that stats count as a fetch
    would find things.  Arguments arrive checked (the transport's public methods check them).
    """

    def __init__(self, store: FileStore, maintain: Callable[[str, Dirs], None]) -> None:
        self.store = store
        self.maintain = maintain
        self._claims_swept_at = 0.0  # time.monotonic() of this instance's last sweep of claims/

    def _ready_files(self, dirs: Dirs) -> Iterator[tuple[str, str]]:
        for priority_dir in dirs.ready:
            for bucket in listdir(priority_dir):
                for name in listdir(f"{priority_dir}/{bucket}"):
                    yield f"{priority_dir}/{bucket}", name

    def stats(self, queue: str) -> QueueStats:
        with self.store.os_errors(f"read the stats of queue {queue!r}"):
            with self.store.lock:
                dirs = self.store.queue_dirs(queue)
                if dirs is None:
                    return QueueStats()
                self.maintain(queue, dirs)
            ready = [name for _, name in self._ready_files(dirs)]
            enqueued = [int(match[3]) for match in map(READY_RE.match, ready) if match]
            return QueueStats(
                len(ready),
                len(listdir(dirs.delayed)),
                len(listdir(dirs.inflight)),
                len(self._dead_names(dirs)),
                max(time.time() - min(enqueued) / 1e6, 0.0) if enqueued else None,
            )

    def _dead_names(self, dirs: Dirs) -> list[str]:
        return sorted(name for name in listdir(dirs.dead) if DEAD_RE.match(name))

    def queues(self) -> list[str]:
        with self.store.os_errors("list queues"):
            return sorted(name for name in listdir(f"{self.store.root}/queues") if QUEUE_RE.match(name))

    def purge(self, queue: str) -> int:
        count = 0
        with self.store.os_errors(f"purge queue {queue!r}"):
            dirs = self.store.queue_dirs(queue)
            if dirs is None:
                return 0
            files = [*self._ready_files(dirs), *((dirs.delayed, name) for name in listdir(dirs.delayed))]
            for directory, name in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{directory}/{name}")
                    count += 1
            for directory in {directory for directory, _ in files}:
                self.store.sync_dir(directory)
        return count

    def dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        result: list[DeadTask] = []
        with self.store.os_errors(f"read the dead letters of queue {queue!r}"):
            dirs = self.store.queue_dirs(queue)
            if dirs is None:
                return []
            names = self._dead_names(dirs)
            # a .reason without its .task: left by a process that died while dead-lettering
            self.store.sweep(dirs.dead, lambda n: n.endswith(".reason") and n[:-7] + ".task" not in names)
            for name in names[:limit]:
                if (dead := self.read_dead(dirs, queue, name)) is not None:
                    result.append(dead)
        return result

    @staticmethod
    def read_dead(dirs: Dirs, queue: str, name: str) -> DeadTask | None:
        """The dead letter of ``dead/<name>`` (a ``.task`` name); None when it went meanwhile."""
        stem = f"{dirs.dead}/{name.removesuffix('.task')}"
        try:
            with open(stem + ".task", "rb") as stream:
                body = stream.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        try:
            with open(stem + ".reason", encoding="utf-8", errors="replace") as stream:
                reason = stream.read()
        except FileNotFoundError:
            reason = "(reason lost: the process died while dead-lettering)"
        dead_ns, task_id, deliveries, enq_us, priority, _ = name.split(".")
        return DeadTask(
            task_id, queue, body, reason, int(deliveries), int(dead_ns) / 1e9, int(priority), int(enq_us) / 1e6
        )

    def replay_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op(queue, ids, "replay", self._replay_one)

    def purge_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op(queue, ids, "purge", self._purge_one)

    def _dead_op(self, queue: str, ids: list[str] | None, verb: str, one: Callable[[Dirs, str], bool]) -> int:
        """Apply ``one`` to each chosen dead task's file name; return how many it took."""
        wanted = None if ids is None else set(ids)
        count = 0
        with self.store.os_errors(f"{verb} the dead letters of queue {queue!r}"):
            dirs = self.store.queue_dirs(queue)
            if dirs is None:
                return 0
            for name in self._dead_names(dirs):
                if (wanted is None or name.split(".")[1] in wanted) and one(dirs, name):
                    count += 1
        return count

    def _replay_one(self, dirs: Dirs, name: str) -> bool:
        _, task_id, _, _, priority, _ = name.split(".")
        stem, order = f"{dirs.dead}/{name.removesuffix('.task')}", next_order()
        ready_name = f"{order:019d}.{task_id}.0.{order // 1000}"
        try:
            os.utime(stem + ".task", ns=(0, 0))
            placed = self.store.place(stem + ".task", dirs.ready[int(priority)], ready_name)
        except FileNotFoundError:  # taken by another replay or purge meanwhile
            return False
        if placed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stem + ".reason")
        return placed is not None

    @staticmethod
    def _purge_one(dirs: Dirs, name: str) -> bool:
        stem = f"{dirs.dead}/{name.removesuffix('.task')}"
        # The body first: a .reason left alone by a crash here is no dead task.
        try:
            os.unlink(stem + ".task")
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stem + ".reason")
        return True

    def claim_once(self, key: str, ttl_s: float) -> bool:
        path = f"{self.store.root}/claims/{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        with self.store.os_errors("claim a key"):
            if time.monotonic() >= self._claims_swept_at + CLAIM_SWEEP_S:
                self._sweep_claims()
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, self.store.file_mode)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    stat = os.fstat(fd)
                    if stat.st_nlink == 0:
                        continue  # swept while we waited for the lock: open the new file
                    now = time.time_ns()
                    if stat.st_mtime_ns > now:
                        return False
                    os.utime(fd, ns=(now + int(ttl_s * NS), now + int(ttl_s * NS)))
                    if self.store.fsync:
                        os.fsync(fd)
                    return True
                finally:
                    os.close(fd)

    def _sweep_claims(self) -> None:
        """Remove claim files that expired over CLAIM_SWEEP_S ago (under their lock, see claim_once)."""
        self._claims_swept_at = time.monotonic()
        limit = time.time_ns() - int(CLAIM_SWEEP_S * NS)
        for name in listdir(f"{self.store.root}/claims"):
            with contextlib.suppress(OSError), self.store.locked(f"{self.store.root}/claims/{name}") as fd:
                if fd is not None and os.fstat(fd).st_mtime_ns < limit:
                    os.unlink(f"{self.store.root}/claims/{name}")
