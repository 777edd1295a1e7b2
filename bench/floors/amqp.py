"""The AMQP floor: bare pika loops doing what the transport does, on a scratch queue of its own.

* ``submit``: ``basic_publish`` of a persistent message in confirm mode, one confirm awaited per
  message (what one ``submit_task`` costs);
* ``submit_batch``: ``batch`` publishes written together, then all their confirms awaited;
* ``drain``: ``basic_consume`` with the prefetch the transport's consumer uses for batches of 100
  (256), taking deliveries as they come and acking each hundred with one ``multiple`` ack.

The queue is durable with ``x-max-priority`` 9, like the transport's work queues, named
``asynctask_floor_<hex>``, and deleted by ``close()``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pika

from asynctask.transports.amqp_names import connection_parameters, parse_amqp_url
from bench.floors import BODY

DRAIN_BATCH = 100
PREFETCH = 256


class Floor:
    def __init__(self, url: str) -> None:
        parsed, options = parse_amqp_url(url)
        self.connection = pika.BlockingConnection(connection_parameters(parsed, options))
        self.queue = "asynctask_floor_" + uuid.uuid4().hex[:10]
        self.single = self.connection.channel()
        self.single.confirm_delivery()
        self.single.queue_declare(self.queue, durable=True, arguments={"x-max-priority": 9})
        self.batched = self.connection.channel()
        self._pending = 0
        ready: list[bool] = []
        self.batched._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: ready.append(True))
        self.batched._flush_output(lambda: bool(ready))
        self._confirmed = 0
        self.consumer: Any = None
        self.received: list[int] = []
        self.properties = pika.BasicProperties(delivery_mode=2, priority=0, content_type="application/json")

    def _on_confirm(self, frame: Any) -> None:
        self._confirmed = (
            frame.method.delivery_tag if frame.method.multiple else max(self._confirmed, frame.method.delivery_tag)
        )

    def _publish_batch(self, count: int) -> None:
        impl = self.batched._impl
        for _ in range(count):
            impl.basic_publish("", self.queue, BODY, self.properties)
        self._pending += count
        target = self._pending
        self.batched._flush_output(lambda: self._confirmed >= target)

    def _timed(self, action: Any) -> float:
        import time

        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    def _purge(self) -> None:
        self.single.queue_purge(self.queue)

    def submit(self, n: int) -> float:
        def run() -> None:
            for _ in range(n):
                self.single.basic_publish("", self.queue, BODY, self.properties)

        seconds = self._timed(run)
        self._purge()
        return seconds

    def submit_batch(self, n: int, batch: int) -> float:
        def run() -> None:
            for start in range(0, n, batch):
                self._publish_batch(min(batch, n - start))

        seconds = self._timed(run)
        self._purge()
        return seconds

    def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            self._publish_batch(min(1000, n - start))

    def _on_message(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        self.received.append(method.delivery_tag)

    def drain(self, n: int) -> float:
        if self.consumer is None:
            self.consumer = self.connection.channel()
            self.consumer.basic_qos(prefetch_count=PREFETCH, global_qos=True)
            self.consumer.basic_consume(self.queue, self._on_message, auto_ack=False)

        def run() -> None:
            taken = 0
            while taken < n:
                if not self.received:
                    self.connection.process_data_events(time_limit=1.0)
                    continue
                self.connection.process_data_events(time_limit=0)
                count = min(DRAIN_BATCH, n - taken, len(self.received))
                batch, self.received = self.received[:count], self.received[count:]
                self.consumer.basic_ack(batch[-1], multiple=True)
                taken += count

        return self._timed(run)

    def close(self) -> None:
        if self.connection.is_open:
            try:
                self.single.queue_delete(self.queue)
            finally:
                self.connection.close()
