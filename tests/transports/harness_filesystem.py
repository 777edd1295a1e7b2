"""Filesystem transport harness: a store in the test's tmp_path; competitors are other processes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness

from asynctask.transports.filesystem import BUCKET_SHIFT, FilesystemTransport


def corrupt_task_file(root: Path, queue: str) -> Path:
    """Write a task file the way a crash or a bad editor leaves one: in place, cut short, no rename.

    The name is a valid ready-task name, so only the body is wrong.
    """
    now = time.time_ns() - 1_000_000  # older than anything submitted after it
    ready = root / "queues" / queue / "ready" / "0" / f"{now >> BUCKET_SHIFT:012d}"
    ready.mkdir(parents=True, exist_ok=True)
    for sub in ("delayed", "inflight", "dead"):
        (root / "queues" / queue / sub).mkdir(exist_ok=True)
    path = ready / f"{now:019d}.{os.urandom(16).hex()}.0.{now // 1000}"
    path.write_bytes(b'{"to": "a@exam\x00\x00\x00')
    return path


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "store"
    url = f"filesys:{root}"
    transport = FilesystemTransport(url)

    def inject(queue: str) -> None:
        corrupt_task_file(root, queue)

    yield Harness("filesystem", url, transport, cross_process=True, inject_garbage=inject)
