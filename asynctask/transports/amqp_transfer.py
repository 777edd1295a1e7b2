"""The transfer hooks of the AMQP transport (:mod:`asynctask.transports.transfer`); layout: ``amqp.py``.

RabbitMQ cannot read a queue without taking from it, nor look a message up by id, so:

* ``peek_tasks`` is not offered (it raises :class:`UnsupportedOperationError`: use ``migrate``);
* ``take_tasks`` takes on the queue's consume channel (the one ``get_tasks`` uses, so that an ack,
  a lease and a lease running out work as for a fetched task): first what the consumer has
  prefetched and the ready messages the broker is sending it (its prefetch is raised to the batch
  for that), then, when that is short of ``max_count``, the delayed messages of the holding queues
  the registry lists, through a consumer per holding queue limited to what is still wanted (then
  cancelled).  A taken message stays unacked, under a lease, until ``ack_tasks``; the attempts it
  had are kept (a lease that runs out puts it back in this instance's buffer, as any AMQP lease,
  ready: a delayed one is delayed again by the fetch that finds it early, as any early message is).
  The remaining delay is its ``asynctask-due-ms`` header less now.  A body that does not decode is
  taken as its text (invalid UTF-8 replaced).  A task marked cancelled (with a state store) is
  dropped, acked, as a fetch drops it.  What the broker cannot avoid: a taken message given
  back by a lost connection or a killed process comes back ``redelivered`` and counts one attempt
  more, as a fetched one does; a holding queue whose messages expire while it is read yields fewer
  (they are in the work queue: the next take gets them); and ``close()`` of the instance gives
  back what its consumer prefetched beyond the batch, as after any fetch.
* ``put_tasks`` publishes each record (confirmed, in batches of
  :data:`~asynctask.transports.amqp_names.PUBLISH_CHUNK`) with its id, priority, attempts and
  enqueue time in the headers a submitted task has, to the work queue or, with a delay left, to the
  holding queue of its delay bucket.  It cannot tell which ids the queue holds already: it stores
  EVERY record (all True), so an import or migrate run twice stores its tasks twice.
* ``dead_page`` reads the dead-letter queue as ``dead_tasks`` does, without taking: under the admin
  lock, a consumer on a channel of its own receives the first ``offset + limit`` dead letters
  unacked, and closing the channel puts them all back, in order.  Queue order is the order of
  death (``put_dead`` appends, whatever the ``dead_at`` it keeps).  The cursor is that offset, so a
  page costs the letters before it: the first pages are fast, but page *k* of 100 moves
  ``100 * k`` messages, and a replay or purge between pages shifts what follows (letters may be
  skipped, as the contract allows).  Measured with 100,000 letters: a page of 100 at offset 0 takes
  about 4 ms, at 1,000 about 20 ms, at 10,000 about 250 ms, at 99,900 about 2.6 s.  RabbitMQ has no
  way to start reading a classic or quorum queue past its head.
* ``put_dead`` publishes dead letters with the reason, attempts, death time, priority and enqueue
  time; as ``put_tasks``, it cannot skip ids already dead (all True).

Round trips: a take of 1,000 ready tasks is a passive declare, two ``basic.qos`` (the consumer's
fetch prefetch, then the batch's) and the deliveries streaming in (plus, when the queue runs short,
the admin lock, the registry and about four per holding queue with messages); a put of 1,000 is one
confirmed batch; an ack of 1,000 is one ``multiple`` ack frame (no round trip) when their tags are
contiguous.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from asynctask.errors import TaskDecodeError
from asynctask.message import DeadTask, Task, decode_body
from asynctask.transports.amqp_cancel import CANCEL_KEY, CANCELLED_MARK
from asynctask.transports.amqp_consumer import Consumer, Delivery
from asynctask.transports.amqp_names import HDR_DUE, dead_properties, enqueued_at, from_ms, task_properties
from asynctask.transports.transfer import TaskRecord, Transfer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from asynctask.transports.admin import Administration
    from asynctask.transports.amqp_admin import AmqpAdmin
    from asynctask.transports.amqp_connection import AmqpConnection
    from asynctask.transports.amqp_consumer import Consumers
    from asynctask.transports.state import KeyedState

__all__ = ["AmqpTransfer"]

#: A take waits at most this long for the ready messages the broker counted, and gives up earlier
#: when none came for ``IDLE_S`` (other consumers took them: the next take finds what is left).
TAKE_WAIT_S, IDLE_S = 1.0, 0.05
#: The same for a holding queue, which no one else consumes: a longer gap is a broker reading from disk.
DELAY_WAIT_S, DELAY_IDLE_S = 5.0, 0.5
#: ``dead_page`` waits this long for the letters before and on its page (the admin lock keeps
#: other readers away), and as long for the broker to have put them back before it lets go of the lock.
PAGE_WAIT_S, PAGE_IDLE_S = 30.0, 2.0
#: The largest prefetch (``basic.qos`` takes a 16-bit count; 0 means no limit).
MAX_QOS = 65535


class AmqpTransfer(Transfer):
    """Mixin of :class:`~asynctask.transports.amqp.AmqpTransport` (listed before it); see the module
    docstring for what each hook does and cannot do on RabbitMQ."""

    connection: AmqpConnection
    consumers: Consumers
    admin: Administration  # an AmqpAdmin: see _admin
    _token: str

    if TYPE_CHECKING:

        def _target(self, queue: str, delay_s: float) -> str: ...
        def _ack_tasks(self, tasks: Sequence[Task]) -> None: ...
        def state_get_many(self, queue: str, keys: Sequence[str]) -> list[str | None]: ...

        state_store: KeyedState | None

    @property
    def _admin(self) -> AmqpAdmin:
        return cast("AmqpAdmin", self.admin)

    # -- take ---------------------------------------------------------------------------------

    def _take_tasks(self, queue: str, max_count: int, lease_s: float) -> list[tuple[TaskRecord, Task]]:
        with self.connection.guard():
            self.consumers.expire_leases()
            consumer = self._fill_buffer(queue, max_count)
            deliveries = self._from_buffer(consumer, max_count)
            if len(deliveries) < max_count:
                deliveries += self._from_delays(consumer, max_count - len(deliveries))
            taken = self._taken(consumer, deliveries, lease_s)
        return self._drop_cancelled(queue, taken)

    def _fill_buffer(self, queue: str, max_count: int) -> Consumer:
        """The queue's consumer, once the ready messages the broker will send it (up to the batch)
        have arrived in its buffer."""
        connection = self.connection
        consumer = self.consumers.consumer(queue, max_count)
        connection.conn.process_data_events(time_limit=0)
        buffered, unacked = len(consumer.buffer), len(consumer.unacked)
        ready = connection.passive(connection.names.work(queue)) or 0
        # A round trip on the consume channel: what the broker sent before counting arrives before
        # its answer.  On a classic queue it also raises the channel's prefetch to hold the batch.
        if connection.options.queue_type == "quorum":
            consumer.channel.basic_qos(prefetch_count=connection.options.prefetch)  # as it is: no change
        else:
            qos = min(MAX_QOS, max(consumer.qos, 1 << (unacked + max_count - 1).bit_length()))
            consumer.channel.basic_qos(prefetch_count=qos, global_qos=True)
            consumer.qos = qos
        room = max(consumer.qos - unacked, 0)
        target = min(max_count, buffered + min(ready, room))
        self._wait(lambda: len(consumer.buffer), target, TAKE_WAIT_S, IDLE_S)
        return consumer

    @staticmethod
    def _from_buffer(consumer: Consumer, max_count: int) -> list[Delivery]:
        """Up to ``max_count`` deliveries out of the buffer, highest priority then oldest."""
        found: list[Delivery] = []
        while consumer.buffer and len(found) < max_count:
            delivery = heapq.heappop(consumer.buffer)[2]
            if delivery.tag in consumer.unacked:
                found.append(delivery)
        return found

    def _from_delays(self, consumer: Consumer, wanted: int) -> list[Delivery]:
        """Up to ``wanted`` messages out of the holding queues of the consumer's queue, shortest
        delay first, on its channel: a consumer per holding queue, limited to what is still wanted."""
        connection = self.connection
        with self._admin._admin_lock():
            _, delays = self._admin._registry()
        found: list[Delivery] = []
        channel = consumer.channel
        limited = False
        try:
            for ms in sorted(delays.get(consumer.queue, ())):
                name = connection.names.delay(consumer.queue, ms)
                count = min(connection.passive(name) or 0, wanted - len(found), MAX_QOS)
                if count <= 0:
                    continue
                channel.basic_qos(prefetch_count=count)  # this consumer's own limit
                limited = True
                arrived = self._consume(consumer, name, count)
                found += arrived
                if len(found) >= wanted:
                    break
        finally:
            if limited and channel.is_open:
                # the per-consumer limit the channel's next consumers get, as it was
                quorum = connection.options.queue_type == "quorum"
                channel.basic_qos(prefetch_count=connection.options.prefetch if quorum else 0)
        return found

    def _consume(self, consumer: Consumer, name: str, count: int) -> list[Delivery]:
        """Up to ``count`` messages of queue ``name`` on the consumer's channel (its limit set to
        ``count`` by the caller), through a consumer cancelled once they came."""
        arrived: list[Delivery] = []

        def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
            arrived.append(self.consumers.delivery(consumer, method, properties, body))

        tag = consumer.channel.basic_consume(name, on_message, auto_ack=False)
        self._wait(lambda: len(arrived), count, DELAY_WAIT_S, DELAY_IDLE_S)
        consumer.channel.basic_cancel(tag)
        return arrived

    def _wait(self, count: Callable[[], int], target: int, limit_s: float, idle_s: float) -> None:
        """Take in deliveries until ``count()`` reaches ``target``, none came for ``idle_s``, or
        ``limit_s`` passed."""
        now = time.monotonic()
        deadline, last, seen = now + limit_s, now, count()
        while seen < target:
            now = time.monotonic()
            if now >= deadline or now - last >= idle_s:
                return
            self.connection.conn.process_data_events(time_limit=min(deadline, last + idle_s) - now)
            if count() != seen:
                seen, last = count(), time.monotonic()

    def _taken(self, consumer: Consumer, deliveries: list[Delivery], lease_s: float) -> list[tuple[TaskRecord, Task]]:
        """Hand out taken deliveries under a lease, with the attempts they had (not one more)."""
        taken = []
        now = time.time()
        lease_until = time.monotonic() + lease_s
        prefix = f"{self._token}.{self.connection.generation}."
        for delivery in deliveries:
            properties = delivery.properties
            # A delivery's ``attempts`` are those of its hand-out; a take is none.  A lease that runs
            # out adds one (as for any hand-out), which makes it what a fetch would show.
            delivery.attempts = max(delivery.attempts - 1, 0)
            try:
                payload, meta = decode_body(delivery.body)
            except TaskDecodeError:
                payload, meta = {}, {}
            due = from_ms((properties.headers or {}).get(HDR_DUE))
            task_id = properties.message_id or f"amqp-{self._token}-{delivery.seq}"
            priority, enqueued = properties.priority or 0, enqueued_at(properties)
            delivery.receipt = receipt = prefix + str(next(self.consumers.seq))
            delivery.lease_until = lease_until
            self.consumers.by_receipt[receipt] = delivery
            body = delivery.body.decode("utf-8", "replace")
            record = TaskRecord(
                task_id, body, priority, delivery.attempts, enqueued, max(due - now, 0.0) if due else 0.0
            )
            task = Task(task_id, consumer.queue, payload, delivery.attempts, enqueued, priority, receipt, meta)
            taken.append((record, task))
        return taken

    def _drop_cancelled(self, queue: str, taken: list[tuple[TaskRecord, Task]]) -> list[tuple[TaskRecord, Task]]:
        """Without the tasks marked cancelled in the state store (acked: a fetch would drop them)."""
        if self.state_store is None or not taken:
            return taken
        marks = self.state_get_many(queue, [CANCEL_KEY + task.id for _, task in taken])
        dropped = [task for (_, task), mark in zip(taken, marks, strict=True) if mark == CANCELLED_MARK]
        if dropped:
            self._ack_tasks(dropped)
        return [pair for pair, mark in zip(taken, marks, strict=True) if mark != CANCELLED_MARK]

    # -- put ----------------------------------------------------------------------------------

    def _put_tasks(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        """Publish every record (see the module docstring: duplicates cannot be told)."""
        now = time.time()
        with self.connection.guard():
            items = []
            for record in records:
                due = now + record.delay_s if record.delay_s > 0 else 0.0
                properties = task_properties(
                    record.id, record.priority, record.attempts, record.enqueued_at or now, due
                )
                items.append((self._target(queue, record.delay_s), properties, record.body.encode()))
            self.connection.publish_all(items)
        return [True] * len(records)

    def _put_dead(self, queue: str, records: list[TaskRecord]) -> list[bool]:
        """Publish every record as a dead letter (ids already dead cannot be told)."""
        now = time.time()
        with self.connection.guard():
            self.connection.ensure_work(queue)  # the dead queue with it, and the queue in the registry
            name = self.connection.names.dead(queue)
            items = []
            for record in records:
                dead_at = record.dead_at if record.dead_at is not None else (record.enqueued_at or now)
                task = task_properties(record.id, record.priority, record.attempts, record.enqueued_at or dead_at, 0.0)
                properties = dead_properties(task, record.reason or "", record.attempts, dead_at, queue)
                items.append((name, properties, record.body.encode()))
            self.connection.publish_all(items)
        return [True] * len(records)

    # -- dead letters -------------------------------------------------------------------------

    def _dead_page(self, queue: str, after: str, limit: int) -> tuple[list[DeadTask], str]:
        """The letters ``after`` (an offset) to ``after + limit``: see the module docstring."""
        start = int(after) if after.isdigit() else 0
        connection = self.connection
        name = connection.names.dead(queue)
        with connection.guard():
            if connection.passive(name) is None:
                return [], ""
            with self._admin._admin_lock():
                total = connection.passive(name) or 0
                if start >= total:
                    return [], ""
                messages = self._read_head(name, total if self._admin.whole_reads else min(start + limit, total))
                self._admin.settle(name, total)
        page = [self._admin._dead_task(queue, properties, body) for properties, body in messages[start : start + limit]]
        more = page and start + len(page) < total
        return page, str(start + len(page)) if more else ""

    def _read_head(self, name: str, count: int) -> list[tuple[Any, bytes]]:
        """The first ``count`` messages of queue ``name``, left in it: received unacked on a channel
        of its own, whose closing puts them back in order."""
        messages: list[tuple[Any, bytes]] = []
        channel = self.connection.conn.channel()
        try:
            channel.basic_qos(prefetch_count=count if count <= MAX_QOS else 0)

            def on_message(_channel: Any, _method: Any, properties: Any, body: bytes) -> None:
                messages.append((properties, body))

            channel.basic_consume(name, on_message, auto_ack=False)
            self._wait(lambda: len(messages), count, PAGE_WAIT_S, PAGE_IDLE_S)
        finally:
            if channel.is_open:
                channel.close()
        return messages[:count]
