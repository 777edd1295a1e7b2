"""``asynctask workers``: the supervisors running on every host, from the worker registry.

Reads the heartbeat records of :mod:`asynctask.registry` (:func:`~asynctask.registry.list_supervisors`).
``--json`` prints them as they are; otherwise one line per supervisor (host, pid, uptime, state,
queues) and an indented line per child: worker, queue, pid, concurrency, tasks done and failed,
the task it runs and for how long, how long ago it last fetched.  Ages are measured on this
host's clock against the times each supervisor wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from asynctask.registry import list_supervisors
from asynctask.transports.base import Transport

from .admin_output import CommandError, format_age, print_json
from .exit_codes import EXIT_OK, EXIT_USAGE

__all__ = ["cmd_workers", "describe_child", "describe_supervisor"]


def _age(now: float, at: Any) -> float | None:
    return max(now - at, 0.0) if isinstance(at, (int, float)) and not isinstance(at, bool) else None


def describe_supervisor(record: dict[str, Any], now: float) -> str:
    """``host pid 12345, up 4m05s, queues a, b`` (plus ``, stopping`` while it stops)."""
    queues = ", ".join(str(queue) for queue in record.get("queues") or []) or "-"
    state = ", stopping" if record.get("state") == "stopping" else ""
    version = f", asynctask {record['version']}" if record.get("version") else ""
    return (
        f"{record.get('host')} pid {record.get('pid')}, up {format_age(_age(now, record.get('started_at')))}"
        f"{state}{version}, queues {queues}"
    )


def describe_child(child: dict[str, Any], now: float) -> str:
    """``    worker on queue: pid N, concurrency C, done D, failed F, running ID for 3.2s, fetched 120ms ago``."""
    pid = child.get("pid") if child.get("pid") is not None else "- (restarting)"
    running = child.get("running") or []
    if running:
        first = running[0]
        more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
        doing = f"running {first.get('task_id')} for {format_age(_age(now, first.get('started_at')))}{more}"
    else:
        doing = "idle"
    fetched = _age(now, child.get("last_fetch_at"))
    return (
        f"    {child.get('worker')} on {child.get('queue')}: pid {pid}, concurrency {child.get('concurrency')},"
        f" done {child.get('done', 0)}, failed {child.get('failed', 0)}, {doing},"
        f" {'fetched ' + format_age(fetched) + ' ago' if fetched is not None else 'never fetched'}"
    )


def cmd_workers(transport: Transport, args: argparse.Namespace) -> int:
    """List the live supervisors of every host (their records in the worker registry)."""
    if not transport.keeps_state and transport.state_store is None:
        raise CommandError(
            f"workers: {type(transport).__name__} keeps no records itself: set asynctask_state_store (or"
            " $ASYNCTASK_STATE_STORE) to the state store its supervisors write their records to",
            EXIT_USAGE,
        )
    records = list_supervisors(transport)
    if args.json:
        print_json(records)
        return EXIT_OK
    out = sys.stdout
    if not records:
        out.write("no supervisors running (none wrote a heartbeat recently)\n")
        return EXIT_OK
    now = time.time()
    for record in records:
        out.write(describe_supervisor(record, now) + "\n")
        for child in record.get("children") or []:
            if isinstance(child, dict):
                out.write(describe_child(child, now) + "\n")
    return EXIT_OK
