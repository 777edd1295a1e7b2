"""A throwaway Redis Cluster and a Redis master + replica + 3 Sentinels, on free loopback ports.

Nodes run ``redis-server`` without persistence (``--save "" --appendonly no``) as children of the
test process, in a temp directory that the teardown removes.  See ``clusters.py`` for the contract.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusters_base import (
    HOST,
    ClusterUnavailable,
    ServerProcess,
    cluster_dir,
    free_ports,
    require_binaries,
    wait_until,
)

SERVICE = "mymaster"


def client(port: int) -> Any:
    """A plain redis-py client of one node (1 s timeouts, str replies)."""
    import redis

    return redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)


def _ask(port: int, *command: str) -> Any:
    """One command to one node; the reply as the server sent it (no redis-py parsing)."""
    conn = client(port)
    conn.response_callbacks.clear()
    try:
        return conn.execute_command(*command)
    finally:
        conn.close()


def _redis_node(directory: Path, port: int, *args: str) -> ServerProcess:
    node_dir = directory / str(port)
    node_dir.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--dir", str(node_dir), "--save", "", "--appendonly"]
    argv += ["no", "--logfile", "", "--repl-diskless-sync-delay", "0", *args]
    return ServerProcess(argv, marker_dir=directory, log=node_dir / "redis.log")


def _start(nodes: dict[int, ServerProcess], ports: list[int]) -> None:
    for port in ports:
        nodes[port].start()
    for port in ports:
        _await_ping(nodes[port], port)


def _await_ping(node: ServerProcess, port: int) -> None:
    wait_until(lambda: node.exited() or _ask(port, "PING"), 10, f"redis-server did not start on port {port}")
    if node.exited():
        raise ClusterUnavailable(f"redis-server on port {port} exited: {node.log_tail()}")


@dataclass
class RedisClusterInfo:
    """A running Redis Cluster: ``ports`` of all nodes, the live topology, and fault helpers."""

    ports: list[int]
    directory: Path
    nodes: dict[int, ServerProcess] = field(repr=False)
    start_seconds: float = 0.0

    @property
    def startup_nodes(self) -> str:
        """``127.0.0.1:p1,127.0.0.1:p2,...`` (every node, masters first as started)."""
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    @property
    def url(self) -> str:
        """The cluster URL issue 16 asks the Redis transport to accept."""
        return f"redis+cluster://{self.startup_nodes}"

    def alive(self) -> list[int]:
        return [port for port in self.ports if self.nodes[port].alive()]

    def topology(self) -> dict[int, list[int]]:
        """{master port: [its replica ports]} as a live node's ``CLUSTER NODES`` reports it (failed nodes left out)."""
        rows = [line.split() for line in _ask(self.alive()[0], "CLUSTER", "NODES").splitlines() if line.strip()]
        ok = {row[0]: int(row[1].split("@")[0].rsplit(":", 1)[1]) for row in rows if "fail" not in row[2]}
        masters = {row[0]: [] for row in rows if "master" in row[2] and row[0] in ok}  # type: dict[str, list[int]]
        for row in rows:
            if "slave" in row[2] and row[0] in ok and row[3] in masters:
                masters[row[3]].append(ok[row[0]])
        return {ok[node_id]: sorted(replicas) for node_id, replicas in masters.items()}

    @property
    def masters(self) -> list[int]:
        return sorted(self.topology())

    @property
    def replicas(self) -> list[int]:
        return sorted(port for replicas in self.topology().values() for port in replicas)

    def master_of(self, key_or_slot: str | bytes | int) -> int:
        """The port of the master serving a key (or a slot number) now."""
        slot = key_or_slot if isinstance(key_or_slot, int) else _key_slot(key_or_slot)
        for start, end, master, *_ in _ask(self.alive()[0], "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"no node serves slot {slot}")

    def kill_master_of(self, key_or_slot: str | bytes | int, timeout_s: float = 30) -> int:
        """``kill -9`` the master of a key or slot; return the port of the replica promoted in its place."""
        return self.kill(self.master_of(key_or_slot), timeout_s)

    def kill(self, port: int, timeout_s: float = 30) -> int:
        """``kill -9`` the node on ``port``; when it was a master, wait until one of its replicas serves
        its slots and every live node says ``cluster_state:ok``.  Returns the port now serving them."""
        slot = _first_slot(_ask(port, "CLUSTER", "SLOTS"), port)
        self.nodes[port].kill()
        if slot is None:
            return port
        wait_until(
            lambda: self.master_of(slot) != port and self._all_ok(),
            timeout_s,
            f"no replica took over slot {slot} from the killed master on port {port}",
            TimeoutError,
        )
        return self.master_of(slot)

    def restart(self, port: int, timeout_s: float = 30) -> None:
        """Start a killed node again (same node id): it rejoins, as a replica when it was replaced."""
        self.nodes[port].start()
        wait_until(
            lambda: (
                self._all_ok()
                and (self._serves_slots(port) or "master_link_status:up" in _ask(port, "INFO", "replication"))
            ),
            timeout_s,
            f"the node on port {port} did not rejoin the cluster",
            TimeoutError,
        )

    def _serves_slots(self, port: int) -> bool:
        return _first_slot(_ask(self.alive()[0], "CLUSTER", "SLOTS"), port) is not None

    def _all_ok(self) -> bool:
        return all("cluster_state:ok" in _ask(port, "CLUSTER", "INFO") for port in self.alive())


def _key_slot(key: str | bytes) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode() if isinstance(key, str) else key))


