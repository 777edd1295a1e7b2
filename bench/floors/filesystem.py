"""The filesystem floor: bare os calls in a scratch directory under the transport's root.

submit: open(O_CREAT|O_EXCL) + write + close in tmp/, rename into ready/ (fsync file and directory
when the URL says ``fsync=1``), exactly the transport's atomic write.  drain: rename ready/x to
inflight/x, open + read + close, for 100 names, then unlink those 100: what the transport's
``get_tasks(queue, 100)`` + ``ack_tasks`` loop must do at least.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time

from asynctask.transports.base import option_bool, parse_url
from bench.floors import BODY

BATCH = 100


class Floor:
    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        root = os.path.abspath(parsed.path)
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.fsync = option_bool("fsync", parsed.options.get("fsync", "0"))
        self.dir = tempfile.mkdtemp(prefix="bench-floor-", dir=root)
        self.tmp, self.ready, self.inflight = (os.path.join(self.dir, d) for d in ("tmp", "ready", "inflight"))
        for path in (self.tmp, self.ready, self.inflight):
            os.mkdir(path, 0o700)
        self.names: collections.deque[str] = collections.deque()
        self.counter = 0

    def _put(self, n: int, batch: int = 1, ready: str = "", tmp_dir: str = "") -> list[str]:
        names = []
        ready, tmp_dir = ready or self.ready, tmp_dir or self.tmp
        for index in range(n):
            self.counter += 1
            name = f"{time.time_ns():019d}.{self.counter:08d}"
            tmp = f"{tmp_dir}/{name}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, BODY)
            if self.fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(tmp, f"{ready}/{name}")
            if self.fsync and ((index + 1) % batch == 0 or index == n - 1):
                self._sync(ready)
            names.append(name)
        return names

    def _sync(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)

    def submit(self, n: int) -> float:
        return self.submit_batch(n, 1)

    def submit_batch(self, n: int, batch: int) -> float:
        """A directory has no batch write: the same calls, with one directory fsync per batch.

        Each measurement writes through new directories, so that directories emptied earlier (ext4
        never shrinks one) do not slow it: the floor is the best case.
        """
        target = tempfile.mkdtemp(prefix="submit-", dir=self.dir)
        os.mkdir(f"{target}/tmp")
        started = time.perf_counter()
        self._put(n, batch, target, f"{target}/tmp")
        elapsed = time.perf_counter() - started
        shutil.rmtree(target)
        return elapsed

    def fill(self, n: int) -> None:
        self.names.extend(self._put(n))

    def drain(self, n: int) -> float:
        names = [self.names.popleft() for _ in range(n)]
        ready, inflight = self.ready, self.inflight
        started = time.perf_counter()
        for start in range(0, n, BATCH):  # as get_tasks(queue, 100) then ack_tasks(those 100)
            taken = []
            for name in names[start : start + BATCH]:
                src, dst = f"{ready}/{name}", f"{inflight}/{name}"
                os.rename(src, dst)
                fd = os.open(dst, os.O_RDONLY)
                os.read(fd, 1 << 16)
                os.close(fd)
                taken.append(dst)
            for dst in taken:
                os.unlink(dst)
            if self.fsync:
                self._sync(inflight)
        return time.perf_counter() - started

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
