"""The RabbitMQ transport: ``amqp://user:password@host:port/vhost`` and ``amqps://...`` (TLS).

URL forms::

    amqp://guest:guest@127.0.0.1:5672/%2F       vhost "/" (an empty path is "/" too)
    amqp://user:secret@rabbit.example.org/jobs  vhost "jobs", port 5672
    amqps://user:secret@rabbit.example.org/jobs TLS with the system's CA store, port 5671
    amqp://localhost/?prefetch=500&queue_type=quorum&prefix=myapp

Options (query parameters):

``prefetch`` (512)
    The most deliveries a consumer holds unacked (``basic.qos``, per queue); the qos actually set
    follows the fetch size (2 to 4 x ``max_count``, a power of two, up to this), so that a worker
    fetching one slow task at a time does not hoard the queue.  ``get_tasks`` hands out what has
    already arrived, so the drain rate comes from here.
``lease_s`` (30)
    The default lease (see *Leases* below).
``heartbeat_s`` (600; 0 turns heartbeats off)
    AMQP heartbeat.  pika answers heartbeats only while this transport is called, so a task that
    runs longer than about ``2 * heartbeat_s`` without a call loses its connection, and its task
    goes to another worker; keep it above your longest task (RabbitMQ's own ``consumer_timeout``,
    30 min by default, also applies).  It is also how long the broker may keep the tasks of a
    client whose host died (a killed process closes its socket at once).  TCP keepalive (60 s idle,
    then 6 probes 10 s apart) and a 120 s ``TCP_USER_TIMEOUT`` let the client notice a dead broker
    host while it is busy.
``queue_type`` (classic)
    ``quorum`` declares replicated quorum queues (work, dead, delay).  They have no priorities on
    RabbitMQ < 4.0: priority then only orders what one consumer has prefetched.  Their consumers
    take no channel-wide qos, so they prefetch the whole ``prefetch`` option whatever the fetch
    size: lower it for slow tasks.
``prefix`` (asynctask)
    The first part of every queue name (tests use one per run).
``connect_timeout_s`` (5)

Layout: no exchange is declared; everything is published through the default exchange (``""``)
with the queue's name as routing key.  All queues are durable, all messages persistent, every
publish mandatory and confirmed.  For an asynctask queue ``<q>``:

``<prefix>.<q>``
    The work queue, ``x-max-priority`` 9 (classic).  A message: body = the payload JSON;
    ``message_id`` = task id; ``priority``; headers ``asynctask-attempts`` (deliveries before this
    copy was published), ``asynctask-enqueued-ms`` and ``asynctask-due-ms`` (epoch milliseconds; due
    only for delays).
``<prefix>.<q>.dead``
    Dead letters: the body as it was, headers ``asynctask-reason``, ``asynctask-attempts``,
    ``asynctask-dead-ms``, ``asynctask-queue``.
``<prefix>.<q>.delay.<ms>``
    Holding queues, one per delay bucket: ``x-message-ttl`` ms, dead-lettered into the work queue
    (``x-dead-letter-exchange ""``, ``x-dead-letter-routing-key <prefix>.<q>``), ``x-expires``
    2 * ms + 60 s.  Delays are rounded UP to two significant digits of milliseconds (never early,
    at most 10% late).  A delay longer than 46 days is re-delayed when it comes out early.
``<prefix>.claim.<key>``
    One per ``claim_once`` key (``sha1-<hex>`` for a long or unprintable key):
    ``x-max-length`` 1, ``x-overflow reject-publish``, ``x-expires`` >= the TTL.
``<prefix>.registry``, ``<prefix>.lock``
    What ``queues()`` and ``stats()`` read, and the lock of their readers (see ``amqp_admin.py``).

Consuming: ``basic.consume`` with manual acks on the first fetch from a queue; deliveries wait in a
local buffer ordered by priority then arrival, and ``get_tasks`` returns from it, waiting up to
``timeout_s`` in ``process_data_events`` (no polling).  Acks of contiguous delivery tags go as one
``multiple`` ack.  ``nack`` and ``dead`` publish a copy (confirmed) and then ack the original, so a
crash in between duplicates the task rather than losing it (at least once).

Leases: an unacked delivery belongs to this connection's channel; the broker gives it back, with
the ``redelivered`` flag (and ``x-delivery-count`` on quorum queues), when the channel closes:
process killed, connection lost, ``close()``.  Lease expiry inside a live process is handled by
this instance: a delivery whose lease ran out is handed out again by the next ``get_tasks`` of
this instance, with ``attempts`` raised, and its old receipt stops being current.  Another process
never gets a task whose holder is alive: a worker stuck past its lease is killed by the
supervisor, and its connection closing gives its tasks back.  ``portable_receipts`` is False.
After a crash, messages the dead consumer had prefetched but not yet handed out come back
``redelivered`` too, and count one attempt more than they had; the task it was running is given
back by the worker that next fetches it with the attempts it had (the supervisor's crash notice says
how many: :mod:`asynctask.workers.crashes`), which is why :meth:`nack` counts from ``task.attempts``.

Counts (``stats``): ``ready`` is the broker's ready count (a passive declare) plus what this
instance has prefetched and not handed out; ``delayed`` sums the holding queues the registry lists;
``dead`` is the dead queue's count; ``in_flight`` counts only THIS instance's handed-out deliveries
(AMQP tells nobody the unacked count of other connections without the management plugin), and
``oldest_ready_age_s`` only this instance's prefetched ones (None otherwise: reading the head of
the queue would mark it redelivered).  ``dead_tasks`` and ``replay_dead`` read the dead queue with
``basic.get`` on a channel of their own; what they do not take is put back by closing it, in order.

Threads: an instance is used from one thread (pika is not thread-safe), except :meth:`extend`,
which touches no socket (a local check that the delivery is current on the open channel, and a
new local lease end), so the runner's heartbeat thread may call it.  A server that goes away
raises ``TransportUnavailableError`` (host:port, password masked); the next call reconnects, and
the receipts of the deliveries made before are no longer current (their acks are no-ops).  A
connection the broker closed while the instance was idle is noticed and replaced at the start of
the next call, which then goes on.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pika

from asynctask.errors import TaskDecodeError, TransportError
from asynctask.task import Task, decode_payload, new_task_id
from asynctask.transports.amqp_admin import AmqpAdmin
from asynctask.transports.amqp_consumer import Consumer, Delivery, ack_tags, qos_for
from asynctask.transports.amqp_names import (
    HDR_ATTEMPTS,
    HDR_DEAD_AT,
    HDR_DUE,
    HDR_QUEUE,
    HDR_REASON,
    PERSISTENT,
    delay_bucket_ms,
    enqueued_at,
    from_ms,
    task_properties,
    to_ms,
)
from asynctask.transports.base import dead_reason_for_undecodable

__all__ = ["AmqpTransport"]

logger = logging.getLogger(__name__)

#: A delivered task whose ``asynctask-due-ms`` is further ahead than this is delayed again.
EARLY_TOLERANCE_S = 1.0
#: How long a fetch whose time is up waits more for deliveries when the broker says tasks are ready.
SYNC_WAIT_S = 1.0
#: How long a fetch whose time is up waits for deliveries in transit before asking the broker.
GRACE_S = 0.005


class AmqpTransport(AmqpAdmin):
    """RabbitMQ through pika; see the module docstring for the layout and the threading rule."""

    def __init__(self, url: str) -> None:
        self._consumers: dict[str, Consumer] = {}
        self._by_receipt: dict[str, Delivery] = {}  # the handed-out, current ones
        self._seq = itertools.count()
        self._token = uuid.uuid4().hex[:12]
        super().__init__(url)

    # -- consuming ---------------------------------------------------------------------------

    def _reset_consumers(self) -> None:
        self._consumers, self._by_receipt = {}, {}

    def _on_message(self, consumer: Consumer, method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers or {}
        try:
            before = int(headers.get(HDR_ATTEMPTS, 0))
        except (TypeError, ValueError):
            before = 0
        returns = headers.get("x-delivery-count")
        extra = int(returns) if isinstance(returns, int) else (1 if method.redelivered else 0)
        delivery = Delivery(consumer, method.delivery_tag, next(self._seq), properties, body, before + 1 + extra)
        consumer.unacked[delivery.tag] = delivery
        heapq.heappush(consumer.buffer, delivery.entry())

    def _consumer(self, queue: str, max_count: int) -> Consumer:
        consumer = self._consumers.get(queue)
        if consumer is None:
            consumer = self._consumers[queue] = Consumer(queue, self._conn.channel())

            def on_cancel(_frame: Any) -> None:  # the broker cancelled it: the queue was deleted
                logger.warning("RabbitMQ cancelled the consumer of %s; consuming again", queue)
                self._declared.pop(self.names.work(queue), None)
                consumer.cancelled = True

            consumer.channel.add_on_cancel_callback(on_cancel)
        self._set_qos(consumer, max_count)
        if consumer.cancelled:
            name = self.ensure_work(queue)

            def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
                self._on_message(consumer, method, properties, body)

            consumer.channel.basic_consume(name, on_message, auto_ack=False)
            consumer.cancelled = False
        return consumer

    def _set_qos(self, consumer: Consumer, max_count: int) -> None:
        if self.options.queue_type == "quorum":
            # Quorum queues refuse a channel-wide qos, and a consumer's own is fixed when it starts.
            if not consumer.qos:
                consumer.channel.basic_qos(prefetch_count=self.options.prefetch)
                consumer.qos = self.options.prefetch
            return
        qos = qos_for(max_count, self.options.prefetch)
        if qos != consumer.qos:
            consumer.channel.basic_qos(prefetch_count=qos, global_qos=True)  # channel-wide: applies at once
            consumer.qos = qos

    def _pump(self) -> None:
        if self._consumers:
            self._conn.process_data_events(time_limit=0)

    def _expire_leases(self) -> float:
        """Put deliveries whose lease ran out back in their buffer; return the next lease end."""
        now = time.monotonic()
        next_end = math.inf
        for receipt, delivery in list(self._by_receipt.items()):
            if delivery.lease_until <= now:
                del self._by_receipt[receipt]
                delivery.receipt = ""
                delivery.attempts += 1
                heapq.heappush(delivery.consumer.buffer, delivery.entry())
            else:
                next_end = min(next_end, delivery.lease_until)
        return next_end

    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        deadline = time.monotonic() + timeout_s
        with self._guard():
            consumer = self._consumer(queue, max_count)
            buffer = consumer.buffer
            stage = 0
            pump = True
            while True:
                next_end = self._expire_leases()
                if pump and len(buffer) < max_count:
                    # Only before the first wait: a wait returns having read all that had arrived, so
                    # another pass would only delay handing out what it brought.
                    self._conn.process_data_events(time_limit=0)
                    pump = False
                tasks = self._hand_out(consumer, max_count, lease_s) if buffer else []
                remaining = deadline - time.monotonic()
                if tasks:
                    return tasks
                if remaining <= 0:
                    # Deliveries are pushed: ready tasks may not have arrived yet (a new consumer,
                    # acks just sent, timeout_s=0).  With room under the qos, wait a moment for
                    # them; then ask the broker once, and wait for them if it has some.
                    if len(consumer.unacked) >= consumer.qos or stage >= 2:
                        return []
                    if stage == 0:
                        remaining = GRACE_S
                    elif self.passive(self.names.work(queue)):
                        remaining = SYNC_WAIT_S
                    else:
                        return []
                    stage += 1
                    deadline = time.monotonic() + remaining
                wait = min(remaining, max(next_end - time.monotonic(), 0.001))
                self._conn.process_data_events(time_limit=wait)

    def _hand_out(self, consumer: Consumer, max_count: int, lease_s: float) -> list[Task]:
        """Take up to ``max_count`` from the buffer (the hot path: kept lean)."""
        tasks: list[Task] = []
        buffer, unacked, by_receipt = consumer.buffer, consumer.unacked, self._by_receipt
        lease_until = time.monotonic() + lease_s
        now = time.time()
        prefix = f"{self._token}.{self.generation}."
        while buffer and len(tasks) < max_count:
            delivery = heapq.heappop(buffer)[2]
            if delivery.tag not in unacked:
                continue  # acked meanwhile (purge)
            properties = delivery.properties
            headers = properties.headers or {}
            try:
                payload = decode_payload(delivery.body)
            except TaskDecodeError as exc:
                self._bury(delivery, dead_reason_for_undecodable(exc))
                continue
            due = headers.get(HDR_DUE)
            if due is not None and from_ms(due) - now > EARLY_TOLERANCE_S:
                self._republish(delivery, delivery.attempts - 1, from_ms(due) - now)
                continue
            delivery.receipt = receipt = prefix + str(next(self._seq))
            delivery.lease_until = lease_until
            by_receipt[receipt] = delivery
            tasks.append(
                Task(
                    properties.message_id or f"amqp-{self._token}-{delivery.seq}",
                    consumer.queue,
                    payload,
                    delivery.attempts,
                    enqueued_at(properties),
                    properties.priority or 0,
                    receipt,
                )
            )
        return tasks

    # -- producing ---------------------------------------------------------------------------

    def _target(self, queue: str, delay_s: float) -> str:
        return self.ensure_delay(queue, delay_bucket_ms(delay_s)) if delay_s > 0 else self.ensure_work(queue)

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        with self._guard():
            target = self._target(queue, delay_s)
            now = time.time()
            due = now + delay_s if delay_s > 0 else 0.0
            ids = [new_task_id() for _ in bodies]
            self.publish_all(
                [
                    (target, task_properties(task_id, priority, 0, now, due), body.encode())
                    for task_id, body in zip(ids, bodies, strict=True)
                ]
            )
        return ids

    # -- finishing a delivery --------------------------------------------------------------------

    def _take(self, task: Task) -> Delivery | None:
        """The current delivery named by ``task.receipt``, no longer current; None if it is not."""
        delivery = self._by_receipt.pop(task.receipt, None)
        if delivery is None or self._conn is None:
            return None
        return delivery

    def _ack(self, task: Task) -> None:
        self._ack_tasks([task])

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack in one frame when the tags are contiguous (``multiple``); a lost lease is a no-op."""
        by_consumer: dict[int, tuple[Consumer, list[int]]] = {}
        for delivery in map(self._take, tasks):
            if delivery is not None:
                by_consumer.setdefault(id(delivery.consumer), (delivery.consumer, []))[1].append(delivery.tag)
        if by_consumer:
            with self._guard(reconnect=False):
                for consumer, tags in by_consumer.values():
                    ack_tags(consumer, tags)

    def _republish(self, delivery: Delivery, attempts: int, delay_s: float) -> None:
        properties = delivery.properties
        enqueued = enqueued_at(properties) or time.time()
        due = time.time() + delay_s if delay_s > 0 else 0.0
        task_id = properties.message_id or new_task_id()
        new = task_properties(task_id, properties.priority or 0, max(attempts, 0), enqueued, due)
        self.publish_all([(self._target(delivery.consumer.queue, delay_s), new, delivery.body)])
        ack_tags(delivery.consumer, [delivery.tag])

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        """Publish a copy (attempts so far in its header) to the queue or a delay queue, then ack.

        The count comes from ``task.attempts`` (that of the delivery, unless the caller lowered it:
        the runner does to undo the redelivery count of a crash, which the broker cannot tell apart).
        """
        delivery = self._take(task)
        if delivery is not None:
            with self._kept_on_failure(delivery), self._guard(reconnect=False):
                self._republish(delivery, task.attempts - (0 if count_attempt else 1), delay_s)

    @contextlib.contextmanager
    def _kept_on_failure(self, delivery: Delivery) -> Iterator[None]:
        """When giving a delivery back fails but its channel lives, it stays current (retry-able)."""
        try:
            yield
        except TransportError:
            if self._consumers.get(delivery.consumer.queue) is delivery.consumer:
                self._by_receipt[delivery.receipt] = delivery
            raise

    def _bury(self, delivery: Delivery, reason: str) -> None:
        properties = delivery.properties
        now = time.time()
        headers = {
            HDR_REASON: reason,
            HDR_ATTEMPTS: delivery.attempts,
            HDR_DEAD_AT: to_ms(now),
            HDR_QUEUE: delivery.consumer.queue,
        }
        dead = pika.BasicProperties(
            delivery_mode=PERSISTENT,
            message_id=properties.message_id or new_task_id(),
            priority=properties.priority or 0,
            timestamp=int(now),
            headers=headers,
        )
        self.publish_all([(self.names.dead(delivery.consumer.queue), dead, delivery.body)])
        ack_tags(delivery.consumer, [delivery.tag])
        logger.debug("task %s of %s is dead: %s", dead.message_id, delivery.consumer.queue, reason)

    def _dead(self, task: Task, reason: str) -> None:
        delivery = self._take(task)
        if delivery is not None:
            with self._kept_on_failure(delivery), self._guard(reconnect=False):
                self._bury(delivery, reason)

    def _extend(self, task: Task, lease_s: float) -> bool:
        """Local only (safe from another thread): True while the delivery is current."""
        delivery = self._by_receipt.get(task.receipt)
        if delivery is None or not delivery.consumer.channel.is_open:
            return False
        delivery.lease_until = time.monotonic() + lease_s
        return True

    # -- local counts for stats and purge ---------------------------------------------------------

    def _waiting(self, queue: str) -> list[Delivery]:
        consumer = self._consumers.get(queue)
        if consumer is None:
            return []
        return [entry[2] for entry in sorted(consumer.buffer) if entry[2].tag in consumer.unacked]

    def _local_counts(self, queue: str) -> tuple[int, int, float | None]:
        waiting = self._waiting(queue)
        in_flight = sum(1 for d in self._by_receipt.values() if d.consumer.queue == queue)
        oldest = min((enqueued_at(d.properties) for d in waiting), default=None)
        return len(waiting), in_flight, oldest

    def _drop_buffered(self, queue: str) -> int:
        waiting = self._waiting(queue)
        if waiting:
            waiting[0].consumer.buffer.clear()
            ack_tags(waiting[0].consumer, [d.tag for d in waiting])
        return len(waiting)

    # -- closing ------------------------------------------------------------------------------

    def _copy(self, delivery: Delivery) -> tuple[str, Any, bytes]:
        """A message giving back a delivery never handed out: same id, attempts, enqueue time."""
        properties = delivery.properties
        enqueued = enqueued_at(properties) or time.time()
        task_id = properties.message_id or new_task_id()
        copy = task_properties(task_id, properties.priority or 0, delivery.attempts - 1, enqueued, 0.0)
        return self.names.work(delivery.consumer.queue), copy, delivery.body

    def close(self) -> None:
        """Give back what was prefetched but not handed out (unchanged attempts), then disconnect.

        Handed-out deliveries still current return through the broker, counted as an attempt.
        First the qos drops to 1, so that nothing more is sent while anything is unacked, and what
        was already sent is taken in; only when this instance held nothing can one delivery still
        arrive during the cancel and come back counting an attempt (any number on quorum queues,
        whose consumer qos cannot change).
        """
        if self._conn is None:
            return
        try:
            if self._conn.is_open and self._consumers:
                for consumer in self._consumers.values():
                    self._conn.process_data_events(time_limit=0)
                    if self.options.queue_type != "quorum":
                        consumer.channel.basic_qos(prefetch_count=1, global_qos=True)
                        self._conn.process_data_events(time_limit=0)
                    for tag in list(consumer.channel.consumer_tags):
                        consumer.channel.basic_cancel(tag)
                    waiting = self._waiting(consumer.queue)
                    self.publish_all([self._copy(delivery) for delivery in waiting])
                    ack_tags(consumer, [d.tag for d in waiting])
            if self._conn.is_open:
                self._conn.close()
        except Exception as exc:  # closing must not raise
            logger.debug("closing %r: %s", self, exc)
        finally:
            self._conn = self._pub = self._admin = None
            self._reset_consumers()
