"""The Redis transport on a Redis Cluster: ``redis+cluster://`` and ``rediss+cluster://`` (TLS).

URL form::

    redis+cluster://[[user]:password@]host:port[,host:port...][/][?options]

The hosts are startup nodes (any of the cluster's; one answering is enough): redis-py's
``RedisCluster`` asks them for the slot map (``CLUSTER SLOTS``) and serves admin commands.  A
cluster has database 0 only, so the URL has no database number.

Routing.  Every key of a queue carries the queue's hash tag ``{<key_prefix>:<queue>}``, so every
script (KEYS[1] is the queue's base) and every keyed-state command touches one slot and runs on the
master owning it; nothing uses SELECT, MULTI or a blocking pop over several queues.  As on one
server, the hot calls go over connections of the transport's own with RESP packed by hand: one
connection per master (``hot@host:port``, ``wait@host:port``), the calls of one send grouped by the
master owning their slot (a group a round trip).  ``<key_prefix>:queues`` and claim keys are single
keys, sent through ``RedisCluster``.  A SCAN whose MATCH pattern starts with a hash tag (the keyed
state's listing) runs on the master of that slot; any other visits every master.

Failures.  A ``MOVED`` reply (a failover or a resharding moved the slot) refreshes the slot map and
sends again; ``ASK`` sends the one call to the named node after ``ASKING``; ``TRYAGAIN``,
``CLUSTERDOWN`` and ``READONLY`` (the node became a replica) refresh and send again after a short
pause; ``NOSCRIPT`` loads the scripts on that master.  None of these ran the call, so they are sent
again whatever ``repeat`` says.  A connection that breaks refreshes the slot map and is sent again
once when safe to repeat (as on one server); else, or when it breaks again (a killed master not yet
replaced: ``cluster-node-timeout`` plus an election), TransportUnavailableError names the node, and
the next call finds the promoted replica.  Errors always name the node: ``Redis at host:port failed:
...``.  Redis replication is asynchronous: a write acknowledged by a master that dies before its
replica got it is lost with it (see docs/scaling.rst).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from asynctask.errors import TransportError, TransportURLError
from asynctask.transports.base import ParsedURL
from asynctask.transports.redis_connection import RedisConnection, Script, pack

#: Rounds of a send (after MOVED, ASK, TRYAGAIN, CLUSTERDOWN, NOSCRIPT or a broken connection).
SEND_ROUNDS = 6
#: Pause before sending again after TRYAGAIN or CLUSTERDOWN (grows with each round).
RETRY_PAUSE_S = 0.05
_ASKING = pack((b"ASKING",))
_RETRY_AFTER = (TryAgainError, ClusterDownError, ReadOnlyError)


def split_commands(blob: bytes) -> list[tuple[bytes, bytes]]:
    """``blob`` (commands in RESP) as ``(command, key)`` pairs: the key is EVALSHA's first key,
    else the first argument (b"" when none)."""
    out: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(blob)
    while pos < end:
        start = pos
        line = blob.index(b"\r\n", pos)
        count = int(blob[pos + 1 : line])
        pos = line + 2
        head: list[bytes] = []
        for _ in range(count):
            line = blob.index(b"\r\n", pos)
            size = int(blob[pos + 1 : line])
            pos = line + 2
            if len(head) < 4:
                head.append(blob[pos : pos + size])
            pos += size + 2
        verb = head[0].upper() if head else b""
        key = head[3] if verb in (b"EVALSHA", b"EVAL") and len(head) > 3 else (head[1] if len(head) > 1 else b"")
        out.append((blob[start:pos], key))
    return out


def pattern_slot(pattern: bytes) -> int | None:
    """The slot every key matching the SCAN ``pattern`` is in (its leading hash tag), or None."""
    if not pattern.startswith(b"{"):
        return None
    close = pattern.find(b"}", 1)
    tag = pattern[1:close]
    if close < 0 or not tag or any(c in tag for c in b"*?["):
        return None
    return int(key_slot(b"{" + tag.replace(b"\\", b"") + b"}"))


class _Plan:
    """What one round of a send left to do: the calls to send again and how."""

    def __init__(self) -> None:
        self.again: list[int] = []
        self.asking: dict[int, str] = {}  # call -> node to send it to after ASKING
        self.moved: dict[int, str] = {}  # slot -> node, from MOVED replies
        self.load: dict[str, dict[int, Script]] = {}  # node -> scripts to load there
        self.refresh = self.pause = False

    def classify(self, node: str, indexes: list[int], replies: list[Any], scripts: Sequence[Script | None]) -> None:
        """Note the error replies among ``replies[indexes]`` that say "not run, send again"; raise
        TransportError naming ``node`` for any other."""
        for i in indexes:
            reply = replies[i]
            if not isinstance(reply, redis.ResponseError):
                continue
            script = scripts[i]
            if isinstance(reply, MovedError):
                self.moved[int(reply.slot_id)] = f"{reply.host}:{reply.port}"
                self.refresh = True
            elif isinstance(reply, AskError):
                self.asking[i] = f"{reply.host}:{reply.port}"
            elif isinstance(reply, _RETRY_AFTER):
                self.refresh = self.pause = True
            elif isinstance(reply, NoScriptError) and script is not None:
                self.load.setdefault(node, {})[id(script)] = script
            else:
                raise TransportError(f"Redis at {node} failed: {reply}")
            self.again.append(i)


class ClusterConnection(RedisConnection):
    """:class:`RedisConnection` on a Redis Cluster: calls routed to the master of their slot."""

    def _connect(self, parsed: ParsedURL, options: dict[str, Any]) -> Any:
        if parsed.path.strip("/"):
            raise TransportURLError(
                f"transport URL {parsed.masked!r}: a Redis Cluster has database 0 only; the path must be empty"
            )
        common = self._common(parsed, options)
        retry = common.pop("retry")
        self._node_kwargs = {**common, "retry": retry}
        self._node_kwargs.pop("decode_responses")
        if self._node_kwargs.pop("ssl", False):
            self._node_class: type[redis.Connection] = redis.SSLConnection
        else:
            self._node_class = redis.Connection
        self._slots: dict[bytes, int] = {}
        self._routes: dict[int, str] = {}
        nodes = [ClusterNode(host, port or 6379) for host, port in parsed.hosts]  # type: ignore[no-untyped-call]
        try:
            return RedisCluster(startup_nodes=nodes, **common)
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
            raise self._unavailable(exc) from None

    def _address(self, parsed: ParsedURL) -> str:
        return "cluster " + ",".join(f"{host}:{port or 6379}" for host, port in parsed.hosts)

    # -- routing ---------------------------------------------------------------------------------

    def _node_of(self, key: bytes) -> str:
        """``host:port`` of the master serving ``key``'s slot (as last refreshed)."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = int(key_slot(key))
            if len(self._slots) > 100_000:
                self._slots.clear()
        node = self._routes.get(slot)
        if node is None:
            try:
                node = self._routes[slot] = self.client.nodes_manager.get_node_from_slot(slot).name
            except RedisClusterException as exc:
                raise self._unavailable(exc) from None
        return node

    def _refresh(self) -> None:
        """Ask the cluster for its slot map again (after MOVED, a failover, a broken connection)."""
        self._routes.clear()
        try:
            self.client.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._unavailable(exc) from None

    def _node_connection(self, role: str, node: str) -> Any:
        """The transport's own connection ``role`` ("hot", "wait") to ``node``; caller holds the lock."""
        name = f"{role}@{node}"
        conn, pid = self._own.get(name, (None, 0))
        if conn is None or pid != os.getpid():
            host, _, port = node.rpartition(":")
            conn = self._node_class(host=host, port=int(port), **self._node_kwargs)
            self._own[name] = (conn, os.getpid())
        return conn

    # -- the hot path ----------------------------------------------------------------------------

    def evals(self, calls: Sequence[tuple[Script, bytes, Sequence[Any]]], *, repeat: bool = True) -> list[Any]:
        commands = [(pack((b"EVALSHA", script.bsha, b"1", base, *args)), base) for script, base, args in calls]
        return self._route(commands, [script for script, _, _ in calls], repeat)

    def send(self, blob: bytes, scripts: Sequence[Script | None], *, repeat: bool = True) -> list[Any]:
        return self._route(split_commands(blob), scripts, repeat)

    def _route(self, commands: list[tuple[bytes, bytes]], scripts: Sequence[Script | None], repeat: bool) -> list[Any]:
        """Send each ``(command, key)`` to the master of its key's slot, one round trip per master;
        the replies in order (see the module docstring for what is sent again)."""
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, str] = {}
        broke = False
        with self._lock:
            for round_no in range(SEND_ROUNDS):
                groups: dict[str, list[int]] = {}
                for i in todo:
                    groups.setdefault(asking.get(i) or self._node_of(commands[i][1]), []).append(i)
                plan = _Plan()
                for node, indexes in groups.items():
                    conn = self._node_connection("hot", node)
                    if not repeat:
                        self._drop_stale(conn)
                    try:
                        self._round_trip(conn, commands, indexes, asking, replies)
                    except (redis.TimeoutError, redis.ConnectionError, OSError) as exc:
                        conn.disconnect()
                        if broke or not repeat or isinstance(exc, redis.TimeoutError):
                            self._routes.clear()
                            raise self._unavailable(exc, node) from None
                        broke = plan.refresh = True
                        plan.again += indexes
                        continue
                    except BaseException:
                        conn.disconnect()  # replies may be left unread: never reuse the connection
                        raise
                    plan.classify(node, indexes, replies, scripts)
                for node, loading in plan.load.items():
                    self._load_scripts(node, list(loading.values()))
                if not plan.again:
                    return replies
                asking = plan.asking
                if plan.pause:
                    time.sleep(RETRY_PAUSE_S * (round_no + 1))
                if plan.refresh:
                    self._refresh()
                    self._routes.update(plan.moved)  # the node that answered MOVED knows best
                todo = sorted(plan.again)
        first = replies[todo[0]]
        raise TransportError(f"Redis at {self._node_of(commands[todo[0]][1])} failed: {first}")

    @staticmethod
    def _round_trip(
        conn: Any, commands: list[tuple[bytes, bytes]], indexes: list[int], asking: dict[int, str], replies: list[Any]
    ) -> None:
        """Send the commands at ``indexes`` on ``conn`` in one write; each reply (or ResponseError)
        into ``replies``."""
        conn.send_packed_command(
            [b"".join((_ASKING + commands[i][0]) if i in asking else commands[i][0] for i in indexes)],
            check_health=False,
        )
        for i in indexes:
            if i in asking:
                try:
                    conn.read_response()
                except redis.ResponseError:
                    pass
            try:
                replies[i] = conn.read_response()
            except redis.ResponseError as exc:
                replies[i] = exc

    def _load_scripts(self, node: str, scripts: list[Script]) -> None:
        conn = self._node_connection("hot", node)
        try:
            for script in scripts:
                conn.send_packed_command([pack((b"SCRIPT", b"LOAD", script.text))], check_health=False)
                conn.read_response()
        except (redis.TimeoutError, redis.ConnectionError, OSError) as exc:
            conn.disconnect()
            raise self._unavailable(exc, node) from None

    def wait_then_fetch(self, base: bytes, block_s: float, fetch: Script, args: tuple[Any, ...]) -> Any:
        """As on one server, on the master of the queue's slot; any error reply or a broken
        connection falls back to a plain fetch (which follows MOVED, loads scripts, reports)."""
        if self._wait_lock.acquire(blocking=False):
            try:
                node = self._node_of(base)
                conn = self._node_connection("wait", node)
                blob = pack((b"BLPOP", base + b"wake", b"%.3f" % block_s)) + pack(
                    (b"EVALSHA", fetch.bsha, b"1", base, *args)
                )
                try:
                    conn.send_packed_command([blob], check_health=False)
                    try:
                        conn.read_response()
                    except redis.ResponseError:
                        pass  # MOVED, CLUSTERDOWN, UNBLOCKED...: the fetch's reply tells
                    return conn.read_response()
                except redis.ResponseError:
                    pass
                except redis.TimeoutError as exc:
                    conn.disconnect()
                    raise self._unavailable(exc, node) from None
                except (redis.ConnectionError, OSError):
                    conn.disconnect()
                    self._routes.clear()
                except BaseException:
                    conn.disconnect()
                    raise
            finally:
                self._wait_lock.release()
        else:  # another thread of ours is waiting
            self.execute("BLPOP", base + b"wake", round(block_s, 3))
        return self.eval(fetch, base, *args)

    def wait_replicas(self, base: bytes, count: int, timeout_s: float) -> None:
        node = self._node_of(base)
        with self._lock:
            conn = self._node_connection("hot", node)
            try:
                conn.send_packed_command([pack((b"WAIT", count, max(int(timeout_s * 1000), 1)))], check_health=False)
                acknowledged = conn.read_response()
            except (redis.TimeoutError, redis.ConnectionError, OSError) as exc:
                conn.disconnect()
                raise self._unavailable(exc, node) from None
        self._check_replicas(acknowledged, count, node)

    # -- admin -----------------------------------------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """One command through ``RedisCluster`` (which routes it and follows MOVED); SCAN as the
        module docstring says."""
        verb = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if verb.upper() == "SCAN":
            return self._scan(*args[1:])
        try:
            return self.client.execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
            raise self._unavailable(exc) from None
        except redis.RedisError as exc:
            raise TransportError(f"Redis at {self._where} failed: {exc}") from None

    def _scan(self, cursor: Any, *options: Any) -> Any:
        """SCAN: on the master of the MATCH pattern's hash tag, cursor by cursor; without one, a
        whole pass over every master at once (cursor 0 back)."""
        pattern = b""
        for name, value in zip(options[::2], options[1::2], strict=False):
            if str(name).upper() == "MATCH":
                pattern = value if isinstance(value, bytes) else str(value).encode()
        slot = pattern_slot(pattern)
        try:
            if slot is not None:
                node = self.client.nodes_manager.get_node_from_slot(slot)
                return node.redis_connection.execute_command("SCAN", cursor, *options)
            found: list[bytes] = []
            for node in self.client.get_primaries():
                step: Any = 0
                while True:
                    step, names = node.redis_connection.execute_command("SCAN", step, *options)
                    found += names
                    if int(step) == 0:
                        break
            return 0, found
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
            raise self._unavailable(exc) from None
        except redis.RedisError as exc:
            raise TransportError(f"Redis at {self._where} failed: {exc}") from None

    def topology(self) -> dict[str, Any]:
        """The masters with their slot ranges and replicas, and any node marked failed, as
        ``CLUSTER NODES`` on a master reports them now."""
        self._refresh()
        text = b""
        for master in sorted({self._node_of_slot(slot) for slot in (0, 8192, 16383)}):
            with self._lock:
                conn = self._node_connection("hot", master)
                try:
                    conn.send_packed_command([pack((b"CLUSTER", b"NODES"))], check_health=False)
                    text = conn.read_response()
                    break
                except (redis.RedisError, OSError):
                    conn.disconnect()
        if not text:
            raise self._unavailable(ConnectionError("no master answers CLUSTER NODES"))
        return cluster_nodes(text.decode())

    def _node_of_slot(self, slot: int) -> str:
        try:
            return str(self.client.nodes_manager.get_node_from_slot(slot).name)
        except RedisClusterException as exc:
            raise self._unavailable(exc) from None


def cluster_nodes(text: str) -> dict[str, Any]:
    """``CLUSTER NODES`` output as :meth:`ClusterConnection.topology` reports it."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    address = {row[0]: row[1].split("@")[0].split(",")[0] for row in rows}
    failed = sorted(address[row[0]] for row in rows if "fail" in row[2].split(","))
    masters = [row for row in rows if "master" in row[2].split(",") and "fail" not in row[2].split(",")]
    replicas: dict[str, list[str]] = {}
    for row in rows:
        if "slave" in row[2].split(",") and "fail" not in row[2].split(","):
            replicas.setdefault(row[3], []).append(address[row[0]])
    report = [
        {
            "node": address[row[0]],
            "slots": [span for span in row[8:] if not span.startswith("[")],
            "replicas": sorted(replicas.get(row[0], [])),
        }
        for row in masters
    ]
    report.sort(key=lambda master: int(master["slots"][0].split("-")[0]) if master["slots"] else 16384)
    return {"kind": "redis-cluster", "masters": report, "failed": failed}
