"""The consuming side of the AMQP transport: its consumers, their deliveries, and the leases.

:class:`Consumers` is the consumer state an :class:`~asynctask.transports.amqp.AmqpTransport`
holds beside its :class:`~asynctask.transports.amqp_connection.AmqpConnection`: one
:class:`Consumer` (channel, qos, buffer) per queue fetched from, and the :class:`Delivery` records
handed out under a receipt.  Consuming, leases and threads: see the docstring of ``amqp.py``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from asynctask.errors import TransportError
from asynctask.message import Task
from asynctask.transports.amqp_connection import AmqpConnection
from asynctask.transports.amqp_names import HDR_ATTEMPTS, enqueued_at

__all__ = ["Consumer", "Consumers", "Delivery", "ack_tags", "qos_for"]

logger = logging.getLogger(__name__)


@dataclass
class Consumer:
    """The consumer of one queue: its own channel (so its own ``basic.qos``), buffer and tags."""

    queue: str
    channel: Any
    qos: int = 0
    cancelled: bool = True  # not consuming (yet, or any more)
    buffer: list[tuple[int, int, Delivery]] = field(default_factory=list)
    unacked: dict[int, Delivery] = field(default_factory=dict)  # buffered and handed out


@dataclass
class Delivery:
    """A message on a consume channel: buffered (receipt "") or handed out."""

    consumer: Consumer
    tag: int
    seq: int
    properties: Any
    body: bytes
    attempts: int  # of its next hand-out, or of the current one
    receipt: str = ""
    lease_until: float = 0.0
    held_until: float = math.inf  # set at its first hand-out: no lease goes past it (``consumer_timeout``)

    def entry(self) -> tuple[int, int, Delivery]:
        return (-(self.properties.priority or 0), self.seq, self)


def qos_for(max_count: int, prefetch: int) -> int:
    """The prefetch for fetches of ``max_count``: the batch handed out and the next ones.

    A power of two (so it changes rarely) >= 2 x ``max_count`` for small fetches and 4 x for batches
    of 32 and more, at most the ``prefetch`` option: a worker taking one slow task at a time holds
    two (the next one ready, nothing hoarded from other workers); one taking 100 fast ones keeps
    512 coming.
    """
    factor = 2 if max_count < 32 else 4
    return min(prefetch, 1 << (factor * max_count - 1).bit_length())


def ack_tags(consumer: Consumer, tags: list[int]) -> None:
    """Ack ``tags`` of ``consumer``: one ``multiple`` ack when no other unacked tag is below."""
    if not tags:
        return
    highest = max(tags)
    below = sum(1 for tag in consumer.unacked if tag <= highest)
    for tag in tags:
        consumer.unacked.pop(tag, None)
    if below == len(tags):
        consumer.channel.basic_ack(highest, multiple=True)
    else:
        for tag in tags:
            consumer.channel.basic_ack(tag)


class Consumers:
    """The consumers of one transport and the deliveries they hold (used from the transport's thread,
    but :meth:`extend`, which touches no socket).

    ``by_queue`` maps a queue to its consumer, ``by_receipt`` a current receipt to its handed-out
    delivery; ``seq`` numbers arrivals and receipts.  :meth:`reset` forgets all of it: the
    connection calls it when it is lost (every delivery tag died with it).
    """

    def __init__(self, connection: AmqpConnection) -> None:
        self.connection = connection
        self.by_queue: dict[str, Consumer] = {}
        self.by_receipt: dict[str, Delivery] = {}  # the handed-out, current ones
        self.seq = itertools.count()

    def reset(self) -> None:
        self.by_queue, self.by_receipt = {}, {}

    def on_message(self, consumer: Consumer, method: Any, properties: Any, body: bytes) -> None:
        heapq.heappush(consumer.buffer, self.delivery(consumer, method, properties, body).entry())

    def delivery(self, consumer: Consumer, method: Any, properties: Any, body: bytes) -> Delivery:
        """A message that arrived on ``consumer``'s channel, now among its unacked ones (not buffered)."""
        headers = properties.headers or {}
        try:
            before = int(headers.get(HDR_ATTEMPTS, 0))
        except (TypeError, ValueError):
            before = 0
        returns = headers.get("x-delivery-count")
        extra = int(returns) if isinstance(returns, int) else (1 if method.redelivered else 0)
        delivery = Delivery(consumer, method.delivery_tag, next(self.seq), properties, body, before + 1 + extra)
        consumer.unacked[delivery.tag] = delivery
        return delivery

    def consumer(self, queue: str, max_count: int) -> Consumer:
        """The consumer of ``queue`` (started, or started again after a cancel), its qos set for
        fetches of ``max_count``."""
        consumer = self.by_queue.get(queue)
        if consumer is None:
            consumer = self.by_queue[queue] = Consumer(queue, self.connection.conn.channel())

            def on_cancel(_frame: Any) -> None:  # the broker cancelled it: the queue was deleted
                logger.warning("RabbitMQ cancelled the consumer of %s; consuming again", queue)
                self.connection.forget(self.connection.names.work(queue))
                consumer.cancelled = True

            consumer.channel.add_on_cancel_callback(on_cancel)
        self._set_qos(consumer, max_count)
        if consumer.cancelled:
            name = self.connection.ensure_work(queue)

            def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
                self.on_message(consumer, method, properties, body)

            consumer.channel.basic_consume(name, on_message, auto_ack=False)
            consumer.cancelled = False
        return consumer

    def _set_qos(self, consumer: Consumer, max_count: int) -> None:
        options = self.connection.options
        if options.queue_type == "quorum":
            # Quorum queues refuse a channel-wide qos, and a consumer's own is fixed when it starts.
            if not consumer.qos:
                consumer.channel.basic_qos(prefetch_count=options.prefetch)
                consumer.qos = options.prefetch
            return
        qos = qos_for(max_count, options.prefetch)
        if qos != consumer.qos:
            consumer.channel.basic_qos(prefetch_count=qos, global_qos=True)  # channel-wide: applies at once
            consumer.qos = qos

    def pump(self) -> None:
        """Take in deliveries the broker has already sent."""
        if self.by_queue:
            self.connection.conn.process_data_events(time_limit=0)

    def expire_leases(self) -> float:
        """Put deliveries whose lease ran out back in their buffer; return the next lease end."""
        now = time.monotonic()
        next_end = math.inf
        for receipt, delivery in list(self.by_receipt.items()):
            if delivery.lease_until <= now:
                del self.by_receipt[receipt]
                delivery.receipt = ""
                delivery.attempts += 1
                heapq.heappush(delivery.consumer.buffer, delivery.entry())
            else:
                next_end = min(next_end, delivery.lease_until)
        return next_end

    def take(self, task: Task) -> Delivery | None:
        """The current delivery named by ``task.receipt``, no longer current; None if it is not."""
        delivery = self.by_receipt.pop(task.receipt, None)
        if delivery is None or self.connection.conn is None:
            return None
        return delivery

    @contextlib.contextmanager
    def kept_on_failure(self, delivery: Delivery) -> Iterator[None]:
        """When giving a delivery back fails but its channel lives, it stays current (retry-able)."""
        try:
            yield
        except TransportError:
            if self.by_queue.get(delivery.consumer.queue) is delivery.consumer:
                self.by_receipt[delivery.receipt] = delivery
            raise

    def extend(self, task: Task, lease_s: float) -> bool:
        """Local only (safe from another thread): True while the delivery is current."""
        delivery = self.by_receipt.get(task.receipt)
        if delivery is None or not delivery.consumer.channel.is_open:
            return False
        now = time.monotonic()
        if now >= delivery.held_until:  # the broker's consumer_timeout is near: the lease cannot go on
            return False
        delivery.lease_until = min(now + lease_s, delivery.held_until)
        return True

    # -- local counts for stats and purge ---------------------------------------------------------

    def waiting(self, queue: str) -> list[Delivery]:
        """The buffered deliveries of ``queue`` not handed out, in hand-out order."""
        consumer = self.by_queue.get(queue)
        if consumer is None:
            return []
        return [entry[2] for entry in sorted(consumer.buffer) if entry[2].tag in consumer.unacked]

    def local_counts(self, queue: str) -> tuple[int, int, float | None]:
        """(buffered ready, handed out, oldest enqueued_at of the buffered) for ``queue``."""
        waiting = self.waiting(queue)
        in_flight = sum(1 for d in self.by_receipt.values() if d.consumer.queue == queue)
        oldest = min((enqueued_at(d.properties) for d in waiting), default=None)
        return len(waiting), in_flight, oldest

    def drop_buffered(self, queue: str) -> int:
        """Ack (drop) the buffered, not handed out, messages of ``queue``; return how many."""
        waiting = self.waiting(queue)
        if waiting:
            waiting[0].consumer.buffer.clear()
            ack_tags(waiting[0].consumer, [d.tag for d in waiting])
        return len(waiting)
