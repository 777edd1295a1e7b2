"""Queue declarations and administration for the AMQP transport (see ``amqp.py`` for the layout).

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
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions

from asynctask.errors import TransportError
from asynctask.task import MAX_PRIORITY, DeadTask, QueueStats, new_task_id
from asynctask.transports.amqp_core import AmqpCore
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


class AmqpAdmin(AmqpCore):
    """Declarations, stats, purge, dead letters, replay and claims; see the module docstring."""

    # -- hooks the consuming side implements ---------------------------------------------------

    def _local_counts(self, queue: str) -> tuple[int, int, float | None]:
        """(buffered ready, handed out, oldest enqueued_at of the buffered) for ``queue``."""
        return 0, 0, None

    def _drop_buffered(self, queue: str) -> int:
        """Ack (drop) the buffered, not handed out, messages of ``queue``; return how many."""
        return 0

    def _pump(self) -> None:
        """Take in deliveries the broker has already sent."""

    # -- declarations ----------------------------------------------------------------------------

    def _typed(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.options.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return arguments

    def work_arguments(self) -> dict[str, Any]:
        if self.options.queue_type == "quorum":
            return self._typed({})  # quorum queues have no priorities (RabbitMQ < 4.0)
        return {"x-max-priority": MAX_PRIORITY}

    def ensure_work(self, queue: str) -> str:
        """Declare the work queue and its dead-letter queue; return the work queue's name."""
        name = self.names.work(queue)
        if name not in self._declared:
            self.declare(self.names.dead(queue), self._typed({}))
            self.declare(name, self.work_arguments(), register=f"queue\t{queue}")
        return name

    def ensure_delay(self, queue: str, ms: int) -> str:
        """Declare the holding queue for ``ms``: TTL ``ms``, dead-lettering into the work queue.

        It expires after ``2 * ms + 60 s`` unused and is declared again (which resets that) once
        ``ms + 30 s`` have passed since this instance last did, so a message published to it always
        has its full TTL before the queue can expire.
        """
        work = self.ensure_work(queue)
        name = self.names.delay(queue, ms)
        arguments: dict[str, Any] = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work,
            "x-expires": min(2 * ms + 60_000, MAX_TTL_MS),
        }
        if self.options.queue_type == "quorum":
            arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        self.declare(name, self._typed(arguments), register=f"delay\t{queue}\t{ms}", refresh_s=ms / 1000 + 30)
        return name

    def redeclare(self, name: str) -> None:
        prefix = self.names.prefix + "."
        rest = name[len(prefix) :] if name.startswith(prefix) else ""
        parts = rest.split(".")
        if len(parts) == 1 and parts[0]:
            self._declared.pop(name, None)
            self.ensure_work(parts[0])
        elif len(parts) == 2 and parts[1] == "dead":
            self.declare(name, self._typed({}))
        elif len(parts) == 3 and parts[1] == "delay" and parts[2].isdigit():
            self.ensure_delay(parts[0], int(parts[2]))
        elif name == self.names.registry:
            self.declare(name, {})
        else:
            super().redeclare(name)

    # -- the registry and the admin lock -------------------------------------------------------

    @contextlib.contextmanager
    def _admin_lock(self) -> Iterator[None]:
        self.declare(self.names.lock, {"x-max-length": 1, "x-overflow": "reject-publish"})
        properties = pika.BasicProperties(expiration=str(LOCK_TTL_MS))
        backoff = Backoff(LOCK_WAIT_S, first_s=0.005, max_s=0.1)
        while self.publish([(self.names.lock, properties, b"locked")]):
            if not backoff.wait():
                raise TransportError(f"the admin lock {self.names.lock!r} stayed taken for {LOCK_WAIT_S:.0f} s")
        try:
            yield
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._admin_channel().basic_get(self.names.lock, auto_ack=True)

    def _registry(self) -> tuple[set[str], dict[str, set[int]]]:
        """(work queue names, queue -> delay buckets), compacting the registry (hold the lock)."""
        self.declare(self.names.registry, {})
        queues: set[str] = set()
        delays: dict[str, set[int]] = {}
        channel = self._conn.channel()
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
                    if self.passive(self.names.work(parts[1])) is None:
                        drop.append(method.delivery_tag)  # deleted by hand: forget it too
                    else:
                        queues.add(parts[1])
                elif parts[0] == "delay" and len(parts) == 3 and parts[2].isdigit():
                    if self.passive(self.names.delay(parts[1], int(parts[2]))) is None:
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
        with self._guard(), self._admin_lock():
            queues, delays = self._registry()
        names = [self.names.work(q) for q in queues] + [self.names.dead(q) for q in queues]
        names += [self.names.delay(q, ms) for q, buckets in delays.items() for ms in buckets]
        return [*names, self.names.registry, self.names.lock]

    # -- contract: administration ----------------------------------------------------------------

    def _stats(self, queue: str) -> QueueStats:
        """Counts as this instance can see them.

        ``ready``: the broker's ready count (passive declare) plus the messages this instance's
        consumer holds but has not handed out.  ``delayed``: the messages in the queue's holding
        queues.  ``in_flight``: the deliveries THIS instance has handed out and not finished; AMQP
        tells no one else's unacked count without the management plugin, so deliveries held by
        other processes (handed out or prefetched) appear in no count.  ``oldest_ready_age_s``
        comes from this instance's buffer; it is None when the buffer is empty, even when the
        broker holds ready tasks (reading the head would mark it redelivered).
        """
        with self._guard():
            self._pump()
            ready = self.passive(self.names.work(queue))
            local_ready, in_flight, oldest = self._local_counts(queue)
            if ready is None:
                return QueueStats(local_ready, 0, in_flight, 0, None)
            dead = self.passive(self.names.dead(queue)) or 0
            with self._admin_lock():
                _, delays = self._registry()
            delayed = sum(self.passive(self.names.delay(queue, ms)) or 0 for ms in delays.get(queue, ()))
        age = None if oldest is None else max(time.time() - oldest, 0.0)
        return QueueStats(ready + local_ready, delayed, in_flight, dead, age)

    def _queues(self) -> list[str]:
        with self._guard(), self._admin_lock():
            return sorted(self._registry()[0])

    def _purge(self, queue: str) -> int:
        """Drop ready and delayed tasks: the broker's, and those this instance holds unstarted.

        Messages prefetched by OTHER consumers are not ready in the broker's eyes and survive.
        """
        with self._guard():
            self._pump()
            if self.passive(self.names.work(queue)) is None:
                return 0
            count = int(self._admin_channel().queue_purge(self.names.work(queue)).method.message_count)
            count += self._drop_buffered(queue)
            with self._admin_lock():
                _, delays = self._registry()
            for ms in delays.get(queue, ()):
                name = self.names.delay(queue, ms)
                if self.passive(name) is not None:
                    count += int(self._admin_channel().queue_purge(name).method.message_count)
        return count

    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        """Read without taking: ``basic.get`` without ack on a channel of its own, then close it."""
        found: list[DeadTask] = []
        with self._guard():
            if self.passive(self.names.dead(queue)) is None:
                return []
            with self._admin_lock():
                channel = self._conn.channel()
                try:
                    while len(found) < limit:
                        method, properties, body = channel.basic_get(self.names.dead(queue))
                        if method is None:
                            break
                        found.append(self._dead_task(queue, properties, body))
                finally:
                    if channel.is_open:
                        channel.close()
        return found

    @staticmethod
    def _dead_task(queue: str, properties: Any, body: bytes) -> DeadTask:
        headers = properties.headers or {}
        reason = headers.get(HDR_REASON, "")
        return DeadTask(
            id=properties.message_id or "",
            queue=queue,
            body=body.decode("utf-8", "replace"),
            reason=reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason),
            attempts=int(headers.get(HDR_ATTEMPTS, 0)),
            dead_at=from_ms(headers.get(HDR_DEAD_AT), float(properties.timestamp or 0)),
        )

    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        """Publish dead tasks back (attempts 0, enqueued now), then ack them in the dead queue."""
        wanted = None if ids is None else set(ids)
        replayed = 0
        with self._guard():
            if self.passive(self.names.dead(queue)) is None:
                return 0
            work = self.ensure_work(queue)
            with self._admin_lock():
                channel = self._conn.channel()
                try:
                    limit = self.passive(self.names.dead(queue)) or 0
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
                            if wanted is not None and not wanted:
                                break
                    replayed += self._replay_batch(channel, batch)
                finally:
                    if channel.is_open:
                        channel.close()
        return replayed

    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        """Delete dead tasks: a queue purge for all; for ``ids``, ``basic.get`` and ack the named ones
        on a channel of its own, whose closing puts the others back."""
        wanted = None if ids is None else set(ids)
        with self._guard():
            if self.passive(self.names.dead(queue)) is None:
                return 0
            with self._admin_lock():
                channel = self._conn.channel()
                try:
                    if wanted is None:
                        return int(channel.queue_purge(self.names.dead(queue)).method.message_count)
                    purged = 0
                    for _ in range(self.passive(self.names.dead(queue)) or 0):
                        method, properties, _body = channel.basic_get(self.names.dead(queue))
                        if method is None:
                            break
                        if properties.message_id in wanted:
                            channel.basic_ack(method.delivery_tag)
                            wanted.discard(properties.message_id)
                            purged += 1
                            if not wanted:
                                break
                    return purged
                finally:
                    if channel.is_open:
                        channel.close()

    def _replay_batch(self, channel: Any, batch: list[tuple[int, tuple[str, Any, bytes]]]) -> int:
        if batch:
            self.publish_all([item for _, item in batch])
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

    def _claim_once(self, key: str, ttl: float) -> bool:
        """A message in queue ``<prefix>.claim.<key>`` (``x-max-length`` 1, ``reject-publish``).

        The claim is a confirmed publish with the TTL as the message's expiration: ack = won,
        nack = the queue is full = someone holds it.  The queue expires (``x-expires``, a power of
        two seconds >= the TTL, at least 64 s) once unused.  When the key's queue exists with
        another ``x-expires`` (an earlier claim with a much different TTL), it is deleted if empty
        and declared again.  TTLs are capped at 49 days.
        """
        ttl_ms = min(max(1, math.ceil(ttl * 1000)), MAX_TTL_MS)
        name = self.names.claim(key)
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish", "x-expires": claim_expiry_ms(ttl_ms)}
        properties = pika.BasicProperties(delivery_mode=PERSISTENT, expiration=str(ttl_ms))
        with self._guard():
            for _ in range(3):
                try:
                    self._admin_channel().queue_declare(name, durable=True, arguments=arguments)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._admin = None
                    if exc.reply_code != 406:
                        raise
                    if self.passive(name):
                        return False
                    try:
                        self._admin_channel().queue_delete(name, if_empty=True)
                    except pika.exceptions.ChannelClosedByBroker:
                        self._admin = None
                        return False
                    continue
                try:
                    return not self.publish([(name, properties, key.encode())], retry_unroutable=False)
                except TransportError:
                    continue  # deleted between declare and publish: declare again
        raise TransportError(f"claim queue {name!r} kept changing; try again")
