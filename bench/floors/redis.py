"""The Redis floor: bare redis-py loops on private keys, the client the transport itself uses.

Keys ``asynctask_floor_<hex>:{submit,queue,processing}`` in the URL's database, deleted by close().

* submit: one ``LPUSH`` per item (``client.lpush``: one round trip each);
* submit_batch: one pipeline of ``LPUSH`` commands per batch (one round trip per batch);
* drain: per batch of 100, one pipeline of ``LMOVE queue processing RIGHT LEFT`` (take) and one of
  ``LREM processing 1 body`` (ack): the reliable-queue loop a hand-written at-least-once consumer
  runs, two round trips per batch as the transport's ``get_tasks`` + ``ack_tasks``.
"""

from __future__ import annotations

import time
import uuid

from asynctask.transports.redis import RedisTransport
from bench.floors import BODY

_BATCH = 100


class Floor:
    def __init__(self, url: str) -> None:
        self.transport = RedisTransport(url)
        self.client = self.transport.client
        prefix = f"asynctask_floor_{uuid.uuid4().hex[:12]}"
        self.submit_key = f"{prefix}:submit"
        self.queue_key = f"{prefix}:queue"
        self.processing_key = f"{prefix}:processing"
        self.closed = False

    def submit(self, n: int) -> float:
        lpush, key = self.client.lpush, self.submit_key
        started = time.perf_counter()
        for _ in range(n):
            lpush(key, BODY)
        elapsed = time.perf_counter() - started
        self.client.delete(key)
        return elapsed

    def submit_batch(self, n: int, batch: int) -> float:
        key = self.submit_key
        started = time.perf_counter()
        for start in range(0, n, batch):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(batch, n - start)):
                pipe.lpush(key, BODY)
            pipe.execute()
        elapsed = time.perf_counter() - started
        self.client.delete(key)
        return elapsed

    def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.client.lpush(self.queue_key, *([BODY] * min(1000, n - start)))

    def drain(self, n: int) -> float:
        queue, processing = self.queue_key, self.processing_key
        started = time.perf_counter()
        taken = 0
        while taken < n:
            count = min(_BATCH, n - taken)
            pipe = self.client.pipeline(transaction=False)
            for _ in range(count):
                pipe.lmove(queue, processing, "RIGHT", "LEFT")
            bodies = [body for body in pipe.execute() if body is not None]
            if not bodies:
                raise RuntimeError("the floor's queue ran dry")
            pipe = self.client.pipeline(transaction=False)
            for body in bodies:
                pipe.lrem(processing, 1, body)
            pipe.execute()
            taken += len(bodies)
        return time.perf_counter() - started

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.delete(self.submit_key, self.queue_key, self.processing_key)
        self.transport.close()
