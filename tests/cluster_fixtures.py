"""Session fixtures ``redis_cluster``, ``redis_sentinel``, ``pgbouncer``, ``rabbitmq_cluster`` (see ``clusters.py``).

Use them from a test module with ``pytest_plugins = ["cluster_fixtures"]`` (or import the fixture
names).  Each cluster is started once per test process, on first use, and shared: a fixture, or
code without fixtures (a transport harness), gets the same one from ``shared_redis_cluster()`` and
friends.  All are torn down at the end of the session (``pytest_sessionfinish`` when this module is
a plugin; at interpreter exit otherwise).  A test that kills a node restarts it before it ends (the
info objects' ``restart``), so the next test finds the cluster whole.

A cluster that cannot start skips its tests with the reason, or fails them when
ASYNCTASK_REQUIRE_SERVICES=1 (CI); a failed start is not tried again in the same session.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import clusters
import pytest
from clusters import ClusterUnavailable, PgBouncerInfo, RabbitClusterInfo, RedisClusterInfo, SentinelInfo
from support import REQUIRE_SERVICES

T = TypeVar("T")

_stack = contextlib.ExitStack()
_started: dict[str, Any] = {}
_failed: dict[str, str] = {}
atexit.register(_stack.close)


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test with ``reason`` (locally) or fail it (ASYNCTASK_REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and ASYNCTASK_REQUIRE_SERVICES=1")
    pytest.skip(f"{reason} (set ASYNCTASK_REQUIRE_SERVICES=1 to make this a failure)")


def _shared(name: str, start: Callable[[], contextlib.AbstractContextManager[T]]) -> T:
    if name in _failed:
        unavailable(_failed[name])
    if name not in _started:
        try:
            _started[name] = _stack.enter_context(start())
        except ClusterUnavailable as exc:
            _failed[name] = f"{name}: {exc.reason}"
            unavailable(_failed[name])
    return _started[name]  # type: ignore[no-any-return]


def shared_redis_cluster() -> RedisClusterInfo:
    """The session's Redis Cluster: 3 masters, 1 replica each."""
    return _shared("redis_cluster", lambda: clusters.redis_cluster(masters=3, replicas_per_master=1))


def shared_redis_sentinel() -> SentinelInfo:
    """The session's Redis master + replica + 3 Sentinels (service ``mymaster``)."""
    return _shared("redis_sentinel", clusters.redis_sentinel)


def shared_pgbouncer() -> PgBouncerInfo:
    """The session's PgBouncer in transaction mode (pool of 4 per database and user)."""
    return _shared("pgbouncer", lambda: clusters.pgbouncer(pool_mode="transaction"))


def shared_rabbitmq_cluster() -> RabbitClusterInfo:
    """The session's 3-node RabbitMQ cluster."""
    return _shared("rabbitmq_cluster", lambda: clusters.rabbitmq_cluster(nodes=3))


def stop_shared() -> None:
    """Tear down every shared cluster now (the next use starts a new one)."""
    _stack.close()
    _started.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared()


@pytest.fixture(scope="session")
def redis_cluster() -> RedisClusterInfo:
    return shared_redis_cluster()


@pytest.fixture(scope="session")
def redis_sentinel() -> SentinelInfo:
    return shared_redis_sentinel()


@pytest.fixture(scope="session")
def pgbouncer() -> PgBouncerInfo:
    return shared_pgbouncer()


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> RabbitClusterInfo:
    return shared_rabbitmq_cluster()
