"""A throwaway RabbitMQ cluster of a few nodes on one machine, beside the machine's own broker.

Each node has its own ``RABBITMQ_NODENAME`` (``atq<pid><tag>n<i>@localhost``), its own config file
with its listener (the machine's ``/etc/rabbitmq/rabbitmq.conf`` pins 5672, so
``RABBITMQ_NODE_PORT`` alone would not do), its own distribution port, mnesia and log directories
owned by ``rabbitmq``, and no plugins.  The Erlang cookie is the machine's
(``~rabbitmq/.erlang.cookie``), so ``rabbitmqctl -n <node>`` reaches them.  All nodes boot at once;
the others then ``join_cluster`` the first.  See ``clusters.py`` for the contract.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clusters_base import (
    HOST,
    ClusterUnavailable,
    ServerProcess,
    chown_tree,
    cluster_dir,
    free_ports,
    port_answers,
    require_binaries,
    require_user,
    tail,
    wait_until,
)

BOOT_TIMEOUT_S = 120.0


def rabbitmqctl(node: str, *args: str, timeout_s: float = 60) -> str:
    """``rabbitmqctl -n node args...``; its output, or ClusterUnavailable with its error."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        ["rabbitmqctl", "-n", node, *args], capture_output=True, text=True, timeout=timeout_s, check=False, env=env
    )
    if done.returncode != 0:
        raise ClusterUnavailable(
            f"rabbitmqctl -n {node} {' '.join(args)} failed: {(done.stderr or done.stdout)[-600:]}"
        )
    return done.stdout


@dataclass
class RabbitNode:
    name: str
    port: int
    dist_port: int
    directory: Path
    process: ServerProcess = field(repr=False)

    @property
    def url(self) -> str:
        """This node alone."""
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    @property
    def pid(self) -> int | None:
        """The node's Erlang VM (``beam.smp``)."""
        return self.process.pid

    def log_tail(self) -> str:
        """The end of its output and of its logs, for error messages."""
        tails = [self.process.log_tail(5)] + [tail(path, 10) for path in sorted((self.directory / "log").glob("*.log"))]
        return "\n".join(text for text in tails if text)


