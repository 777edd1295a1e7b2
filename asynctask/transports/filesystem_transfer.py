"""The transfer hooks of the filesystem transport (:mod:`asynctask.transports.transfer`).

Every step is one of the atomic moves of ``filesystem.py`` (its docstring has the layout):

* take: ``rename`` each ready file (priority 9 to 0, FIFO) and then each delayed file (soonest due
  first) to an in-flight name that keeps its delivery count (a take is no attempt), then read it.
  rename is atomic: of a take and a worker's claim exactly one wins.  The receipt is an ordinary
  in-flight name, so ``ack`` unlinks it and an expired take lease is reclaimed, ready again with the
  same count, by the next fetch's maintenance (a take runs it too).  The store's lock (threads of
  this process) is held for the renames only; the files are read after.
* put: write ``tmp/x``, ``rename`` it into a ready bucket (order: now, so FIFO after what is there)
  or into ``delayed/``, with the record's id, attempts, enqueued time (0, unknown, is stored as now)
  and priority in the name.  An id the queue holds (ready, delayed, in flight or dead) is skipped:
  the ids come from the listings of those directories, cached while a directory's mtime stays the
  same (see below).  Two processes putting the same record at the same instant may both store it.
* put_dead: as ``bury``: the ``.reason`` first, then the ``.task`` (named by the record's dead_at).

Paging.  ``peek_tasks`` walks ``delayed/`` (by due time) and then the ready buckets (priority 9 to
0, FIFO); its cursor is the last file name seen.  ``dead_page`` walks ``dead/`` by time of death;
its cursor is the last ``.task`` name.  A task moved while paging (promoted, nacked) may be seen
twice, and one added may or may not be seen, as the contract allows.

Cost.  A directory listing is kept (per transport) and used again while the directory's mtime is
the same and was already in the past when it was listed (a change within the same clock tick would
not move the mtime).  A take of 1000: 1000 renames and 1000 reads, the fetch's maintenance (it lists
``inflight/``, and ``delayed/`` when others changed it), the ten (normally empty) priority
directories, and a bucket only when its cached names run out (about once per bucket: 1.07 s of
submissions).  A put of 1000: 1000 writes and renames, a ``stat`` of each directory of the queue,
and a listing of those that changed (the bucket it wrote last, ``inflight/`` while workers run).
A page of 100 dead letters: a ``stat`` of ``dead/``, a bisection, 200 small reads (~4 ms); ``dead/``
is listed in full (~0.1-0.3 s with 100,000 dead letters) only on the first page a transport serves
or when it changed since.  A peek page of N: N reads, listing only the directories that changed.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asynctask.errors import PayloadError, TaskDecodeError
from asynctask.message import MAX_PRIORITY, DeadTask, Task, decode_body, validate_priority
from asynctask.transports.filesystem_admin import FileAdmin
from asynctask.transports.filesystem_layout import (
    DEAD_RE,
    DELAYED_RE,
    NS,
    READY_RE,
    Dirs,
    FileStore,
    bad_name,
    counter,
    listdir,
    new_task,
    next_order,
    stray_meta,
)
from asynctask.transports.transfer import TaskRecord, Transfer

__all__ = ["FilesystemTransfer"]

_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}\Z", re.ASCII)
_CURSOR_RE = re.compile(r"(?:d|r(\d)/(\d{12}))/(\S*)\Z", re.ASCII)
_SETTLED_NS = 50_000_000  # a directory changed this recently may change again without its mtime moving
_MAX_NS = 10**19 - 1  # the largest 19-digit time in a name
_MAX_DELIVERIES = 999_999_999
_MAX_CACHED_DIRS = 10_000  # per queue; past it the cache of the queue starts again


@dataclass
class _Listing:
    """One directory's names (``.`` files left out), as listed when its mtime was ``mtime``."""

    mtime: int
    trusted: bool  # the mtime was already in the past when listed: reuse while it is unchanged
    names: list[str]
    _sorted: list[str] | None = field(default=None, repr=False)
    _ids: dict[int, frozenset[str]] = field(default_factory=dict, repr=False)

    def in_order(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.names)
        return self._sorted

    def ids(self, position: int) -> frozenset[str]:
        """The task ids in the names: the ``position``-th dot-separated field."""
        if position not in self._ids:
            fields = (name.split(".", position + 1) for name in self.names)
            self._ids[position] = frozenset(parts[position] for parts in fields if len(parts) > position)
        return self._ids[position]


