"""What :class:`~asynctask.metrics.WorkerMetrics` reads only when Prometheus scrapes: queue depths
(from the transport, cached) and the tasks each child runs now (from the children's shared memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the metrics module imports this one
    from asynctask.metrics import WorkerMetrics

__all__ = ["ScrapeCollector"]


class ScrapeCollector:
    """Reads queue depths from the transport, and the tasks each child runs from the supervisor's
    records, when Prometheus scrapes."""

    def __init__(self, metrics: WorkerMetrics, prom: Any) -> None:
        self.metrics = metrics
        self.prom = prom

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        core = self.prom.metrics_core
        depth = core.GaugeMetricFamily("asynctask_queue_depth", "Tasks per queue and state.", labels=["queue", "state"])
        oldest = core.GaugeMetricFamily(
            "asynctask_queue_oldest_ready_age_seconds", "Age of the oldest ready task.", labels=["queue"]
        )
        for queue, stats in sorted(self.metrics.depths().items()):
            for state in ("ready", "delayed", "in_flight", "dead"):
                depth.add_metric([queue, state], getattr(stats, state))
            oldest.add_metric([queue], stats.oldest_ready_age_s or 0.0)
        up = core.GaugeMetricFamily("asynctask_transport_up", "1 when the last queue-depth read answered.")
        up.add_metric([], self.metrics._transport_up)
        running = core.GaugeMetricFamily(
            "asynctask_child_tasks_running", "Tasks each child runs now.", labels=["queue", "worker", "slot"]
        )
        for queue, worker, slot, count in self.metrics.running():
            running.add_metric([queue, worker, slot], count)
        yield running
        yield depth
        yield oldest
        yield up
