"""Redis transport harness behind Redis Sentinel (``redis+sentinel://``): the session's master,
replica and 3 Sentinels (``shared_redis_sentinel()``, tests/clusters_redis.py), database 0, a key
prefix of its own per test, deleted from the current master afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness, default_inject_garbage


def delete_prefix(port: int, prefix: str) -> None:
    """Delete every key the transport made under ``prefix`` on the master at ``port``."""
    from clusters_redis import client

    conn = client(port)
    try:
        for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
            keys = list(conn.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                conn.delete(*keys[start : start + 500])
    finally:
        conn.close()


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    from cluster_fixtures import shared_redis_sentinel

    sentinel = shared_redis_sentinel()
    from asynctask.transports.redis import RedisTransport

    prefix = "attest" + uuid.uuid4().hex[:12]
    url = f"{sentinel.url}?key_prefix={prefix}"
    transport = RedisTransport(url)
    try:
        yield Harness(
            "redis_sentinel", url, transport, cross_process=True, inject_garbage=default_inject_garbage(transport)
        )
    finally:
        transport.close()
        delete_prefix(sentinel.master_port(), prefix)
