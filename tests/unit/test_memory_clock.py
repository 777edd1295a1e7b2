"""The memory transport with an injected clock: leases and delays without sleeping."""

from __future__ import annotations

import uuid

from asynctask.message import QueueStats
from asynctask.transports.memory import MemoryTransport


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[MemoryTransport, FakeClock]:
    clock = FakeClock()
    return MemoryTransport(f"memory://{uuid.uuid4().hex}?lease_s=10", clock=clock), clock


def test_default_lease_comes_from_the_url_and_expiry_redelivers() -> None:
    transport, clock = make()
    transport.submit_task("jobs", {"a": 1})
    first = transport.get_task("jobs")
    assert first is not None
    clock.now += 9.9
    assert transport.get_task("jobs") is None
    clock.now += 0.2
    second = transport.get_task("jobs")
    assert second is not None and second.attempts == 2
    assert transport.extend(first, 10) is False
    transport.ack(first)
    assert transport.stats("jobs").in_flight == 1


def test_extend_moves_the_deadline() -> None:
    transport, clock = make()
    transport.submit_task("jobs", {})
    task = transport.get_task("jobs")
    assert task is not None
    clock.now += 8
    assert transport.extend(task, 10)
    clock.now += 8
    assert transport.get_task("jobs") is None
    clock.now += 3
    assert transport.get_task("jobs") is not None


def test_delays_follow_the_clock() -> None:
    transport, clock = make()
    transport.submit_task("jobs", {"n": 1}, delay_s=30)
    assert transport.stats("jobs") == QueueStats(delayed=1)
    clock.now += 29
    assert transport.get_task("jobs") is None
    clock.now += 1
    stats = transport.stats("jobs")
    assert (stats.ready, stats.delayed, stats.oldest_ready_age_s) == (1, 0, 30.0)


def test_claim_expires_with_the_clock() -> None:
    transport, clock = make()
    assert transport.claim_once("k", 5)
    clock.now += 4.9
    assert not transport.claim_once("k", 5)
    clock.now += 0.2
    assert transport.claim_once("k", 5)
