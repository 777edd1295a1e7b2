"""``asynctask task ID`` and ``asynctask cancel ID``: one task's record, and cancelling it.

``task`` prints the status and, as the record holds them, the result or error, the attempts and
the times (``--json``: the record itself); without ``--queue`` it looks in every queue the
transport knows.  A task with no record exits 5 ("unknown": it keeps no results, its record
expired, or the id is wrong).  ``cancel`` exits 0 when the task was cancelled, 1 when it could not
be (a worker has it, it is finished or cancelled already, or unknown).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from asynctask.results import UNKNOWN, TaskHandle
from asynctask.transports.base import Transport

from .admin_commands import known_queue
from .admin_output import CommandError, print_json
from .exit_codes import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK

__all__ = ["cmd_cancel", "cmd_task"]


def _when(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def _find(transport: Transport, task_id: str, queue: str | None) -> tuple[str, dict[str, Any]] | None:
    queues = [known_queue(transport, queue)] if queue else transport.queues()
    for name in queues:
        record = transport.handle(name, task_id).record()
        if record is not None:
            return name, record
    return None


def cmd_task(transport: Transport, args: argparse.Namespace) -> int:
    found = _find(transport, args.id, args.queue)
    if found is None:
        where = f"queue {args.queue!r}" if args.queue else "any queue"
        if args.json:
            print_json({"id": args.id, "status": UNKNOWN})
        raise CommandError(
            f"task {args.id!r}: no record in {where} (it keeps no results, its record expired, or the id is wrong)",
            EXIT_NOT_FOUND,
        )
    queue, record = found
    if args.json:
        print_json({"queue": queue, **record})
        return EXIT_OK
    out = sys.stdout
    out.write(f"task:      {args.id}\nqueue:     {queue}\nstatus:    {record.get('status')}\n")
    out.write(f"attempts:  {record.get('attempts', '-')}\n")
    for label, key in (("started:", "started_at"), ("finished:", "finished_at")):
        if key in record:
            out.write(f"{label:<11}{_when(record[key])}\n")
    if "result" in record:
        out.write("result:    " + json.dumps(record["result"], ensure_ascii=False) + "\n")
    error = record.get("error")
    if error:
        out.write(f"error:     {error.get('type')}: {error.get('message')}\n")
        detail = str(error.get("detail") or "")
        if "\n" in detail:
            out.write("           " + detail.split("\n", 1)[1].rstrip().replace("\n", "\n           ") + "\n")
    return EXIT_OK


def cmd_cancel(transport: Transport, args: argparse.Namespace) -> int:
    queue = known_queue(transport, args.queue)
    cancelled = TaskHandle(args.id, queue, transport).cancel()
    if args.json:
        print_json({"id": args.id, "queue": queue, "cancelled": cancelled})
    elif cancelled:
        print(f"cancelled task {args.id} on {queue}")
    else:
        print(f"task {args.id} on {queue} was not cancelled: a worker has it, it is finished or cancelled, or unknown")
    return EXIT_OK if cancelled else EXIT_FAILURE
