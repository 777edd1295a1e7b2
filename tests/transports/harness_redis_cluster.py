"""Redis transport harness on a Redis Cluster (``redis+cluster://``): the session's 3 masters with a
replica each (``shared_redis_cluster()``, tests/clusters_redis.py), a key prefix of its own per test.

A queue's keys carry the hash tag ``{<prefix>:<queue>}``; prefixes and the contract tests' queue
names are random, so their slots spread over the three masters.  The teardown notes which masters
held the test's keys (``MASTERS_USED``, checked by tests/transports/test_redis_cluster.py once the
contract suite has run here) and deletes them from every master.
"""

from __future__ import annotations

import contextlib
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

from harnesslib import Harness, default_inject_garbage

# Shared by every load of this file (conftest's, test_redis_cluster.py's import).
_SHARED = sys.modules.setdefault("asynctask_harness_redis_cluster_used", types.ModuleType("used"))
#: Ports of the masters that held keys of a contract test (over the session).
MASTERS_USED: set[int] = _SHARED.__dict__.setdefault("masters", set())
#: Contract tests run on this harness so far.
RUNS: list[int] = _SHARED.__dict__.setdefault("runs", [0])


def delete_prefix(masters: list[int], prefix: str) -> set[int]:
    """Delete every key the transport made under ``prefix`` on each master; the masters that had one."""
    from clusters_redis import client

    found = set()
    for port in masters:
        conn = client(port)
        try:
            keys = [
                k for pattern in (f"{{{prefix}:*", f"{prefix}:*") for k in conn.scan_iter(match=pattern, count=1000)
            ]
            if keys:
                found.add(port)
                pipe = conn.pipeline(transaction=False)
                for key in keys:  # one key a DEL: a node refuses a DEL over several slots
                    pipe.unlink(key)
                pipe.execute()
        finally:
            conn.close()
    return found


@contextlib.contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    from cluster_fixtures import shared_redis_cluster

    cluster = shared_redis_cluster()
    from asynctask.transports.redis import RedisTransport

    prefix = "attest" + uuid.uuid4().hex[:12]
    url = f"{cluster.url}?key_prefix={prefix}"
    transport = RedisTransport(url)
    try:
        yield Harness(
            "redis_cluster", url, transport, cross_process=True, inject_garbage=default_inject_garbage(transport)
        )
    finally:
        transport.close()
        MASTERS_USED.update(delete_prefix(cluster.masters, prefix))
        RUNS[0] += 1