_Claim = tuple[str, str, int, float]  # receipt, id, priority, delay left


@dataclass
class _Take:
    """One take_tasks call: where, how many, the receipt prefix (lease end, now) and what it claimed."""

    dirs: Dirs
    max_count: int
    prefix: str
    now: int
    claimed: list[_Claim] = field(default_factory=list)


class FilesystemTransfer(Transfer):
    """Mixin of :class:`~asynctask.transports.filesystem.FilesystemTransport` (listed before it)."""

    store: FileStore
    _names: dict[tuple[str, int], list[str]]
    _current: dict[tuple[str, int], str]

    if TYPE_CHECKING:

        def _maintain(self, queue: str, dirs: Dirs) -> None: ...
        def _refill(self, key: tuple[str, int], dirs: Dirs, listed: set[str]) -> bool: ...

    # -- the listing cache (callers hold self.store.lock) ------------------------------------------

    def _listings(self, queue: str) -> dict[str, _Listing]:
        caches: dict[str, dict[str, _Listing]] = self.__dict__.setdefault("_transfer_listings", {})
        cache = caches.setdefault(queue, {})
        if len(cache) > _MAX_CACHED_DIRS:
            cache.clear()
        return cache

    def _forget_transfer_listings(self) -> None:
        """Drop the cached listings (``close``)."""
        self.__dict__.pop("_transfer_listings", None)

    def _listing(self, queue: str, path: str, suffix: str = "") -> _Listing:
        """The names in ``path`` (those ending in ``suffix``), listed again only when it changed."""
        cache = self._listings(queue)
        try:
            mtime = os.stat(path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            cache.pop(path, None)
            return _Listing(0, False, [])
        hit = cache.get(path)
        if hit is not None and hit.trusted and hit.mtime == mtime:
            return hit
        started = time.time_ns()
        names = listdir(path)
        if suffix:
            names = [name for name in names if name.endswith(suffix)]
        listing = cache[path] = _Listing(mtime, mtime < started - _SETTLED_NS, names)
        return listing

    def _bucket_paths(self, queue: str, dirs: Dirs, priority: int) -> list[str]:
        """The bucket paths of one priority, oldest first."""
        priority_dir = dirs.ready[priority]
        return [f"{priority_dir}/{b}" for b in self._listing(queue, priority_dir).in_order() if b.isdigit()]

    # -- take -------------------------------------------------------------------------------------

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        with self.store.lock, self.store.os_errors(f"take tasks from queue {queue!r}"):
            dirs = self.store.queue_dirs(queue)
            if dirs is None:
                return []
            try:
                self._maintain(queue, dirs)  # reclaims expired leases, takes included
            except FileNotFoundError:  # the queue's directories were removed by hand
                self.store.queue_cache.pop(queue, None)
                return []
            now = time.time_ns()
            take = _Take(dirs, max_count, f"{min(now + int(lease_s * NS), _MAX_NS):019d}.{now:019d}.", now)
            listed: set[str] = set()
            for priority in range(MAX_PRIORITY, -1, -1):
                key = (queue, priority)
                while len(take.claimed) < max_count and (self._names.get(key) or self._refill(key, dirs, listed)):
                    self._take_ready(take, key)
            if len(take.claimed) < max_count:
                self._take_delayed(take)
        return self._read_taken(queue, dirs, take.claimed)

    def _take_ready(self, take: _Take, key: tuple[str, int]) -> None:
        """Take from the fetch's cached names of the current bucket of ``key`` (its own hot loop)."""
        dirs, claimed = take.dirs, take.claimed
        priority, bucket, names = key[1], self._current[key], self._names[key]
        suffix = f".{priority}.{self.store.pid:x}"
        while names and len(claimed) < take.max_count:
            name = names.pop()
            match = READY_RE.match(name)
            if match is None:
                self.store.bury(dirs, f"{bucket}/{name}", stray_meta(), bad_name(name))
                continue
            receipt = f"{take.prefix}{match[1]}.{match[2]}.{match[3]}{suffix}{next(counter) & 0xFFFFFFFF:08x}"
            try:
                os.rename(f"{bucket}/{name}", f"{dirs.inflight}/{receipt}")
            except FileNotFoundError:
                continue  # a worker (or another take) won it
            claimed.append((receipt, match[1], priority, 0.0))

    def _take_delayed(self, take: _Take) -> None:
        """Take from the fetch's cached listing of ``delayed/`` (fresh: ``_maintain`` just ran)."""
        dirs, claimed = take.dirs, take.claimed
        cached = self.store.delayed_cache.get(dirs.queue)
        if cached is None:
            return
        names = cached[2]  # soonest due last
        while names and len(claimed) < take.max_count:
            name = names.pop()
            match = DELAYED_RE.match(name)
            if match is None:
                continue  # _maintain buries these
            receipt = f"{take.prefix}{match[1]}.{match[2]}.{match[3]}.{match[4]}.{self.store.pid:x}"
            receipt += f"{next(counter) & 0xFFFFFFFF:08x}"
            try:
                os.rename(f"{dirs.delayed}/{name}", f"{dirs.inflight}/{receipt}")
            except FileNotFoundError:
                continue
            claimed.append((receipt, match[1], int(match[4]), max(int(name[:19]) - take.now, 0) / NS))
        # Our own renames moved the mtime: keep the listing (what others changed meanwhile is seen
        # at the next relisting, within a second, as the cache's contract already says).
        if self.store.delayed_cache.get(dirs.queue) is cached:
            with contextlib.suppress(FileNotFoundError):
                self.store.delayed_cache[dirs.queue] = (os.stat(dirs.delayed).st_mtime_ns, cached[1], names)

    def _read_taken(self, queue: str, dirs: Dirs, claimed: list[_Claim]) -> list[tuple[TaskRecord, Task]]:
        taken = []
        with self.store.os_errors(f"read the tasks taken from queue {queue!r}"):
            for receipt, task_id, priority, delay_s in claimed:
                data = _read(f"{dirs.inflight}/{receipt}")
                if data is None:
                    continue  # reclaimed at once: only with a lease shorter than this pause
                body = data.decode("utf-8", "replace")
                deliveries, enq_us = receipt.split(".")[3:5]
                enqueued_at = int(enq_us) / 1e6
                try:
                    payload, meta = decode_body(body)
                except TaskDecodeError:
                    payload, meta = {}, {}  # moved as it is: the target dead-letters it when delivered
                record = TaskRecord(task_id, body, priority, int(deliveries), enqueued_at, delay_s)
                task = new_task(task_id, queue, payload, int(deliveries), enqueued_at, priority, receipt, meta)
                taken.append((record, task))
        return taken

    # -- put --------------------------------------------------------------------------------------

    def _held_ids(self, queue: str, dirs: Dirs) -> list[frozenset[str]]:
        """The ids of the queue's files (ready, delayed, in flight, dead), as sets per directory."""
        old = self._listings(queue)
        held = [self._listing(queue, dirs.delayed).ids(1), self._listing(queue, dirs.inflight).ids(2)]
        held.append(self._dead_listing(queue, dirs).ids(1))
        buckets = [
            bucket for priority in range(MAX_PRIORITY + 1) for bucket in self._bucket_paths(queue, dirs, priority)
        ]
        held += [self._listing(queue, bucket).ids(1) for bucket in buckets]
        keep = {dirs.delayed, dirs.inflight, dirs.dead, *dirs.ready, *buckets}
        for path in [path for path in old if path not in keep]:
            del old[path]  # buckets gone since
        return held

    def _check(self, records: list[TaskRecord]) -> list[bytes]:
        """Refuse, before storing any, what this store cannot name; the encoded bodies."""
        bodies = []
        for record in records:
            if not _ID_RE.match(record.id):
                raise PayloadError(
                    f"task record id {record.id!r:.80}: the filesystem transport stores ids of 1 to 64"
                    " letters, digits, '_' or '-'"
                )
            validate_priority(record.priority)
            try:
                bodies.append(record.body.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise PayloadError(f"task record {record.id}: body is not valid UTF-8 text ({exc.reason})") from None
        return bodies

    def _new_records(
        self, queue: str, records: list[TaskRecord], stored: list[bool]
    ) -> Iterator[tuple[Dirs, TaskRecord, bytes]]:
        """The records to store (their ids not in the queue yet, nor earlier in ``records``), with the
        queue's dirs and the encoded body; appends True or False to ``stored`` for each record."""
        bodies = self._check(records)
        dirs = self.store.queue_dirs(queue, create=True)
        assert dirs is not None
        with self.store.lock:
            held = self._held_ids(queue, dirs)
        added: set[str] = set()
        for record, body in zip(records, bodies, strict=True):
            fresh = record.id not in added and not any(record.id in ids for ids in held)
            stored.append(fresh)
            if fresh:
                added.add(record.id)
                yield dirs, record, body

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        stored: list[bool] = []
        touched: dict[str, Dirs] = {}
        now = time.time_ns()
        with self.store.os_errors(f"put tasks into queue {queue!r}"):
            for dirs, record, body in self._new_records(queue, records, stored):
                enq_us = int(record.enqueued_at * 1e6) if record.enqueued_at > 0 else now // 1000
                attempts, src = min(record.attempts, _MAX_DELIVERIES), self.store.write_new(body)
                if record.delay_s > 0:
                    due = min(now + int(record.delay_s * NS), _MAX_NS)
                    name = f"{dirs.delayed}/{due:019d}.{record.id}.{attempts}.{enq_us}.{record.priority}"
                    try:
                        os.rename(src, name)
                    except FileNotFoundError:  # the queue was removed under us: make it again
                        self.store.queue_dirs(queue, create=True)
                        os.rename(src, name)
                    touched[dirs.delayed] = dirs
                    self.store.delayed_cache.pop(queue, None)
                else:
                    name = f"{next_order():019d}.{record.id}.{attempts}.{enq_us}"
                    if bucket := self.store.place(src, dirs.ready[record.priority], name):
                        touched[bucket] = dirs
            for path in touched:
                self.store.sync_dir(path)
        return stored

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        stored: list[bool] = []
        touched = ""
        now = time.time_ns()
        with self.store.os_errors(f"put dead letters into queue {queue!r}"):
            for dirs, record, body in self._new_records(queue, records, stored):
                dead_at = record.dead_at if record.dead_at is not None else record.enqueued_at
                dead_ns = min(int(dead_at * NS), _MAX_NS) if dead_at > 0 else now
                enq_us = int(record.enqueued_at * 1e6) if record.enqueued_at > 0 else dead_ns // 1000
                attempts = min(record.attempts, _MAX_DELIVERIES)
                stem = touched = f"{dirs.dead}/{dead_ns:019d}.{record.id}.{attempts}.{enq_us}.{record.priority}"
                reason = (record.reason or "").encode("utf-8", "replace")
                os.rename(self.store.write_new(reason), stem + ".reason")  # the reason first, as bury
                os.rename(self.store.write_new(body), stem + ".task")
            if touched:
                self.store.sync_dir(os.path.dirname(touched))
        return stored

    # -- paging -----------------------------------------------------------------------------------

    def _dead_listing(self, queue: str, dirs: Dirs) -> _Listing:
        """The ``.task`` names of ``dead/`` (a ``.reason`` alone is no dead letter)."""
        return self._listing(queue, dirs.dead, ".task")

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        if after and not DEAD_RE.match(after):
            raise ValueError(f"after={after!r:.80}: not a cursor of dead_page ('' for the first page)")
        page: list[DeadTask] = []
        with self.store.os_errors(f"page through the dead letters of queue {queue!r}"):
            with self.store.lock:
                dirs = self.store.queue_dirs(queue)
                if dirs is None:
                    return [], ""
                names = self._dead_listing(queue, dirs).in_order()
            position = bisect.bisect_right(names, after) if after else 0
            while position < len(names) and len(page) < limit:
                name = names[position]
                position += 1
                if DEAD_RE.match(name) and (dead := FileAdmin.read_dead(dirs, queue, name)) is not None:
                    page.append(dead)
                    after = name
        return page, after if page and position < len(names) else ""

    def _peek_tasks(self, queue: str, after: str, limit: int) -> tuple[list[TaskRecord], str]:
        cursor = _CURSOR_RE.match(after or "d/")
        if cursor is None:
            raise ValueError(f"after={after!r:.80}: not a cursor of peek_tasks ('' for the first page)")
        at = (MAX_PRIORITY + 1, "", cursor[3]) if cursor[1] is None else (int(cursor[1]), cursor[2], cursor[3])
        records: list[TaskRecord] = []
        last = ""
        with self.store.os_errors(f"list the waiting tasks of queue {queue!r}"):
            with self.store.lock:
                dirs = self.store.queue_dirs(queue)
                if dirs is None:
                    return [], ""
            now = time.time_ns()
            for directory, names, start, prefix in self._peek_dirs(queue, dirs, at):
                for name in names[start:]:
                    if len(records) == limit:
                        return records, last
                    if (record := _peek_one(directory, name, now)) is not None:
                        records.append(record)
                        last = prefix + name
        return records, ""

    def _peek_dirs(self, queue: str, dirs: Dirs, at: tuple[int, str, str]) -> Iterator[tuple[str, list[str], int, str]]:
        """(directory, its sorted names, where to start, cursor prefix) in peek order, after ``at``:
        (priority, bucket, name), priority MAX_PRIORITY + 1 for ``delayed/``."""
        at_priority, at_bucket, at_name = at
        if at_priority > MAX_PRIORITY:
            with self.store.lock:
                names = self._listing(queue, dirs.delayed).in_order()
            yield dirs.delayed, names, bisect.bisect_right(names, at_name), "d/"
        for priority in range(min(at_priority, MAX_PRIORITY), -1, -1):
            with self.store.lock:
                buckets = self._bucket_paths(queue, dirs, priority)
            for bucket in buckets:
                here = priority == at_priority
                if here and bucket[-12:] < at_bucket:
                    continue
                with self.store.lock:
                    names = self._listing(queue, bucket).in_order()
                start = bisect.bisect_right(names, at_name) if here and bucket[-12:] == at_bucket else 0
                yield bucket, names, start, f"r{priority}/{bucket[-12:]}/"


def _read(path: str) -> bytes | None:
    """The whole file; None when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 1 << 16)
        while len(data) % (1 << 16) == 0 and (more := os.read(fd, 1 << 16)):
            data += more
    finally:
        os.close(fd)
    return data


def _peek_one(directory: str, name: str, now: int) -> TaskRecord | None:
    """The record of a ready or delayed file (None: no task name, or gone meanwhile)."""
    if directory.endswith("/delayed"):
        match = DELAYED_RE.match(name)
        if match is None:
            return None
        priority, delay_s = int(match[4]), max(int(name[:19]) - now, 0) / NS
    else:
        match = READY_RE.match(name)
        if match is None:
            return None
        priority, delay_s = int(directory.rsplit("/", 2)[-2]), 0.0
    data = _read(f"{directory}/{name}")
    if data is None:
        return None
    return TaskRecord(match[1], data.decode("utf-8", "replace"), priority, int(match[2]), int(match[3]) / 1e6, delay_s)
