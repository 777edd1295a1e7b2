"""The Redis transport behind Redis Sentinel: ``redis+sentinel://``.

URL form::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?options]

The hosts are Sentinels (port 26379 when left out); ``service_name`` is the master's name in their
``sentinel monitor`` line; user and password are the master's (option ``sentinel_password`` for
Sentinels that want one).  Built on redis-py's ``Sentinel``: every connection, the transport's own
included, asks the Sentinels for the master's address when it connects.

Following a promotion.  When the master dies, a connection to it breaks; when it is demoted (a
``SENTINEL FAILOVER``, a returning old master made a replica) a write gets ``READONLY``, which
redis-py turns into a connection error, and a blocked wait gets ``UNBLOCKED``.  Either way the
connection is dropped and the next connect asks the Sentinels again: a call safe to repeat is sent
once more at once; otherwise, or while the Sentinels still name the dead master (until
``down-after-milliseconds`` and the election have passed), TransportUnavailableError is raised and
a worker retries with backoff, then carries on with the promoted replica without a restart.  Redis
replication is asynchronous: writes the old master acknowledged but had not sent to the replica
are lost in a failover (see docs/scaling.rst).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection

from asynctask.errors import TransportURLError
from asynctask.transports.base import ParsedURL
from asynctask.transports.redis_connection import RedisConnection

DEFAULT_SENTINEL_PORT = 26379


def service_and_db(parsed: ParsedURL) -> tuple[str, int]:
    """``/service_name[/db]`` of a Sentinel URL.  Raises TransportURLError naming the URL."""
    parts = parsed.path.strip("/").split("/")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise TransportURLError(
            f"transport URL {parsed.masked!r}: the path must be /service_name or /service_name/db (a number)"
        )
    return parts[0], int(parts[1]) if len(parts) == 2 else 0


class _MasterConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels for the master however it connects:
    redis-py's ``send_packed_command`` connects a closed connection without ``connect()``, which
    would reach the default localhost:6379."""

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        if self._sock is None:
            self.host, self.port = self.connection_pool.get_master_address()
        return super().connect_check_health(*args, **kwargs)


class SentinelConnection(RedisConnection):
    """:class:`RedisConnection` to the master the Sentinels name (asked again on each connect)."""

    def _connect(self, parsed: ParsedURL, options: dict[str, Any]) -> Any:
        if not parsed.hosts:
            raise TransportURLError(f"transport URL {parsed.masked!r} names no Sentinel")
        self.service, db = service_and_db(parsed)
        common = self._common(parsed, options)
        sentinel_kwargs = {
            "socket_timeout": min(self.socket_timeout_s, 5.0),
            "socket_connect_timeout": min(self.socket_timeout_s, 5.0),
            "password": options.get("sentinel_password"),
        }
        self.sentinel = Sentinel(
            [(host, port or DEFAULT_SENTINEL_PORT) for host, port in parsed.hosts], sentinel_kwargs=sentinel_kwargs
        )  # type: ignore[no-untyped-call]
        return self.sentinel.master_for(self.service, db=db, **common)  # type: ignore[no-untyped-call]

    def _own_connection(self, name: str) -> Any:
        """As on one server, but a :class:`_MasterConnection`."""
        conn, pid = self._own.get(name, (None, 0))
        if conn is None or pid != os.getpid():
            conn = _MasterConnection(**self.client.connection_pool.connection_kwargs)  # type: ignore[no-untyped-call]
            self._own[name] = (conn, os.getpid())
        return conn

    def _address(self, parsed: ParsedURL) -> str:
        service = parsed.path.strip("/").split("/")[0]
        sentinels = ",".join(f"{host}:{port or DEFAULT_SENTINEL_PORT}" for host, port in parsed.hosts)
        return f"service {service!r} (Sentinels {sentinels})"

    def topology(self) -> dict[str, Any]:
        """The master and replicas the Sentinels report now, and the Sentinels asked."""
        try:
            master = self.sentinel.discover_master(self.service)  # type: ignore[no-untyped-call]
            replicas = self.sentinel.discover_slaves(self.service)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return {
            "kind": "redis-sentinel",
            "service": self.service,
            "master": f"{master[0]}:{master[1]}",
            "replicas": sorted(f"{host}:{port}" for host, port in replicas),
            "sentinels": [
                f"{s.connection_pool.connection_kwargs['host']}:{s.connection_pool.connection_kwargs['port']}"
                for s in self.sentinel.sentinels
            ],
        }
