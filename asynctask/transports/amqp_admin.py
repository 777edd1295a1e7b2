"""Administration of the AMQP transport: stats, queues, purge, dead letters, replay, claims.

:class:`AmqpAdmin` works over the transport's :class:`~asynctask.transports.amqp_connection.AmqpConnection`
(which declares the queues) and reads its consumer state; layout: see ``amqp.py``.

The registry: AMQP cannot list queues, so the first instance that creates a work queue or a delay
queue publishes one line about it (``queue\\t<name>`` or ``delay\\t<name>\\t<ms>``) to the durable
queue ``<prefix>.registry``.  Readers (``queues``, ``stats``, ``purge``, ``dead_tasks``,
``replay_dead``) take every registry message without acking it on a channel of their own and close
that channel, which puts them back.  So that two readers never see each other's half, readers hold
the admin lock: a message in ``<prefix>.lock`` (``x-max-length`` 1, ``x-overflow reject-publish``,
a 15 s message TTL, so a crashed reader frees it), taken by a confirmed publish (ack: taken; nack:
held by another, retry).  A reader drops registry lines of queues that no longer exist (delay
queues expire; a work queue may be deleted by hand), and duplicate lines (two creators racing);
whoever declares such a queue again registers it again.

Reading dead letters without taking them: a quorum queue (RabbitMQ 3.x) puts what a closed channel
gives back behind the rest, so ``dead_tasks``, dead pages and ``replay_dead``/``purge_dead`` of
named ids go through the whole dead queue (:attr:`AmqpAdmin.whole_reads`), which keeps its order;
a classic one is read only as far as needed.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions

from asynctask.errors import TransportError
from asynctask.message import DeadTask, QueueStats, new_task_id
from asynctask.transports.amqp_connection import AmqpConnection
from asynctask.transports.amqp_consumer import Consumers
from asynctask.transports.amqp_names import (
    HDR_ATTEMPTS,
    HDR_DEAD_AT,
    HDR_ENQUEUED,
    HDR_REASON,
    MAX_TTL_MS,
    PERSISTENT,
    claim_expiry_ms,
    from_ms,
    to_ms,
)
from asynctask.transports.base import Backoff

LOCK_TTL_MS = 15_000
LOCK_WAIT_S = 30.0


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class AmqpAdmin:
    """Stats, queues, purge, dead letters, replay and claims over an :class:`AmqpConnection`.

    ``consumers`` is the transport's consumer state: stats and purge count and drop what it has
    prefetched (see the module docstring of ``amqp.py``).  Arguments arrive checked (the
    transport's public methods check them).  Used from the transport's thread.
    """

    def __init__(self, connection: AmqpConnection, consumers: Consumers) -> None:
        self.connection = connection
        self.consumers = consumers
        self.names = connection.names

    def topology(self) -> dict[str, Any]:
        """The host:port connected to and what that broker says of itself (``cluster_name``, product
        and version: AMQP 0-9-1 does not name the node), the hosts of the URL, the queue options."""
        connection = self.connection
        with connection.guard():
            server = dict(connection.server)
        found: dict[str, Any] = {
            "connected_to": connection.where,
            "cluster_name": server.get("cluster_name", ""),
            "broker": f"{server.get('product', '')} {server.get('version', '')}".strip(),
            "hosts": list(connection.hosts),
            "queue_type": connection.options.queue_type,
            "consumer_timeout_s": connection.options.consumer_timeout_s,
        }
        if connection.options.queue_type == "quorum":
            found["delivery_limit"] = connection.options.delivery_limit
        return found

    # -- the registry and the admin lock -------------------------------------------------------

    @contextlib.contextmanager
    def _admin_lock(self) -> Iterator[None]:
        self.connection.declare(self.names.lock, {"x-max-length": 1, "x-overflow": "reject-publish"})
        properties = pika.BasicProperties(expiration=str(LOCK_TTL_MS))
        backoff = Backoff(LOCK_WAIT_S, first_s=0.005, max_s=0.1)
        while self.connection.publish([(self.names.lock, properties, b"locked")]):
            if not backoff.wait():
                raise TransportError(f"the admin lock {self.names.lock!r} stayed taken for {LOCK_WAIT_S:.0f} s")
        try:
            yield
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.connection.admin_channel().basic_get(self.names.lock, auto_ack=True)

    def _registry(self) -> tuple[set[str], dict[str, set[int]]]:
        """(work queue names, queue -> delay buckets), compacting the registry (hold the lock)."""
        self.connection.declare(self.names.registry, {})
        queues: set[str] = set()
        delays: dict[str, set[int]] = {}
        channel = self.connection.conn.channel()
        try:
            seen: set[bytes] = set()
            drop: list[int] = []
            while True:
                method, _properties, body = channel.basic_get(self.names.registry)
                if method is None:
                    break
                parts = body.decode("utf-8", "replace").split("\t")
                if body in seen:
                    drop.append(method.delivery_tag)
                elif parts[0] == "queue" and len(parts) == 2:
                    if self.connection.passive(self.names.work(parts[1])) is None:
                        drop.append(method.delivery_tag)  # deleted by hand: forget it too
                    else:
                        queues.add(parts[1])
                elif parts[0] == "delay" and len(parts) == 3 and parts[2].isdigit():
                    if self.connection.passive(self.names.delay(parts[1], int(parts[2]))) is None:
                        drop.append(method.delivery_tag)  # expired: whoever creates it again registers it
                    else:
                        delays.setdefault(parts[1], set()).add(int(parts[2]))
                seen.add(body)
            for tag in drop:
                channel.basic_ack(tag)
        finally:
            if channel.is_open:
                channel.close()
        return queues, delays

    def registered_names(self) -> list[str]:
        """Every queue name the registry knows, with their dead and delay queues (for cleanup)."""
        with self.connection.guard(), self._admin_lock():
            queues, delays = self._registry()
        names = [self.names.work(q) for q in queues] + [self.names.dead(q) for q in queues]
        names += [self.names.delay(q, ms) for q, buckets in delays.items() for ms in buckets]
        return [*names, self.names.registry, self.names.lock]

    # -- contract: administration ----------------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        """Counts as this instance can see them.

        ``ready``: the broker's ready count (passive declare) plus the messages this instance's
        consumer holds but has not handed out.  ``delayed``: the messages in the queue's holding
        queues.  ``in_flight``: the deliveries THIS instance has handed out and not finished; AMQP
        tells no one else's unacked count without the management plugin, so deliveries held by
        other processes (handed out or prefetched) appear in no count.  ``oldest_ready_age_s``
        comes from this instance's buffer; it is None when the buffer is empty, even when the
        broker holds ready tasks (reading the head would mark it redelivered).
        """
        with self.connection.guard():
            # The holding queues first: a task moves from one to the work queue, never back, so
            # reading them before the work queue may count a task twice but never misses one (a
            # worker under --halt-when-empty must not stop while a delayed task is on its way back).
            with self._admin_lock():
                _, delays = self._registry()
            delayed = sum(self.connection.passive(self.names.delay(queue, ms)) or 0 for ms in delays.get(queue, ()))
            self.consumers.pump()
            ready = self.connection.passive(self.names.work(queue))
            local_ready, in_flight, oldest = self.consumers.local_counts(queue)
            if ready is None:
                return QueueStats(local_ready, delayed, in_flight, 0, None)
            dead = self.connection.passive(self.names.dead(queue)) or 0
        age = None if oldest is None else max(time.time() - oldest, 0.0)
        return QueueStats(ready + local_ready, delayed, in_flight, dead, age)

    def queues(self) -> list[str]:
        with self.connection.guard(), self._admin_lock():
            return sorted(self._registry()[0])

    def purge(self, queue: str) -> int:
        """Drop ready and delayed tasks: the broker's, and those this instance holds unstarted.

        Messages prefetched by OTHER consumers are not ready in the broker's eyes and survive.
        """
        with self.connection.guard():
            self.consumers.pump()
            if self.connection.passive(self.names.work(queue)) is None:
                return 0
            count = int(self.connection.admin_channel().queue_purge(self.names.work(queue)).method.message_count)
            count += self.consumers.drop_buffered(queue)
            with self._admin_lock():
                _, delays = self._registry()
            for ms in delays.get(queue, ()):
                name = self.names.delay(queue, ms)
                if self.connection.passive(name) is not None:
                    count += int(self.connection.admin_channel().queue_purge(name).method.message_count)
        return count

    def dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        """Read without taking: ``basic.get`` without ack on a channel of its own, then close it."""
        found: list[DeadTask] = []
        with self.connection.guard():
            if self.connection.passive(self.names.dead(queue)) is None:
                return []
            with self._admin_lock():
                total = self.connection.passive(self.names.dead(queue)) or 0
                read = total if self.whole_reads else limit
                channel = self.connection.conn.channel()
                try:
                    for _ in range(min(read, total)):
                        method, properties, body = channel.basic_get(self.names.dead(queue))
                        if method is None:
                            break
                        if len(found) < limit:
                            found.append(self._dead_task(queue, properties, body))
                finally:
                    if channel.is_open:
                        channel.close()
                self.settle(self.names.dead(queue), total)
        return found

    @property
    def whole_reads(self) -> bool:
        """Whether a read without taking must go through the whole queue: a quorum queue (RabbitMQ
        3.x) puts what a closed channel gives back BEHIND the rest, so only a read of all of it
        leaves the order as it was."""
        return self.connection.options.queue_type == "quorum"

    def settle(self, name: str, total: int) -> None:
        """Wait (holding the admin lock, at most 30 s) until queue ``name`` counts ``total`` again: the
        broker puts back what a closed channel held in order, but a quorum queue does so after the
        close returns; a reader meanwhile would start further on."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while time.monotonic() < deadline:
            count = self.connection.passive(name)
            if count is None or count >= total:
                return
            time.sleep(0.002)

    def _dead_task(self, queue: str, properties: Any, body: bytes) -> DeadTask:
        """A dead letter as :class:`DeadTask`: one we wrote, or one the broker dead-lettered (a quorum
        queue's ``x-delivery-limit``: no reason header of ours, an ``x-death`` one)."""
        headers = properties.headers or {}
        reason = headers.get(HDR_REASON, "")
        attempts = int(headers.get(HDR_ATTEMPTS, 0))
        dead_at = from_ms(headers.get(HDR_DEAD_AT), float(properties.timestamp or 0))
        deaths = headers.get("x-death")
        if HDR_REASON not in headers and isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            death = deaths[0]
            why = _text(death.get("reason", ""))
            limit = self.connection.options.delivery_limit
            reason = f"RabbitMQ dead-lettered it from {_text(death.get('queue', ''))}: {why}"
            if why == "delivery_limit":
                reason += f" (given back more than {limit} times: its consumers died or lost their connection)"
                attempts += limit + 1  # the deliveries of that copy
            when = death.get("time")
            dead_at = when.timestamp() if isinstance(when, datetime.datetime) else dead_at
        return DeadTask(
            id=properties.message_id or "",
            queue=queue,
            body=body.decode("utf-8", "replace"),
            reason=_text(reason),
            attempts=attempts,
            dead_at=dead_at,
            priority=properties.priority or 0,
            enqueued_at=from_ms(headers.get(HDR_ENQUEUED)),
        )

    def replay_dead(self, queue: str, ids: list[str] | None) -> int:
        """Publish dead tasks back (attempts 0, enqueued now), then ack them in the dead queue."""
        wanted = None if ids is None else set(ids)
        replayed = 0
        with self.connection.guard():
            if self.connection.passive(self.names.dead(queue)) is None:
                return 0
            work = self.connection.ensure_work(queue)
            with self._admin_lock():
                channel = self.connection.conn.channel()
                try:
                    limit = self.connection.passive(self.names.dead(queue)) or 0
                    batch: list[tuple[int, tuple[str, Any, bytes]]] = []
                    for _ in range(limit):
                        method, properties, body = channel.basic_get(self.names.dead(queue))
                        if method is None:
                            break
                        if wanted is None or properties.message_id in wanted:
                            batch.append((method.delivery_tag, (work, self._fresh(properties), body)))
                            if wanted is not None:
                                wanted.discard(properties.message_id)
                        if len(batch) >= 500 or (wanted is not None and not wanted):
                            replayed += self._replay_batch(channel, batch)
                            batch = []
                            if wanted is not None and not wanted and not self.whole_reads:
                                break
                    replayed += self._replay_batch(channel, batch)
                finally:
                    if channel.is_open:
                        channel.close()
                # the letters read and not replayed are back before the next reader counts them
                self.settle(self.names.dead(queue), limit - replayed)
        return replayed

    def purge_dead(self, queue: str, ids: list[str] | None) -> int:
        """Delete dead tasks: a queue purge for all; for ``ids``, ``basic.get`` and ack the named ones
        on a channel of its own, whose closing puts the others back."""
        wanted = None if ids is None else set(ids)
        with self.connection.guard():
            if self.connection.passive(self.names.dead(queue)) is None:
                return 0
            with self._admin_lock():
                channel = self.connection.conn.channel()
                try:
                    if wanted is None:
                        return int(channel.queue_purge(self.names.dead(queue)).method.message_count)
                    purged = 0
                    total = self.connection.passive(self.names.dead(queue)) or 0
                    for _ in range(total):
                        method, properties, _body = channel.basic_get(self.names.dead(queue))
                        if method is None:
                            break
                        if properties.message_id in wanted:
                            channel.basic_ack(method.delivery_tag)
                            wanted.discard(properties.message_id)
                            purged += 1
                            if not wanted and not self.whole_reads:
                                break
                finally:
                    if channel.is_open:
                        channel.close()
                self.settle(self.names.dead(queue), total - purged)  # the others back, as in replay_dead
                return purged

    def _replay_batch(self, channel: Any, batch: list[tuple[int, tuple[str, Any, bytes]]]) -> int:
        if batch:
            self.connection.publish_all([item for _, item in batch])
            for tag, _ in batch:
                channel.basic_ack(tag)
        return len(batch)

    @staticmethod
    def _fresh(properties: Any) -> Any:
        now = time.time()
        return pika.BasicProperties(
            delivery_mode=PERSISTENT,
            priority=properties.priority or 0,
            message_id=properties.message_id or new_task_id(),
            timestamp=int(now),
            content_type="application/json",
            headers={HDR_ATTEMPTS: 0, HDR_ENQUEUED: to_ms(now)},
        )

    def claim_once(self, key: str, ttl_s: float) -> bool:
        """A message in queue ``<prefix>.claim.<key>`` (``x-max-length`` 1, ``reject-publish``).

        The claim is a confirmed publish with the TTL as the message's expiration: ack = won,
        nack = the queue is full = someone holds it.  The queue expires (``x-expires``, a power of
        two seconds >= the TTL, at least 64 s) once unused.  When the key's queue exists with
        another ``x-expires`` (an earlier claim with a much different TTL), it is deleted if empty
        and declared again.  TTLs are capped at 49 days.
        """
        ttl_ms = min(max(1, math.ceil(ttl_s * 1000)), MAX_TTL_MS)
        name = self.names.claim(key)
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish", "x-expires": claim_expiry_ms(ttl_ms)}
        properties = pika.BasicProperties(delivery_mode=PERSISTENT, expiration=str(ttl_ms))
        with self.connection.guard():
            for _ in range(3):
                try:
                    self.connection.admin_channel().queue_declare(name, durable=True, arguments=arguments)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 406:
                        raise
                    if self.connection.passive(name):
                        return False
                    try:
                        self.connection.admin_channel().queue_delete(name, if_empty=True)
                    except pika.exceptions.ChannelClosedByBroker:
                        return False
                    continue
                try:
                    return not self.connection.publish([(name, properties, key.encode())], retry_unroutable=False)
                except TransportError:
                    continue  # deleted between declare and publish: declare again
        raise TransportError(f"claim queue {name!r} kept changing; try again")
