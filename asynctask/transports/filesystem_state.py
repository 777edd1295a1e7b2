"""Keyed state and cancel of the filesystem transport (the contract: :mod:`asynctask.transports.state`).

Layout under the root, per queue ``<q>`` (the task files are described in ``filesystem.py``)::

    state/<q>/lock                          flock'ed around every change of the queue's records
    state/<q>/records/<name>                a record: b"<expires_ns:019d>\\n" + the value (UTF-8)
    state/<q>/expiring/<top>/<sub>/<name>   empty marker: record <name> expires within <sub>
    tmp/<pid>.<n>.<rand>.cancelled          a cancelled task on its way out

``<name>`` is the key (:func:`record_name`): lowercase, with the positions of its capitals as a hex
mask after a ``~`` when it has some (``Ab.C`` -> ``ab.c~5``), so that a case-insensitive filesystem
(macOS) keeps ``a`` and ``A`` apart; ``+`` goes before a name that would start with a dot (``.``,
``..``, hidden names).  The longest name (200 characters, all capitals) is 252 bytes: within
NAME_MAX.  ``<sub>`` is ``expires_ns >> 30`` (1.07 s) and ``<top>`` is ``expires_ns >> 40`` (1024
subs, 18.3 min), so no directory grows with the span of the TTLs.

* put: write ``tmp/x`` (header and value), then under the lock create the marker and
  ``os.replace`` ``tmp/x`` over the record: a reader (who takes no lock: records are never written
  in place) opens the old inode or the new one, never a mix.
* add: the same, writing only when the record under the lock is absent or expired.
* delete: under the lock, unlink the record.
* sweep: list ``expiring/`` and take the subs that began before now (due), oldest first, at most
  :data:`SWEEP_BATCH` markers per call.  Under the lock, per marker: an expired record is
  unlinked (counted); a live one whose expiry is in this sub keeps its marker; any other marker
  goes (each put makes the marker of its own expiry, and removes the one of the record it replaces,
  as a delete does: no file outlives its record by more than a sweep).  So every live record has a marker, and a
  sweep reads only the markers of records that expired (or were replaced or deleted) plus those of
  the current 1.07 s: its cost does not grow with the number of live records.
* cancel: find the ready or delayed file by the id in its name (a listing of ``delayed/`` and of the
  ready buckets), ``rename`` it into ``tmp/`` (no worker looks there), unlink it.  A worker's claim
  is a rename of the same file, so exactly one of them gets it.

Why a lock file and not ``os.link``/``O_EXCL`` for add: an exclusive create alone gives one winner
only while no file is in the way.  Taking over an expired record means removing it first, and a
caller that found it expired may then remove the live record another caller has just written in
its place (check-then-remove on a path is not atomic; a rename-then-compare-inode undo leaves a
moment with no record, where a third add would win too).  ``flock`` serialises the few syscalls of
each change instead; the kernel drops it when its holder dies (no stale lock to break, unlike a
lock file made with O_EXCL), and every call opens its own descriptor, so threads of one process
exclude each other as processes do.  Killed at any instant: before the replace only a ``tmp`` file
(swept) and maybe a marker without a record (dropped by the sweep) remain; after it, the record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import time
from collections.abc import Iterator

from asynctask.transports.filesystem_layout import (
    DELAYED_RE,
    NS,
    QUEUE_RE,
    READY_RE,
    Dirs,
    FileStore,
    counter,
    listdir,
)

SUB_SHIFT = 30
TOP_SHIFT = 40
#: the most markers one :meth:`FileStateHooks._state_sweep` call looks at
SWEEP_BATCH = 10_000
#: the largest expiry a record header holds (19 digits: the year 2286)
MAX_EXPIRY_NS = 10**19 - 1
HEADER = 20
CANCEL_TRIES = 5
_TASK_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}\Z", re.ASCII)
_NAME_RE = re.compile(r"\+?([a-z0-9_.:-]{1,200})(?:~([0-9a-f]{1,50}))?\Z", re.ASCII)


def record_name(key: str) -> str:
    """The file name of a (valid) key: see the module docstring."""
    lower = key.lower()
    if lower != key:
        mask = sum(1 << i for i, char in enumerate(key) if "A" <= char <= "Z")
        lower = f"{lower}~{mask:x}"
    return "+" + lower if lower[0] == "." else lower


def record_key(name: str) -> str | None:
    """The key a file name of ``records/`` stands for; None for a name :func:`record_name` never makes."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    key, mask = match[1], int(match[2] or "0", 16)
    if mask:
        key = "".join(char.upper() if mask >> i & 1 else char for i, char in enumerate(key))
    return key if record_name(key) == name else None


