"""Redis transport harness: database 9 on the shared server, a key prefix of its own per test.

Only keys under that prefix are deleted afterwards; consumers in the competition tests are other
processes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness, default_inject_garbage
from support import REDIS_HOST, REDIS_PORT, require_service

DB = 9


def delete_prefix(prefix: str) -> None:
    """Delete every key the transport made under ``prefix`` (and nothing else)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=DB)
    try:
        for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
    finally:
        client.close()


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    require_service("redis", REDIS_HOST, REDIS_PORT)
    from asynctask.transports.redis import RedisTransport

    prefix = "attest" + uuid.uuid4().hex[:12]
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}?key_prefix={prefix}"
    transport = RedisTransport(url)
    try:
        yield Harness("redis", url, transport, cross_process=True, inject_garbage=default_inject_garbage(transport))
    finally:
        transport.close()
        delete_prefix(prefix)
