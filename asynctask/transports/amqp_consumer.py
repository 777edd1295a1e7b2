"""The consuming side's records for the AMQP transport (see ``amqp.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Consumer", "Delivery", "ack_tags", "qos_for"]


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