def _unmark(base: str, name: str, expires: int) -> None:
    """Remove the marker of record ``name`` expiring at ``expires`` (caller holds the lock); its
    emptied directory goes with the sweep of its sub."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{base}/expiring/{expires >> TOP_SHIFT:012d}/{expires >> SUB_SHIFT:012d}/{name}")


def _expiry(path: str) -> int | None:
    """The expiry of the record at ``path``; None when there is none, 0 when it is no record."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        header = os.pread(fd, HEADER, 0)
    finally:
        os.close(fd)
    return int(header[:19]) if header[:19].isdigit() and header[19:] == b"\n" else 0


class FileStateHooks:
    """Mixin (listed before ``Transport``): the ``_state_*`` and ``_cancel`` hooks over ``self.store``.

    Arguments arrive checked by the public methods of :class:`~asynctask.transports.state.KeyedState`.
    """

    store: FileStore

    # -- paths and the lock ------------------------------------------------------------------------

    def _state_base(self, queue: str) -> str:
        return f"{self.store.root}/state/{queue}"

    def _lock_fd(self, base: str) -> int:
        """Open the queue's lock file (made with the queue's state directory on first use)."""
        path = f"{base}/lock"
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            self.store.makedir(base)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, self.store.file_mode)
        except FileExistsError:
            return os.open(path, os.O_RDWR)
        if self.store.file_mode != 0o600:
            os.fchmod(fd, self.store.file_mode)  # the umask may have taken group bits away
        return fd

    @contextlib.contextmanager
    def _locked(self, base: str) -> Iterator[None]:
        fd = self._lock_fd(base)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _mark(self, base: str, name: str, expires: int) -> str:
        """Create the marker of a record expiring at ``expires`` (caller holds the lock); its directory."""
        directory = f"{base}/expiring/{expires >> TOP_SHIFT:012d}/{expires >> SUB_SHIFT:012d}"
        for _ in range(10):
            try:
                os.close(os.open(f"{directory}/{name}", os.O_WRONLY | os.O_CREAT, self.store.file_mode))
                return directory
            except FileNotFoundError:
                self.store.makedir(directory)  # new, or removed by a sweep in another lock's time
        raise FileNotFoundError(f"directory {directory} keeps disappearing")

    # -- keyed state -------------------------------------------------------------------------------

    def _state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        self._state_write(queue, key, value, ttl_s, only_if_absent=False)

    def _state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        return self._state_write(queue, key, value, ttl_s, only_if_absent=True)

    def _state_write(self, queue: str, key: str, value: str, ttl_s: float, *, only_if_absent: bool) -> bool:
        base, name = self._state_base(queue), record_name(key)
        record = f"{base}/records/{name}"
        with self.store.os_errors(f"write state {key!r} of queue {queue!r}"):
            if only_if_absent and (_expiry(record) or 0) > time.time_ns():
                return False  # a live record is there now: the add fails here and now, no lock needed
            expires = min(time.time_ns() + max(int(ttl_s * NS), 1), MAX_EXPIRY_NS)
            tmp = self.store.write_new(b"%019d\n%b" % (expires, value.encode("utf-8")))
            try:
                marked = self._replace_locked(base, name, tmp, expires, only_if_absent)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            if marked is None:
                os.unlink(tmp)
                return False
            self.store.sync_dir(f"{base}/records")
            self.store.sync_dir(marked)
        return True

    def _replace_locked(self, base: str, name: str, tmp: str, expires: int, only_if_absent: bool) -> str | None:
        """Under the lock: mark, then move ``tmp`` over the record; the marker's directory, or None (add lost)."""
        record = f"{base}/records/{name}"
        with self._locked(base):
            previous = _expiry(record)
            if only_if_absent and (previous or 0) > time.time_ns():
                return None
            marked = self._mark(base, name, expires)
            try:
                os.replace(tmp, record)
            except FileNotFoundError:  # the first record of the queue
                self.store.makedir(f"{base}/records")
                os.replace(tmp, record)
            if previous is not None and previous >> SUB_SHIFT != expires >> SUB_SHIFT:
                _unmark(base, name, previous)  # the replaced record's marker: no file outlives its record
            return marked

    def _state_get(self, queue: str, key: str) -> str | None:
        path = f"{self._state_base(queue)}/records/{record_name(key)}"
        with self.store.os_errors(f"read state {key!r} of queue {queue!r}"):
            try:
                with open(path, "rb") as stream:
                    data = stream.read()
            except FileNotFoundError:
                return None
        header = data[:19]
        if not header.isdigit() or data[19:HEADER] != b"\n" or int(header) <= time.time_ns():
            return None
        return data[HEADER:].decode("utf-8")

    def _state_delete(self, queue: str, key: str) -> bool:
        base = self._state_base(queue)
        record = f"{base}/records/{record_name(key)}"
        with self.store.os_errors(f"delete state {key!r} of queue {queue!r}"):
            if _expiry(record) is None:
                return False  # nothing there now (and no lock file made for nothing)
            with self._locked(base):
                expires = _expiry(record)
                if expires is None:
                    return False
                os.unlink(record)
                _unmark(base, record_name(key), expires)
            self.store.sync_dir(f"{base}/records")
            return expires > time.time_ns()

    def _state_keys(self, queue: str, prefix: str) -> list[str]:
        records = f"{self._state_base(queue)}/records"
        keys = []
        with self.store.os_errors(f"list the state of queue {queue!r}"):
            now = time.time_ns()
            for name in listdir(records):
                key = record_key(name)
                if key is not None and key.startswith(prefix) and (_expiry(f"{records}/{name}") or 0) > now:
                    keys.append(key)
        return keys

    def _state_sweep(self) -> int:
        removed, budget = 0, SWEEP_BATCH
        with self.store.os_errors("sweep expired state"):
            for queue in sorted(listdir(f"{self.store.root}/state")):
                if budget <= 0:
                    break
                if QUEUE_RE.match(queue):
                    swept, budget = self._sweep_queue(self._state_base(queue), budget)
                    removed += swept
        return removed

    def _sweep_queue(self, base: str, budget: int) -> tuple[int, int]:
        """Sweep the due subs of one queue; (records removed, budget left)."""
        now, removed = time.time_ns(), 0
        tops = sorted(t for t in listdir(f"{base}/expiring") if t.isdigit() and int(t) << TOP_SHIFT <= now)
        if not tops:
            return 0, budget
        fd = self._lock_fd(base)
        try:
            for top in tops:
                top_dir = f"{base}/expiring/{top}"
                for sub in sorted(s for s in listdir(top_dir) if s.isdigit() and int(s) << SUB_SHIFT <= now):
                    names = listdir(f"{top_dir}/{sub}")[:budget]
                    budget -= len(names)
                    for name in names:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                        try:
                            removed += self._sweep_marker(base, f"{top_dir}/{sub}", int(sub), name)
                        finally:
                            fcntl.flock(fd, fcntl.LOCK_UN)
                    if budget <= 0:
                        return removed, 0
                    self._rmdir_locked(fd, f"{top_dir}/{sub}")  # fails while live markers stay
                self._rmdir_locked(fd, top_dir)
        finally:
            os.close(fd)
        return removed, budget

    @staticmethod
    def _rmdir_locked(fd: int, path: str) -> None:
        """rmdir under the lock: a put holding it never sees its marker's directory go."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def _sweep_marker(base: str, directory: str, sub: int, name: str) -> int:
        """Handle one marker of a due sub (caller holds the lock); 1 when an expired record went."""
        record = f"{base}/records/{name}"
        expires = _expiry(record)
        if expires is not None and expires > time.time_ns() and expires >> SUB_SHIFT == sub:
            return 0  # live, and this is its marker
        gone = 0
        if expires is not None and expires <= time.time_ns():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record)
                gone = 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{directory}/{name}")
        return gone

    # -- cancel ------------------------------------------------------------------------------------

    def _cancel(self, queue: str, task_id: str) -> bool:
        if not _TASK_ID_RE.match(task_id):
            return False  # no task file carries such an id
        with self.store.os_errors(f"cancel task {task_id} of queue {queue!r}"):
            dirs = self.store.queue_dirs(queue)
            if dirs is None:
                return False
            for _ in range(CANCEL_TRIES):
                path = _waiting_file(dirs, task_id)
                if path is None:
                    return False
                grave = f"{self.store.tmp}/{self.store.pid}.{next(counter)}.{random.getrandbits(32):08x}.cancelled"
                try:
                    os.rename(path, grave)
                except FileNotFoundError:
                    continue  # claimed, promoted, reclaimed or cancelled meanwhile: look again
                os.unlink(grave)
                self.store.delayed_cache.pop(queue, None)
                self.store.sync_dir(os.path.dirname(path))
                return True
        return False


def _waiting_file(dirs: Dirs, task_id: str) -> str | None:
    """The path of the delayed or ready file of ``task_id``; None when it is neither.

    ``delayed/`` first: a task moves from there to ready (promotion), never back while waiting, so
    a task waiting all along is seen by one of the two listings.
    """
    needle = f".{task_id}."
    for name in listdir(dirs.delayed):
        if needle in name and DELAYED_RE.match(name) and name.split(".")[1] == task_id:
            return f"{dirs.delayed}/{name}"
    for priority_dir in dirs.ready:
        for bucket in listdir(priority_dir):
            for name in listdir(f"{priority_dir}/{bucket}"):
                if needle in name and READY_RE.match(name) and name.split(".")[1] == task_id:
                    return f"{priority_dir}/{bucket}/{name}"
    return None