def _first_slot(slots: list[Any], port: int) -> int | None:
    for start, _end, master, *_ in slots:
        if int(master[1]) == port:
            return int(start)
    return None


@contextlib.contextmanager
def redis_cluster(
    masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000
) -> Iterator[RedisClusterInfo]:
    """Start a Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    ``redis-cli --cluster create`` assigns the slots; the context waits until every node says
    ``cluster_state:ok`` and every replica is in sync.  ``node_timeout_ms`` is short so that a killed
    master is replaced within about 2 s.  Raises ClusterUnavailable when it cannot start.
    """
    require_binaries("redis-server", "redis-cli")
    started = time.monotonic()
    count = masters * (1 + replicas_per_master)
    with cluster_dir("redis-cluster") as directory:
        picked = free_ports(2 * count)
        ports, buses = picked[:count], picked[count:]
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)]
        nodes = {
            port: _redis_node(directory, port, *args, "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf")
            for port, bus in zip(ports, buses, strict=True)
        }
        info = RedisClusterInfo(ports, directory, nodes)
        try:
            _start(nodes, ports)
            create = ["redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in ports)]
            create += ["--cluster-replicas", str(replicas_per_master), "--cluster-yes"]
            import subprocess

            done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise ClusterUnavailable(f"redis-cli --cluster create failed: {done.stdout[-500:]}{done.stderr[-500:]}")
            wait_until(
                lambda: info._all_ok() and all(len(r) == replicas_per_master for r in info.topology().values()),
                30,
                "the Redis Cluster did not reach cluster_state:ok with all its replicas",
            )
            wait_until(
                lambda: all("master_link_status:up" in _ask(p, "INFO", "replication") for p in info.replicas),
                30,
                "the Redis Cluster replicas did not sync",
            )
            info.start_seconds = time.monotonic() - started
            yield info
        finally:
            for node in nodes.values():
                node.kill()


@dataclass
class SentinelInfo:
    """A Redis master, its replica and 3 Sentinels (quorum 2) watching service ``mymaster``."""

    redis_ports: list[int]
    sentinel_ports: list[int]
    directory: Path
    nodes: dict[int, ServerProcess] = field(repr=False)
    service_name: str = SERVICE
    start_seconds: float = 0.0

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """What ``redis.sentinel.Sentinel`` takes."""
        return [(HOST, port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """The Sentinel URL issue 16 asks the Redis transport to accept (database 0)."""
        return f"redis+sentinel://{','.join(f'{h}:{p}' for h, p in self.sentinels)}/{self.service_name}/0"

    def master_port(self) -> int:
        """The master the first answering Sentinel reports."""
        for port in self.sentinel_ports:
            with contextlib.suppress(Exception):
                return int(_ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)[1])
        raise LookupError("no Sentinel answers")

    def failover(self, kill: bool = True, timeout_s: float = 30) -> int:
        """Make the replica the master: ``kill -9`` of the master (``kill=False``: ``SENTINEL FAILOVER``).

        Waits until every Sentinel reports the new master and it says ``role:master``; returns its port.
        """
        old = self.master_port()
        if kill:
            self.nodes[old].kill()
        else:
            _ask(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.service_name)

        def promoted() -> bool:
            reported = {
                int(_ask(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)[1]) for p in self.sentinel_ports
            }
            return (
                len(reported) == 1
                and old not in reported
                and "role:master" in _ask(reported.pop(), "INFO", "replication")
            )

        wait_until(promoted, timeout_s, f"the Sentinels did not promote a replica of port {old}", TimeoutError)
        return self.master_port()

    def restart(self, port: int, timeout_s: float = 30) -> None:
        """Start a killed Redis again as a replica of the current master (``REPLICAOF``, as a Sentinel
        would do some seconds later); wait until every Sentinel sees it as a healthy replica."""
        master = self.master_port()
        self.nodes[port].start()
        wait_until(lambda: _ask(port, "REPLICAOF", HOST, str(master)), 10, f"Redis did not restart on port {port}")

        def healthy(sentinel: int) -> bool:
            for reply in _ask(sentinel, "SENTINEL", "REPLICAS", self.service_name):
                state = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
                if int(state["port"]) == port:
                    return bool(state["flags"] == "slave" and state["master-link-status"] == "ok")
            return False

        wait_until(
            lambda: all(healthy(p) for p in self.sentinel_ports),
            timeout_s,
            f"the Sentinels do not see the Redis on port {port} as a replica of port {master}",
            TimeoutError,
        )


@contextlib.contextmanager
def redis_sentinel(down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> Iterator[SentinelInfo]:
    """Start a master, one replica and 3 Sentinels (quorum 2, ``down-after-milliseconds`` short).

    Waits until the replica is in sync and every Sentinel knows the replica and the 2 other Sentinels
    (only then can they agree on a failover).  Raises ClusterUnavailable when it cannot start.
    """
    require_binaries("redis-server")
    started = time.monotonic()
    with cluster_dir("redis-sentinel") as directory:
        master, replica, *sentinel_ports = free_ports(5)
        nodes = {master: _redis_node(directory, master), replica: _redis_node(directory, replica)}
        nodes[replica].argv += ["--replicaof", HOST, str(master)]
        for port in sentinel_ports:
            conf = directory / f"sentinel-{port}.conf"
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {directory}",
                f"sentinel monitor {SERVICE} {HOST} {master} 2",
            ]
            lines += [f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}"]
            lines += [f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}"]
            conf.write_text("\n".join(lines) + "\n")
            log = directory / f"sentinel-{port}.log"
            nodes[port] = ServerProcess(["redis-server", str(conf), "--sentinel"], marker_dir=directory, log=log)
        info = SentinelInfo([master, replica], sentinel_ports, directory, nodes)
        try:
            _start(nodes, [master, replica])
            wait_until(
                lambda: "master_link_status:up" in _ask(replica, "INFO", "replication"), 20, "the replica did not sync"
            )
            _start(nodes, sentinel_ports)

            def ready(port: int) -> bool:
                reply = _ask(port, "SENTINEL", "MASTER", SERVICE)
                state = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
                return int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2

            wait_until(lambda: all(ready(p) for p in sentinel_ports), 30, "the Sentinels did not find each other")
            info.start_seconds = time.monotonic() - started
            yield info
        finally:
            for node in nodes.values():
                node.kill()
