"""The dashboard's own history: backlog and throughput over the last hour, sampled in memory.

A :class:`Sampler` thread of the dashboard process reads, every ``interval_s`` seconds, the counts of
every queue the transport knows and the worker registry's per-child counters, and keeps one
:class:`Sample` per pass for :data:`HISTORY_S` seconds.  The history lives in the server process,
so a page reloaded (or opened in another browser) sees the same chart; it starts empty when the
dashboard starts.

* backlog: ready, delayed, in flight and dead, summed over the queues, and ready per queue;
* throughput: tasks done and failed per second between two passes, from the ``done`` and
  ``failed`` counters of every child in the registry (:func:`asynctask.registry.list_supervisors`);
  a child seen for the first time adds all its counts when it started after the sampler's first
  pass (the dashboard watched all it did; its first heartbeat may come after its first tasks), and
  nothing when it started before; a counter that went down (a restarted child) counts from 0.  None
  when the registry is not available.

A pass over many queues costs one ``stats`` call per queue: the next pass waits at least
``interval_s`` and at least :data:`BUSY_FACTOR` times as long as the pass took, so the sampler never
keeps more than a fraction of a core busy.  A failing pass (server down) is logged and skipped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asynctask.transports.base import Transport

__all__ = ["HISTORY_S", "Sample", "Sampler"]

logger = logging.getLogger(__name__)

#: how far back the history goes
HISTORY_S = 3600.0
#: the pause after a pass is at least this many times the pass's duration
BUSY_FACTOR = 4.0
#: per-queue series are kept for at most this many queues (the first ones by name)
MAX_QUEUE_SERIES = 1000


@dataclass(frozen=True)
class Sample:
    """One pass: when, the totals over every queue, ready per queue, and throughput (or None)."""

    at: float
    ready: int
    delayed: int
    in_flight: int
    dead: int
    queues: int
    done_per_s: float | None
    failed_per_s: float | None
    ready_by_queue: dict[str, int] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "ready": self.ready,
            "delayed": self.delayed,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "queues": self.queues,
            "done_per_s": self.done_per_s,
            "failed_per_s": self.failed_per_s,
        }


Supervisors = Callable[[Transport], list[dict[str, Any]] | None]


class Sampler:
    """Samples ``transport`` every ``interval_s`` seconds in a daemon thread (:meth:`start`).

    ``supervisors(transport)`` gives the registry's records, or None when there is no registry.
    """

    def __init__(self, transport: Transport, supervisors: Supervisors, interval_s: float = 5.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r}: a number of seconds > 0 is allowed")
        self.transport = transport
        self.supervisors = supervisors
        self.interval_s = float(interval_s)
        self._samples: collections.deque[Sample] = collections.deque(maxlen=int(HISTORY_S / self.interval_s) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counters: dict[str, tuple[int, int]] = {}
        self._last_at: float | None = None
        self._first_at: float | None = None  # the first pass that read the registry
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="asynctask-dashboard-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def history(self, queue: str | None = None) -> dict[str, Any]:
        """The samples of the last hour, oldest first, JSON-ready (``queue``: only its ready count)."""
        with self._lock:
            samples = list(self._samples)
        if queue is None:
            points = [sample.as_dict() for sample in samples]
        else:
            points = [
                {"at": round(sample.at, 3), "ready": sample.ready_by_queue.get(queue)}
                for sample in samples
                if queue in sample.ready_by_queue
            ]
        return {"interval_s": self.interval_s, "history_s": HISTORY_S, "queue": queue, "samples": points}

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
                if self._failing:
                    logger.info("dashboard sampler: sampling works again")
                self._failing = False
            except Exception as exc:  # an outage must not end the sampler
                logger.log(logging.DEBUG if self._failing else logging.WARNING, "dashboard sampler: %s", exc)
                self._failing = True
            took = time.monotonic() - started
            self._stop.wait(max(self.interval_s - took, took * BUSY_FACTOR))

    def sample_once(self) -> Sample:
        """One pass now (the thread calls it; tests may too)."""
        names = self.transport.queues()
        totals = [0, 0, 0, 0]
        by_queue: dict[str, int] = {}
        for name in names:
            stats = self.transport.stats(name)
            totals[0] += stats.ready
            totals[1] += stats.delayed
            totals[2] += stats.in_flight
            totals[3] += stats.dead
            if len(by_queue) < MAX_QUEUE_SERIES:
                by_queue[name] = stats.ready
        now = time.time()
        done, failed = self._throughput(now)
        sample = Sample(now, totals[0], totals[1], totals[2], totals[3], len(names), done, failed, by_queue)
        with self._lock:
            self._samples.append(sample)
        return sample

    def _throughput(self, now: float) -> tuple[float | None, float | None]:
        try:
            records = self.supervisors(self.transport)
        except Exception as exc:
            logger.debug("dashboard sampler: the registry failed: %s", exc)
            records = None
        if records is None:
            self._last_at = None
            return None, None
        counters: dict[str, tuple[int, int]] = {}
        born: set[str] = set()
        for record in records:
            for child in record.get("children") or []:
                key = f"{record.get('id')}/{child.get('slot')}/{child.get('pid')}"
                counters[key] = (_int(child.get("done")), _int(child.get("failed")))
                started = child.get("started_at")
                if self._first_at is not None and isinstance(started, (int, float)) and started >= self._first_at:
                    born.add(key)
        done = failed = 0
        for key, (child_done, child_failed) in counters.items():
            before = self._counters.get(key)
            if before is None and key in born:
                before = (0, 0)  # started while the dashboard watched: all it did is new
            if before is None:
                continue  # first seen, started earlier: its counters cover an unknown time
            done += child_done - before[0] if child_done >= before[0] else child_done
            failed += child_failed - before[1] if child_failed >= before[1] else child_failed
        if self._first_at is None:
            self._first_at = now
        last_at, self._last_at, self._counters = self._last_at, now, counters
        if last_at is None or now <= last_at:
            return None, None
        return round(done / (now - last_at), 3), round(failed / (now - last_at), 3)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
