"""Memory transport harness: a store of its own per test; other consumers are threads."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness, default_inject_garbage

from asynctask.transports.memory import MemoryTransport


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    url = f"memory://{uuid.uuid4().hex}"
    transport = MemoryTransport(url)
    yield Harness("memory", url, transport, cross_process=False, inject_garbage=default_inject_garbage(transport))
