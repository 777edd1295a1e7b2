"""The RabbitMQ transport: ``amqp://user:password@host:port/vhost`` and ``amqps://...`` (TLS).

URL forms::

    amqp://guest:guest@127.0.0.1:5672/%2F       vhost "/" (an empty path is "/" too)
    amqp://user:secret@rabbit.example.org/jobs  vhost "jobs", port 5672
    amqps://user:secret@rabbit.example.org/jobs TLS with the system's CA store, port 5671
    amqp://localhost/?prefetch=500&queue_type=quorum&prefix=myapp
    amqp://u:secret@rabbit1:5672,rabbit2:5673,rabbit3/jobs   the nodes of a cluster, tried in order

Several hosts: the transport connects to the first that answers, in the URL's order (in a process
that connected before, from the host it last used); when that connection is lost it connects (at
the next call) to the next host that answers, going round the list once, the lost one last (a
refused login or vhost is raised at once: it is the same on every node).  Deliveries held on the
lost connection go back to their queue (the broker's own doing), so use ``queue_type=quorum`` for
queues that outlive a node: a classic queue lives on one node only.
``topology()`` (``asynctask doctor``) names the host:port connected to and the broker's
``cluster_name``.  A bad host list is refused naming the bad entry (``port 'x' of host 'h2:x'``).

Options (query parameters):

``prefetch`` (512)
    The most deliveries a consumer holds unacked (``basic.qos``, per queue); the qos actually set
    follows the fetch size (2 to 4 x ``max_count``, a power of two, up to this), so that a worker
    fetching one slow task at a time does not hoard the queue.  ``get_tasks`` hands out what has
    already arrived, so the drain rate comes from here.
``lease_s`` (30)
    The default lease (see *Leases* below).  At most ``consumer_timeout_s`` less a margin (60 s, or a
    tenth when shorter): a larger ``lease_s`` option is refused, a larger lease asked of one fetch
    or ``extend`` is cut to that.
``consumer_timeout_s`` (1800; 0: none)
    The broker's ``consumer_timeout`` (RabbitMQ 3.8.15+ closes a channel holding a delivery unacked
    that long, 30 min unless configured, giving back all it held).  So that our lease always runs
    out first, no lease of a delivery reaches past that margin before this time from its first
    hand-out: ``extend`` then returns False (the lease is lost), and the next hand-out of it
    publishes a fresh copy (same id and attempts) and acks the old delivery.  Raise the broker's
    setting and this option together for tasks that run longer.
``heartbeat_s`` (600; 0 turns heartbeats off)
    AMQP heartbeat.  pika answers heartbeats only while this transport is called, so a task that
    runs longer than about ``2 * heartbeat_s`` without a call loses its connection, and its task
    goes to another worker; keep it above your longest task (RabbitMQ's own ``consumer_timeout``,
    30 min by default, also applies).  It is also how long the broker may keep the tasks of a
    client whose host died (a killed process closes its socket at once).  TCP keepalive (60 s idle,
    then 6 probes 10 s apart) and a 120 s ``TCP_USER_TIMEOUT`` let the client notice a dead broker
    host while it is busy.  With several hosts, that is also how long a busy worker may take to
    notice that its node died without closing its sockets (a host lost, not a process killed).
``queue_type`` (classic)
    ``quorum`` declares replicated quorum queues (work, dead, delay).  They have no priorities on
    RabbitMQ < 4.0: priority then only orders what one consumer has prefetched.  Their consumers
    take no channel-wide qos, so they prefetch the whole ``prefetch`` option whatever the fetch
    size: lower it for slow tasks.
``delivery_limit`` (20; quorum only; 0: none)
    A second guard for the crash budget (:mod:`asynctask.workers.crashes`): quorum work queues are
    declared with ``x-delivery-limit`` and dead-letter (``at-least-once``) into the queue's dead
    queue.  The broker counts the times a message went back to the queue because its holder died or
    lost its connection; our nacks and crash give-backs publish a fresh copy (count 0), so the
    broker only acts on what our accounting cannot see: a task that kills its children on many hosts
    (each supervisor counts ``max_crashes`` of its own), a supervisor that died with its ledger,
    prefetched messages of consumers lost over and over.  Keep it well above ``max_attempts +
    max_crashes``.  When it fires the letter lands in our dead store with the reason
    ``RabbitMQ dead-lettered it from <queue>: delivery_limit (...)``, its attempts counting the
    deliveries of that copy; replay works as for any letter.  A quorum queue made without the guard
    (an earlier version, ``delivery_limit=0``) is used as it is, with a warning: RabbitMQ refuses to
    change a queue's arguments (delete it when empty, or set the ``delivery-limit`` and
    ``dead-letter-*`` keys by policy).  RabbitMQ 4.0 puts a limit of 20 on every quorum queue.
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
    Dead letters: the body as it was, its id and priority, headers ``asynctask-reason``,
    ``asynctask-attempts``, ``asynctask-dead-ms``, ``asynctask-queue``, ``asynctask-enqueued-ms``.
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

Modules: :class:`AmqpTransport` (here: fetching, handing out, submitting, finishing deliveries)
holds an :class:`~asynctask.transports.amqp_connection.AmqpConnection` (the connection, channels,
declarations and confirmed publishing), the consumer state
(:class:`~asynctask.transports.amqp_consumer.Consumers`) and an
:class:`~asynctask.transports.amqp_admin.AmqpAdmin` (stats, purge, dead letters, registry, claims);
:class:`~asynctask.transports.amqp_transfer.AmqpTransfer` adds the transfer hooks (take, put, dead pages).

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

import heapq
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from asynctask.errors import TaskDecodeError
from asynctask.message import Task, decode_body, new_task_id
from asynctask.transports.admin import AdminHooks
from asynctask.transports.amqp_admin import AmqpAdmin
from asynctask.transports.amqp_cancel import AmqpCancelMarks
from asynctask.transports.amqp_connection import AmqpConnection
from asynctask.transports.amqp_consumer import Consumer, Consumers, Delivery, ack_tags
from asynctask.transports.amqp_names import (
    HDR_DUE,
    dead_properties,
    delay_bucket_ms,
    enqueued_at,
    from_ms,
    task_properties,
)
from asynctask.transports.amqp_transfer import AmqpTransfer
from asynctask.transports.base import Transport, dead_reason_for_undecodable

__all__ = ["AmqpTransport"]

logger = logging.getLogger(__name__)

#: A delivered task whose ``asynctask-due-ms`` is further ahead than this is delayed again.
EARLY_TOLERANCE_S = 1.0
#: How long a fetch whose time is up waits more for deliveries when the broker says tasks are ready.
SYNC_WAIT_S = 1.0
#: How long a fetch whose time is up waits for deliveries in transit before asking the broker.
GRACE_S = 0.005


class AmqpTransport(AmqpTransfer, AmqpCancelMarks, AdminHooks, Transport):
    """RabbitMQ through pika; see the module docstring for the layout and the threading rule.

    It holds ``connection`` (:class:`AmqpConnection`), ``consumers`` (:class:`Consumers`, told by
    the connection when it is lost) and ``admin`` (:class:`AmqpAdmin` over both, which answers
    the admin hooks: :class:`AdminHooks`); fetching and finishing deliveries live here.
    """

    schemes = ("amqp", "amqps")
    portable_receipts = False
    ack_window_s = 0.001  # an ack is a frame without a round trip: send it almost at once

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.connection = AmqpConnection(url)
        if self.connection.options.lease_s is not None:
            self.lease_s = self.connection.options.lease_s
        self.consumers = Consumers(self.connection)
        self.connection.on_lost = self.consumers.reset
        self.admin = AmqpAdmin(self.connection, self.consumers)
        self._token = uuid.uuid4().hex[:12]

    # -- consuming ---------------------------------------------------------------------------

    def _fetch(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        """Hand out up to ``max_count`` deliveries (cancel marks: :class:`AmqpCancelMarks`)."""
        deadline = time.monotonic() + timeout_s
        connection = self.connection
        lease_s = min(lease_s, connection.options.max_lease_s)
        with connection.guard():
            consumer = self.consumers.consumer(queue, max_count)
            buffer = consumer.buffer
            stage = 0
            pump = True
            while True:
                next_end = self.consumers.expire_leases()
                if pump and len(buffer) < max_count:
                    # Only before the first wait: a wait returns having read all that had arrived, so
                    # another pass would only delay handing out what it brought.
                    connection.conn.process_data_events(time_limit=0)
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
                    elif connection.passive(connection.names.work(queue)):
                        remaining = SYNC_WAIT_S
                    else:
                        return []
                    stage += 1
                    deadline = time.monotonic() + remaining
                wait = min(remaining, max(next_end - time.monotonic(), 0.001))
                connection.conn.process_data_events(time_limit=wait)

    def _hand_out(self, consumer: Consumer, max_count: int, lease_s: float) -> list[Task]:
        """Take up to ``max_count`` from the buffer (the hot path: kept lean)."""
        tasks: list[Task] = []
        buffer, unacked, by_receipt = consumer.buffer, consumer.unacked, self.consumers.by_receipt
        seq = self.consumers.seq
        mono = time.monotonic()
        lease_until = mono + lease_s
        max_lease_s = self.connection.options.max_lease_s
        now = time.time()
        prefix = f"{self._token}.{self.connection.generation}."
        while buffer and len(tasks) < max_count:
            delivery = heapq.heappop(buffer)[2]
            if delivery.tag not in unacked:
                continue  # acked meanwhile (purge)
            properties = delivery.properties
            headers = properties.headers or {}
            try:
                payload, meta = decode_body(delivery.body)
            except TaskDecodeError as exc:
                self._bury(delivery, dead_reason_for_undecodable(exc))
                continue
            due = headers.get(HDR_DUE)
            if due is not None and from_ms(due) - now > EARLY_TOLERANCE_S:
                self._republish(delivery, delivery.attempts - 1, from_ms(due) - now)
                continue
            if delivery.held_until == math.inf:
                delivery.held_until = mono + max_lease_s
            elif delivery.held_until <= mono:  # near consumer_timeout: a fresh copy, then the next one
                self._republish(delivery, delivery.attempts - 1, 0.0)
                continue
            delivery.receipt = receipt = prefix + str(next(seq))
            delivery.lease_until = min(lease_until, delivery.held_until)
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
                    meta,
                )
            )
        return tasks

    # -- producing ---------------------------------------------------------------------------

    def _target(self, queue: str, delay_s: float) -> str:
        if delay_s > 0:
            return self.connection.ensure_delay(queue, delay_bucket_ms(delay_s))
        return self.connection.ensure_work(queue)

    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        with self.connection.guard():
            target = self._target(queue, delay_s)
            now = time.time()
            due = now + delay_s if delay_s > 0 else 0.0
            ids = [new_task_id() for _ in bodies]
            self.connection.publish_all(
                [
                    (target, task_properties(task_id, priority, 0, now, due), body.encode())
                    for task_id, body in zip(ids, bodies, strict=True)
                ]
            )
        return ids

    # -- finishing a delivery --------------------------------------------------------------------

    def _ack(self, task: Task) -> None:
        self._ack_tasks([task])

    def _ack_deliveries(self, tasks: Sequence[Task]) -> None:
        """Ack in one frame when the tags are contiguous (``multiple``); a lost lease is a no-op."""
        by_consumer: dict[int, tuple[Consumer, list[int]]] = {}
        for delivery in map(self.consumers.take, tasks):
            if delivery is not None:
                by_consumer.setdefault(id(delivery.consumer), (delivery.consumer, []))[1].append(delivery.tag)
        if by_consumer:
            with self.connection.guard(reconnect=False):
                for consumer, tags in by_consumer.values():
                    ack_tags(consumer, tags)

    def _republish(self, delivery: Delivery, attempts: int, delay_s: float) -> None:
        properties = delivery.properties
        enqueued = enqueued_at(properties) or time.time()
        due = time.time() + delay_s if delay_s > 0 else 0.0
        task_id = properties.message_id or new_task_id()
        new = task_properties(task_id, properties.priority or 0, max(attempts, 0), enqueued, due)
        self.connection.publish_all([(self._target(delivery.consumer.queue, delay_s), new, delivery.body)])
        ack_tags(delivery.consumer, [delivery.tag])

    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        """Publish a copy (attempts so far in its header) to the queue or a delay queue, then ack.

        The count comes from ``task.attempts`` (that of the delivery, unless the caller lowered it:
        the runner does to undo the redelivery count of a crash, which the broker cannot tell apart).
        """
        delivery = self.consumers.take(task)
        if delivery is not None:
            with self.consumers.kept_on_failure(delivery), self.connection.guard(reconnect=False):
                self._republish(delivery, task.attempts - (0 if count_attempt else 1), delay_s)

    def _bury(self, delivery: Delivery, reason: str) -> None:
        queue = delivery.consumer.queue
        dead = dead_properties(delivery.properties, reason, delivery.attempts, time.time(), queue)
        self.connection.publish_all([(self.connection.names.dead(queue), dead, delivery.body)])
        ack_tags(delivery.consumer, [delivery.tag])
        logger.debug("task %s of %s is dead: %s", dead.message_id, queue, reason)

    def _extend(self, task: Task, lease_s: float) -> bool:
        """Local only (safe from another thread): True while the delivery is current."""
        return self.consumers.extend(task, lease_s)

    def _bury_task(self, task: Task, reason: str) -> None:
        delivery = self.consumers.take(task)
        if delivery is not None:
            with self.consumers.kept_on_failure(delivery), self.connection.guard(reconnect=False):
                self._bury(delivery, reason)

    def topology(self) -> dict[str, Any]:
        """See :meth:`AmqpAdmin.topology <asynctask.transports.amqp_admin.AmqpAdmin.topology>`."""
        return cast(AmqpAdmin, self.admin).topology()

    # -- closing ------------------------------------------------------------------------------

    def _copy(self, delivery: Delivery) -> tuple[str, Any, bytes]:
        """A message giving back a delivery never handed out: same id, attempts, enqueue time."""
        properties = delivery.properties
        enqueued = enqueued_at(properties) or time.time()
        task_id = properties.message_id or new_task_id()
        due = from_ms((properties.headers or {}).get(HDR_DUE))  # kept: its next hand-out delays it again
        copy = task_properties(task_id, properties.priority or 0, delivery.attempts - 1, enqueued, due)
        return self.connection.names.work(delivery.consumer.queue), copy, delivery.body

    def close(self) -> None:
        """Give back what was prefetched but not handed out (unchanged attempts), then disconnect.

        Handed-out deliveries still current return through the broker, counted as an attempt.
        First the qos drops to 1, so that nothing more is sent while anything is unacked, and what
        was already sent is taken in; only when this instance held nothing can one delivery still
        arrive during the cancel and come back counting an attempt (any number on quorum queues,
        whose consumer qos cannot change).
        """
        conn = self.connection.conn
        if conn is None:
            return
        try:
            if conn.is_open and self.consumers.by_queue:
                for consumer in self.consumers.by_queue.values():
                    conn.process_data_events(time_limit=0)
                    if self.connection.options.queue_type != "quorum":
                        consumer.channel.basic_qos(prefetch_count=1, global_qos=True)
                        conn.process_data_events(time_limit=0)
                    for tag in list(consumer.channel.consumer_tags):
                        consumer.channel.basic_cancel(tag)
                    waiting = self.consumers.waiting(consumer.queue)
                    self.connection.publish_all([self._copy(delivery) for delivery in waiting])
                    ack_tags(consumer, [d.tag for d in waiting])
            if conn.is_open:
                conn.close()
        except Exception as exc:  # closing must not raise
            logger.debug("closing %r: %s", self, exc)
        finally:
            self.connection.drop()
            self.consumers.reset()
