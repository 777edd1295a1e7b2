"""The Redis transport: one server, a Redis Cluster or a master behind Redis Sentinel.

URL forms::

    redis://[[user]:password@]host[:port][/db][?options]
    rediss://[[user]:password@]host[:port][/db][?options]         TLS
    redis+unix://[[user]:password@]/path/to/redis.sock[?db=N&options]
    redis+cluster://[[user]:password@]host:port[,host:port...][/][?options]
    rediss+cluster://...                                           TLS
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?options]

Options (URL query): ``key_prefix`` (default ``asynctask``; letters, digits and ``_.:-``),
``lease_s`` (default lease, seconds), ``socket_timeout_s`` (default 10: a server silent that long
counts as unavailable), ``wait_replicas`` (default 0: a submit returns once this many replicas
acknowledged it, by ``WAIT``, one more round trip; fewer within ``wait_timeout_s``, default 1, raise
TransportError: the task is stored on the master, but a failover now may lose it), ``db``
(``redis+unix`` only), ``sentinel_password`` (``redis+sentinel`` only); with ``rediss`` and
``rediss+cluster`` also ``ssl_cert_reqs`` (``required``, ``optional``, ``none``) and
``ssl_ca_certs`` (a file).  How calls find a cluster's masters and follow a failover:
:mod:`asynctask.transports.redis_cluster` and :mod:`asynctask.transports.redis_sentinel`.

Layout.  Every key of a queue starts with ``Q = {<key_prefix>:<queue>}:``; the braces are a Redis
Cluster hash tag, so a queue's keys share one slot and every script runs on a cluster too.  A task's
place is its *entry* ``<attempts>:<priority>:<enqueued_us>:<id>`` (attempts = deliveries so far);
a delivery's *receipt* (``Task.receipt``) is ``<seq>:<entry after this delivery>``::

    Q b:<id>          string: the task's body (JSON text), from submit until ack or purge
    Q ready:<p>       list of entries per priority 0..9: LPUSH at the back, RPOP from the front
    Q delayed         sorted set: entry -> due time (µs)
    Q leased          sorted set: receipt -> lease end (µs); a delivery is current while a member
    Q dead            sorted set: id -> died at (µs)
    Q deadinfo        hash: id -> "<attempts>:<priority>:<enqueued_us>:<reason>"
    Q wake            list of wake-up tokens a waiting fetch BLPOPs on (submit, nack, replay push)
    Q seq             counter naming fetches (the <seq> of receipts)
    Q s:<key>         string: a keyed-state record, expiring with its TTL (``redis_state.py``)
    <key_prefix>:queues         set of the queue names ever submitted to (``queues()``)
    <key_prefix>:claim:<key>    ``claim_once`` keys (SET NX PX)

Every operation is one Lua script (``redis_<op>.lua`` beside this module, each after
``redis_common.lua``) run by EVALSHA (loaded again on NOSCRIPT), so a client dying between two
steps never loses or duplicates a task; times are the server's (TIME).  A fetch moves due delayed
entries and expired leases back to the ready lists (at most 1000 of each per call: no daemon), pops
up to ``max_count`` entries from the highest priority down, records their receipts in ``Q leased``
and returns receipts and bodies in one framed string.  When nothing is ready the client sends
``BLPOP Q wake`` for the remaining timeout, capped at the next due delayed task or lease (a lease
taken by another consumer after the wait began is seen when the wait ends), together with the next
fetch, so the server runs that fetch the moment a submit pushes a token: an idle worker starts a
task one round trip after its submit.  Batches (submit, ack) are one script call per 1000 tasks, all calls of a
batch in one round trip.  The hot scripts go over a connection of the transport's own with RESP
packed by hand (a fraction of redis-py's per-call cost; :mod:`asynctask.transports.redis_connection`);
admin and blocking calls use redis-py's pool.  Keyed state and cancel (``redis_cancel.lua``: a
waiting task's entry and body go) are :mod:`asynctask.transports.redis_state`'s.  Export, import and
migrate (take, put, peek, dead-letter pages) are :mod:`asynctask.transports.redis_transfer`'s.

A submit skips an id already stored, so a call retried after a lost reply stores the task once.  A
ready entry that is not an entry, and a body that does not decode, go to the dead letters.  With
``appendonly yes`` a restarted server has every submitted task and no acked one (``appendfsync
always`` for a server crash too).  Connection errors raise TransportUnavailableError ("cannot reach
Redis at host:port: reason", password masked); the next call reconnects.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from asynctask.errors import TaskDecodeError, TransportURLError
from asynctask.message import (
    DeadTask,
    QueueStats,
    Task,
    decode_body,
    new_task_id,
    new_task_ids,
    validate_queue_name,
)
from asynctask.transports.base import (
    Transport,
    dead_reason_for_undecodable,
    option_positive_float,
    parse_url,
    take_options,
)
from asynctask.transports.redis_cluster import ClusterConnection
from asynctask.transports.redis_connection import RedisConnection, load_script, pack
from asynctask.transports.redis_sentinel import SentinelConnection
from asynctask.transports.redis_state import RedisKeyedState
from asynctask.transports.redis_transfer import RedisTransfer

logger = logging.getLogger(__name__)

#: Most delayed tasks and most expired leases one fetch (or stats) moves back to ready.
PROMOTE_BOUND = 1000
#: Tasks per EVALSHA of a batched submit; the chunks of one call go in one pipeline.
SUBMIT_CHUNK = 1000
#: Tasks purged or replayed per script call (keeps each call short on the server).
ADMIN_CHUNK = 1000
DEFAULT_SOCKET_TIMEOUT_S = 10.0

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}\Z")
_SCRIPTS = (
    "submit_one",
    "submit",
    "fetch",
    "ack",
    "nack",
    "extend",
    "dead",
    "stats",
    "purge",
    "dead_list",
    "replay",
    "purge_dead",
)


_CONNECTIONS: dict[str, type[RedisConnection]] = {
    "redis+cluster": ClusterConnection,
    "rediss+cluster": ClusterConnection,
    "redis+sentinel": SentinelConnection,
}


def _option_prefix(name: str, value: str) -> str:
    if _PREFIX_RE.match(value) is None:
        raise TransportURLError(f"option {name}={value!r}: 1 to 100 letters, digits, '_', '.', ':' or '-'")
    return value


def _option_db(name: str, value: str) -> int:
    if not value.isdigit():
        raise TransportURLError(f"option {name}={value!r}: a whole number >= 0 is allowed")
    return int(value)


def _option_choice(*choices: str) -> Any:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            raise TransportURLError(f"option {name}={value!r}: one of {', '.join(choices)} is allowed")
        return value

    return parse


class RedisTransport(RedisTransfer, RedisKeyedState, Transport):
    """Queues in Redis 6.2 or later (RPOP with a count, ZMSCORE).  Thread-safe; fork-safe (a child
    process opens its own connections)."""

    schemes = ("redis", "rediss", "redis+unix", "redis+cluster", "rediss+cluster", "redis+sentinel")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        parsers: dict[str, Any] = {
            "key_prefix": _option_prefix,
            "lease_s": option_positive_float,
            "socket_timeout_s": option_positive_float,
            "wait_replicas": _option_db,
            "wait_timeout_s": option_positive_float,
        }
        if parsed.scheme == "redis+unix":
            parsers["db"] = _option_db
        if parsed.scheme == "redis+sentinel":
            parsers["sentinel_password"] = lambda name, value: value
        if parsed.scheme.startswith("rediss"):
            parsers["ssl_cert_reqs"] = _option_choice("required", "optional", "none")
            parsers["ssl_ca_certs"] = lambda name, value: value
        options = take_options(parsed, parsers)
        self.lease_s = options.get("lease_s", self.lease_s)
        self.key_prefix: str = options.get("key_prefix", "asynctask")
        self.socket_timeout_s: float = options.get("socket_timeout_s", DEFAULT_SOCKET_TIMEOUT_S)
        # submits return once this many replicas have them (WAIT), or raise after wait_timeout_s
        self._wait_replicas: int = options.get("wait_replicas", 0)
        self._wait_timeout_s: float = options.get("wait_timeout_s", 1.0)
        # A blocking wait must end before the socket timeout would call the server unreachable.
        self._max_block_s = max(self.socket_timeout_s - 1.0, self.socket_timeout_s / 2)
        connection = _CONNECTIONS.get(parsed.scheme, RedisConnection)
        self._conn = conn = connection(parsed, options, self.socket_timeout_s)
        #: The redis-py client (connection pool) this transport uses, for tools and tests.
        self.client = conn.client
        # bound once: the hot paths call them with no layer in between
        self._execute, self._eval, self._evals, self._send = conn.execute, conn.eval, conn.evals, conn.send
        self._bases: dict[str, bytes] = {}
        self._registered: set[str] = set()
        self._submit_heads: dict[bytes, bytes] = {}
        self._s = {name: load_script(name) for name in _SCRIPTS}
        self._execute("PING")

    # -- keys ----------------------------------------------------------------------------------

    def _base(self, queue: str) -> bytes:
        base = self._bases.get(queue) if type(queue) is str else None
        if base is None:
            validate_queue_name(queue)
            base = self._bases[queue] = f"{{{self.key_prefix}:{queue}}}:".encode()
        return base

    def _register(self, queue: str) -> None:
        if queue not in self._registered:
            self._execute("SADD", f"{self.key_prefix}:queues", queue)
            self._registered.add(queue)

    # -- producing -----------------------------------------------------------------------------

    def submit_task(
        self,
        queue: str,
        payload: dict[str, Any] | None = None,
        *,
        delay_s: float = 0,
        priority: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """As :meth:`Transport.submit_task` (the same checks), in one round trip: one EVALSHA."""
        text, delay_s = self.prepare_one(queue, payload, delay_s, priority, meta)
        body = text.encode()
        base = self._bases.get(queue) or self._base(queue)
        if queue not in self._registered:
            self._register(queue)
        head = self._submit_heads.get(base)
        if head is None:
            head = self._submit_heads[base] = pack((b"EVALSHA", self._s["submit_one"].bsha, b"1", base))[4:]
        task_id = new_task_id()
        delay = b"%d" % (delay_s * 1_000_000) if delay_s else b"0"
        self._send(
            b"*8\r\n%s$%d\r\n%s\r\n$1\r\n%d\r\n$32\r\n%s\r\n$%d\r\n%s\r\n"
            % (head, len(delay), delay, priority, task_id.encode(), len(body), body),
            [self._s["submit_one"]],
        )
        if self._wait_replicas:
            self._conn.wait_replicas(base, self._wait_replicas, self._wait_timeout_s)
        return task_id

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        base = self._base(queue)
        self._register(queue)
        ids = new_task_ids(len(bodies))
        delay_us = int(delay_s * 1_000_000)
        script = self._s["submit"]
        # Bodies travel joined by newlines; encode_payload never makes one, but _submit is a hook.
        chunk = 1 if any("\n" in body for body in bodies) else SUBMIT_CHUNK
        self._evals(
            [
                (script, base, (delay_us, priority, "".join(ids[i : i + chunk]), "\n".join(bodies[i : i + chunk])))
                for i in range(0, len(bodies), chunk)
            ]
        )
        if self._wait_replicas:
            self._conn.wait_replicas(base, self._wait_replicas, self._wait_timeout_s)
        return ids

    # -- consuming -----------------------------------------------------------------------------

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        base = self._base(queue)
        fetch = self._s["fetch"]
        args = (max_count, max(int(lease_s * 1_000_000), 1), PROMOTE_BOUND)
        deadline = time.monotonic() + timeout_s
        reply = self._eval(fetch, base, *args)
        while True:
            if reply[1]:
                tasks = self._tasks(queue, base, reply[1])
                if tasks:
                    return tasks
                reply = self._eval(fetch, base, *args)  # every one was undecodable (now dead): go on
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait_us = reply[0]
            block = remaining if wait_us < 0 else min(remaining, wait_us / 1_000_000)
            # Redis takes whole milliseconds, and 0 would mean "forever".
            reply = self._conn.wait_then_fetch(base, max(min(block, self._max_block_s), 0.001), fetch, args)

    def _tasks(self, queue: str, base: bytes, blob: bytes) -> list[Task]:
        """Tasks from a fetch reply: per task "<receipt> <body length>\\n<body>"."""
        tasks = []
        buried: list[str] = []
        pos, end = 0, len(blob)
        while pos < end:
            newline = blob.index(b"\n", pos)
            head, size = blob[pos:newline].split(b" ")
            pos = newline + 1 + int(size)
            body = blob[newline + 1 : pos]
            receipt = head.decode()
            _, attempts, priority, enqueued, task_id = receipt.split(":")
            try:
                payload, meta = decode_body(body)
            except TaskDecodeError as exc:
                buried += [receipt, dead_reason_for_undecodable(exc)]
                continue
            tasks.append(
                Task(task_id, queue, payload, int(attempts), int(enqueued) / 1e6, int(priority), receipt, meta)
            )
        if buried:
            logger.warning("queue %s: %d undecodable task(s) moved to the dead letters", queue, len(buried) // 2)
            self._eval(self._s["dead"], base, *buried)
        return tasks

    def _ack(self, task: Task) -> None:
        if task.receipt:
            self._eval(self._s["ack"], self._base(task.queue), task.receipt)

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack many tasks in one round trip (one script call per queue and 1000 tasks)."""
        by_queue: dict[str, list[str]] = {}
        for task in tasks:
            by_queue.setdefault(task.queue, []).append(task.receipt)
        script = self._s["ack"]
        calls = [
            (script, self._base(queue), ("\n".join(receipts[i : i + ADMIN_CHUNK]),))
            for queue, receipts in by_queue.items()
            for i in range(0, len(receipts), ADMIN_CHUNK)
        ]
        if calls:
            self._evals(calls)

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        self._eval(
            self._s["nack"], self._base(task.queue), task.receipt, int(delay_s * 1_000_000), 1 if count_attempt else 0
        )

    def _extend(self, task: Task, lease_s: float) -> bool:
        return bool(self._eval(self._s["extend"], self._base(task.queue), task.receipt, max(int(lease_s * 1e6), 1)))

    def _dead(self, task: Task, reason: str) -> None:
        self._eval(self._s["dead"], self._base(task.queue), task.receipt, reason)

    # -- inspecting and administering ----------------------------------------------------------

    def _stats(self, queue: str) -> QueueStats:
        ready, delayed, in_flight, dead, age_us = self._eval(self._s["stats"], self._base(queue), PROMOTE_BOUND)
        return QueueStats(ready, delayed, in_flight, dead, None if age_us < 0 else age_us / 1_000_000)

    def _queues(self) -> list[str]:
        names = self._execute("SMEMBERS", f"{self.key_prefix}:queues")
        return sorted(name.decode() for name in names)

    def _purge(self, queue: str) -> int:
        base = self._base(queue)
        total = 0
        while True:
            count = int(self._eval(self._s["purge"], base, ADMIN_CHUNK))
            total += count
            if count < ADMIN_CHUNK:
                return total

    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        reply = self._eval(self._s["dead_list"], self._base(queue), limit)
        text = [item.decode("utf-8", "replace") for item in reply]
        rows = [text[i : i + 7] for i in range(0, len(text), 7)]
        return [
            DeadTask(task_id, queue, body, reason, int(a), float(dead_us) / 1e6, int(p), int(e) / 1e6)
            for task_id, body, reason, a, dead_us, p, e in rows
        ]

    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op("replay", queue, ids)

    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        return self._dead_op("purge_dead", queue, ids)

    def _dead_op(self, script_name: str, queue: str, ids: list[str] | None) -> int:
        """Run a dead-letter script on the named ids, or on all dead tasks, in bounded chunks."""
        base = self._base(queue)
        script = self._s[script_name]
        if ids is not None:
            chosen = ids
            return sum(
                int(self._eval(script, base, ADMIN_CHUNK, *chosen[i : i + ADMIN_CHUNK]))
                for i in range(0, len(chosen), ADMIN_CHUNK)
            )
        # All: bounded by the count at the start, so tasks dying again meanwhile are not looped on.
        left = int(self._execute("ZCARD", base + b"dead"))
        total = 0
        while left > 0:
            count = int(self._eval(script, base, min(left, ADMIN_CHUNK)))
            if count == 0:
                break
            total += count
            left -= count
        return total

    def _claim_once(self, key: str, ttl: float) -> bool:
        ttl_ms = max(math.ceil(ttl * 1000), 1)
        return bool(self._execute("SET", f"{self.key_prefix}:claim:{key}", 1, "NX", "PX", ttl_ms))

    def topology(self) -> dict[str, Any]:
        """A cluster's masters (slot ranges, replicas) or the Sentinels' master; {} for one server."""
        return self._conn.topology()

    def close(self) -> None:
        """Disconnect every connection.  Idempotent."""
        self._conn.close()