@dataclass
class RabbitClusterInfo:
    """A running RabbitMQ cluster: ``nodes`` in start order (the first is the one others joined)."""

    nodes: list[RabbitNode]
    directory: Path
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
        """Every node, in order: ``amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,.../%2F``."""
        return f"amqp://guest:guest@{','.join(f'{HOST}:{n.port}' for n in self.nodes)}/%2F"

    def node(self, which: RabbitNode | str | int) -> RabbitNode:
        """A node by itself, its name (``atq..n1@localhost``) or its AMQP port."""
        for node in self.nodes:
            if which is node or which in (node.name, node.port):
                return node
        raise LookupError(f"no node {which!r} in this cluster ({', '.join(n.name for n in self.nodes)})")

    def node_of_port(self, port: int) -> RabbitNode:
        return self.node(port)

    def running_nodes(self, via: RabbitNode | str | int | None = None) -> list[str]:
        """The running nodes as ``cluster_status`` on ``via`` (default: the first live node) reports them."""
        node = self.node(via) if via is not None else next(n for n in self.nodes if n.process.alive())
        status = json.loads(rabbitmqctl(node.name, "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def kill(self, which: RabbitNode | str | int) -> None:
        """``kill -9`` of that node's Erlang VM (the others see it go at once)."""
        self.node(which).process.kill()

    def restart(self, which: RabbitNode | str | int, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Start a killed node again; it rejoins the cluster (its mnesia remembers it)."""
        node = self.node(which)
        node.process.start()
        _await_boot(node, timeout_s)
        wait_until(
            lambda: node.name in self.running_nodes(node),
            30,
            f"{node.name} did not rejoin the cluster",
            TimeoutError,
        )


def _server_script() -> str:
    """The real ``rabbitmq-server`` script: Debian's /usr/sbin wrapper would send a node's output
    to the machine broker's /var/log/rabbitmq/startup_log."""
    found = Path(shutil.which("rabbitmq-server") or "rabbitmq-server").resolve()
    real = found.parent / "rabbitmq-server"
    return str(real if found.name == "rabbitmq-script-wrapper" and real.exists() else found)


def _await_boot(node: RabbitNode, timeout_s: float) -> None:
    process = node.process
    wait_until(
        lambda: process.exited() or port_answers(node.port),
        timeout_s,
        f"RabbitMQ node {node.name} did not open port {node.port}: {node.log_tail()}",
    )
    if process.exited():
        raise ClusterUnavailable(f"RabbitMQ node {node.name} exited: {node.log_tail()}")


def _join(node: RabbitNode, first: RabbitNode) -> None:
    rabbitmqctl(node.name, "stop_app")
    rabbitmqctl(node.name, "join_cluster", first.name)
    rabbitmqctl(node.name, "start_app")
    _await_boot(node, BOOT_TIMEOUT_S)


@contextlib.contextmanager
def rabbitmq_cluster(nodes: int = 3) -> Iterator[RabbitClusterInfo]:
    """Start ``nodes`` RabbitMQ nodes on free ports and cluster them (``rabbitmqctl join_cluster``).

    The user ``guest`` (password ``guest``) of a fresh node may log in (``loopback_users = none``);
    vhost ``/``.  Teardown kills every node (``kill -9``: nothing of theirs is kept) and removes their
    directories.  Raises ClusterUnavailable when RabbitMQ is missing or a node does not boot or join.
    """
    require_binaries("rabbitmq-server", "rabbitmqctl")
    owner = require_user("rabbitmq")
    started = time.monotonic()
    tag = f"atq{uuid.uuid4().hex[:6]}"
    with cluster_dir("rabbitmq", owner) as directory:
        ports = free_ports(2 * nodes)
        made = []
        for index in range(nodes):
            node_dir = directory / f"n{index + 1}"
            (node_dir / "log").mkdir(parents=True)
            (node_dir / "mnesia").mkdir()
            (node_dir / "plugins").write_text("[].\n")
            config = [f"listeners.tcp.local = {HOST}:{ports[index]}", "loopback_users = none"]
            config += ["disk_free_limit.absolute = 10MB"]
            (node_dir / "rabbitmq.conf").write_text("\n".join(config) + "\n")
            name = f"{tag}n{index + 1}@localhost"
            env = {
                "RABBITMQ_NODENAME": name,
                "RABBITMQ_NODE_PORT": str(ports[index]),
                "RABBITMQ_DIST_PORT": str(ports[nodes + index]),
                "RABBITMQ_CONFIG_FILE": str(node_dir / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node_dir / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node_dir / "plugins"),
                "RABBITMQ_MNESIA_BASE": str(node_dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node_dir / "log"),
                "RABBITMQ_PID_FILE": str(node_dir / "pid"),
            }
            process = ServerProcess(
                [_server_script()],
                marker_dir=directory,
                log=node_dir / "stdout.log",
                user=owner,
                env=env,
                pid_file=node_dir / "pid",
            )
            made.append(RabbitNode(name, ports[index], ports[nodes + index], node_dir, process))
        chown_tree(directory, owner)
        info = RabbitClusterInfo(made, directory)
        try:
            for node in made:
                node.process.start()
            for node in made:
                _await_boot(node, BOOT_TIMEOUT_S)
            with ThreadPoolExecutor(max_workers=max(1, nodes - 1)) as pool:
                for joined in [pool.submit(_join, node, made[0]) for node in made[1:]]:
                    joined.result()
            names = sorted(node.name for node in made)
            wait_until(lambda: info.running_nodes() == names, 60, f"the RabbitMQ nodes did not all join: {names}")
            info.start_seconds = time.monotonic() - started
            yield info
        finally:
            for node in made:
                node.process.kill()
