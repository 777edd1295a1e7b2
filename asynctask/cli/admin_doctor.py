"""``asynctask doctor``: the resolved configuration (secrets masked), the transport, the workers.

Checks, each reported as ``ok``, ``warning`` or ``problem``:

* configuration: every setting after files, ``--set`` and environment, with its origin, passwords
  masked (:meth:`asynctask.config.Settings.describe`); a configuration that does not load is a problem;
* transport: whether it opens and answers (``queues()``), how long that took, and the topology it
  sees (``Transport.topology()``: cluster nodes, sentinel master, broker node, a pooler);
* workers: the registered workers (after importing ``asynctask_require`` as ``asynctask-workers``
  does, with :func:`asynctask.importing.import_modules`: the current directory first), the configured
  queue -> worker pairs; an unknown worker name is a problem;
* coverage: a queue that holds tasks (ready or delayed) and has no worker is a problem (nothing
  will ever run them); an empty known queue with no worker, and a registered worker that serves no
  queue (and no schedule), are warnings.

Exit 0 when there is no problem (``--strict``: and no warning), else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from asynctask.config import Settings, check_worker_names
from asynctask.cron import scheduled_queue_name
from asynctask.errors import AsyncTaskError, ConfigurationError
from asynctask.importing import import_modules
from asynctask.transports import get_transport
from asynctask.transports.base import mask_url
from asynctask.workers.base import AsyncTaskWorker, registered_workers

from .admin_output import one_line, print_json
from .admin_settings import AdminSettings
from .exit_codes import EXIT_FAILURE, EXIT_OK


@dataclass
class Report:
    """The doctor's findings."""

    checks: list[dict[str, str]] = field(default_factory=list)

    def add(self, status: str, check: str, detail: str) -> None:
        self.checks.append({"status": status, "check": check, "detail": one_line(detail, 400)})

    def count(self, status: str) -> int:
        return sum(1 for check in self.checks if check["status"] == status)


def _check_transport(url: str, report: Report) -> dict[str, int] | None:
    """Open the transport and count pending tasks per queue; None when it does not answer."""
    started = time.monotonic()
    try:
        with get_transport(url) as transport:
            pending = {}
            for queue in transport.queues():
                stats = transport.stats(queue)
                pending[queue] = stats.ready + stats.delayed
            topology = transport.topology()
    except AsyncTaskError as exc:
        report.add("problem", "transport", exc.message)
        return None
    elapsed_ms = (time.monotonic() - started) * 1000
    report.add("ok", "transport", f"{mask_url(url)} answers in {elapsed_ms:.0f} ms; {len(pending)} queues known")
    if topology:
        report.add("ok", "topology", json.dumps(topology, separators=(", ", ": "), default=str))
    return pending


def _registered(settings: Settings, report: Report) -> dict[str, type[AsyncTaskWorker]]:
    """Import the required modules as ``asynctask-workers`` does (the current directory first)."""
    for module in settings.require:
        try:
            import_modules([module])
        except ConfigurationError as exc:
            report.add("problem", "require", exc.message)
    return registered_workers()


def _check_workers(settings: Settings, pending: dict[str, int] | None, report: Report) -> None:
    registry = _registered(settings, report)
    report.add("ok", "registered workers", ", ".join(sorted(registry)) or "none")
    served = {entry.queue: entry.worker for entry in settings.workers}
    report.add("ok", "configured queues", ", ".join(f"{q}: {w}" for q, w in sorted(served.items())) or "none")
    try:
        check_worker_names(settings, registry)
    except ConfigurationError as exc:
        report.add("problem", "workers", exc.message)
    for queue, count in sorted((pending or {}).items()):
        if queue in served:
            continue
        if count:
            report.add("problem", "queue without worker", f"{queue}: {count} tasks wait and no worker takes them")
        else:
            report.add("warning", "queue without worker", queue)
    scheduled = set(settings.scheduled_only_workers())
    for name in sorted(set(registry) - set(served.values())):
        if name in scheduled:
            report.add("ok", "scheduled worker", f"{name} runs on {scheduled_queue_name(name)}")
        else:
            report.add("warning", "worker without queue", name)


def doctor(resolved: AdminSettings, args: argparse.Namespace) -> int:
    """Run the checks, print them (text or ``--json``), return 0 or 1."""
    report = Report()
    settings = resolved.settings
    if resolved.error is not None:
        report.add("problem", "configuration", resolved.error.message)
    pending = None
    if resolved.transport_url:
        report.add("ok", "transport url", f"{mask_url(resolved.transport_url)} (from {resolved.source})")
        pending = _check_transport(resolved.transport_url, report)
    else:
        report.add("warning", "transport", f"not checked ({resolved.source})")
    described: dict[str, Any] = {}
    if settings is not None:
        described = settings.describe()
        if resolved.source == "--transport":
            described["asynctask_transport"] = {"value": mask_url(resolved.transport_url), "origin": "--transport"}
        _check_workers(settings, pending, report)
    problems, warnings = report.count("problem"), report.count("warning")
    if getattr(args, "json", False):
        print_json({"configuration": described, "checks": report.checks, "problems": problems, "warnings": warnings})
    else:
        _print_report(described, report)
    return EXIT_FAILURE if problems or (getattr(args, "strict", False) and warnings) else EXIT_OK


def _print_report(described: dict[str, Any], report: Report) -> None:
    out = sys.stdout
    out.write("configuration:\n")
    for key, item in described.items():
        value = item["value"]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.write(f"  {key}: {text}  ({item['origin']})\n")
    out.write("checks:\n")
    for check in report.checks:
        out.write(f"  [{check['status']}] {check['check']}: {check['detail']}\n")
    problems, warnings = report.count("problem"), report.count("warning")
    out.write(f"{problems} problems, {warnings} warnings\n")
