"""``asynctask export``, ``import`` and ``migrate``: queued work out of a store, into one, between two.

* ``export QUEUE [--dead] [--output FILE]``: one JSON object a line (id, payload, meta, priority,
  attempts, enqueued_at, delay_s; for dead letters reason and dead_at), the queue unchanged;
* ``import QUEUE [--dead] [FILE]``: those lines back (stdin without FILE or with ``-``), skipping
  ids the queue holds already (reported); a bad line stops it before anything is stored;
* ``migrate --from URL --to URL [--queue Q ...] [--dead] [--dry-run]``: every queue of the source
  (or those named) moved, at least once (:mod:`asynctask.moving`), with a progress bar on stderr
  when it is a terminal and a summary at the end (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from asynctask.errors import AsyncTaskError, PayloadError, TransportError
from asynctask.message import validate_queue_name
from asynctask.moving import (
    DEFAULT_BATCH,
    DEFAULT_LEASE_S,
    MoveOptions,
    export_records,
    import_records,
    migrate_queue,
    same_store,
)
from asynctask.transports import get_transport
from asynctask.transports.base import Transport, mask_url
from asynctask.transports.transfer import TaskRecord, UnsupportedOperationError

from .admin_output import CommandError, print_json
from .exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["add_parsers", "cmd_export", "cmd_import", "cmd_migrate"]


def add_parsers(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the three commands through the admin parser's ``command(name, help)``."""
    export = command("export", "write a queue's waiting tasks (or dead letters) as JSON lines; the queue is unchanged")
    export.add_argument("queue", metavar="QUEUE")
    export.add_argument("--dead", action="store_true", help="the dead letters instead of the waiting tasks")
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")

    imports = command("import", "store tasks (or dead letters) from JSON lines as export writes them")
    imports.add_argument("queue", metavar="QUEUE")
    imports.add_argument("file", nargs="?", default="-", metavar="FILE", help="the JSON-lines file (default: stdin)")
    imports.add_argument("--dead", action="store_true", help="store them as dead letters")

    migrate = command("migrate", "move ready, delayed (and with --dead, dead) tasks from one transport to another")
    migrate.add_argument("--from", dest="source", required=True, metavar="URL", help="the transport to empty")
    migrate.add_argument("--to", dest="target", required=True, metavar="URL", help="the transport to fill")
    migrate.add_argument(
        "--queue", dest="queues", action="append", metavar="QUEUE", help="only this queue (repeatable)"
    )
    migrate.add_argument("--dead", action="store_true", help="move the dead letters too")
    migrate.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    migrate.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N", help="tasks a round trip")
    migrate.add_argument(
        "--lease-s",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help="how long a batch is held in the source: after an interrupted migrate, wait this long to re-run",
    )


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None or path == "-":
        yield sys.stdout
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            yield handle
    except OSError as exc:
        raise CommandError(f"cannot write {path!r}: {exc.strerror}", EXIT_USAGE) from None


def cmd_export(transport: Transport, args: argparse.Namespace) -> int:
    queue = validate_queue_name(args.queue)
    count = 0
    with _output(args.output) as out:
        try:
            for record in export_records(transport, queue, dead=args.dead):
                out.write(json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n")
                count += 1
        except UnsupportedOperationError as exc:
            raise CommandError(f"export: {exc.message}", EXIT_FAILURE) from None
    what = "dead letters" if args.dead else "tasks"
    sys.stderr.write(f"exported {count} {what} of {queue}\n")
    return EXIT_OK


def _read_records(path: str) -> list[TaskRecord]:
    """Every line of ``path`` as a record; a bad line is a CommandError naming its number."""
    try:
        handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot read {path!r}: {exc.strerror}", EXIT_USAGE) from None
    records = []
    with handle if handle is not sys.stdin else contextlib.nullcontext(handle):
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(TaskRecord.from_json(json.loads(line)))
            except (ValueError, PayloadError) as exc:
                raise CommandError(f"{path} line {number}: {exc}", EXIT_USAGE) from None
    return records


def cmd_import(transport: Transport, args: argparse.Namespace) -> int:
    queue = validate_queue_name(args.queue)
    records = _read_records(args.file)
    with _progress(len(records), f"import {queue}") as bar:
        stored, skipped = import_records(transport, queue, records, MoveOptions(dead=args.dead, progress=bar))
    if args.json:
        print_json({"queue": queue, "stored": stored, "duplicates_skipped": skipped})
    else:
        sys.stdout.write(f"imported {stored} into {queue}; {skipped} duplicates skipped\n")
    return EXIT_OK


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm  # noqa: PLC0415 - only the moving commands need it

    with tqdm(total=total, desc=label, unit="task", file=sys.stderr, disable=None, leave=False) as bar:
        yield bar.update


def _open(url: str, role: str) -> Transport:
    try:
        return get_transport(url)
    except TransportError as exc:
        raise CommandError(f"{role} {mask_url(url)}: {exc.message}", EXIT_UNAVAILABLE) from None


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.batch > 10_000:
        raise CommandError(f"--batch {args.batch}: an integer from 1 to 10000 is allowed", EXIT_USAGE)
    if not 0 < args.lease_s < float("inf"):
        raise CommandError(f"--lease-s {args.lease_s}: a number of seconds > 0 is allowed", EXIT_USAGE)
    named = [validate_queue_name(q) for q in args.queues or ()]
    source = _open(args.source, "--from")
    target = _open(args.target, "--to")
    summaries: list[dict[str, Any]] = []
    with source, target:
        if same_store(source, target):
            raise CommandError(f"--from and --to name the same store ({mask_url(args.source)}): nothing to migrate")
        queues = named or source.queues()
        for queue in queues:
            stats = source.stats(queue)
            total = stats.ready + stats.delayed + (stats.dead if args.dead else 0)
            try:
                with _progress(total, queue) as bar:
                    options = MoveOptions(args.dead, args.dry_run, args.batch, args.lease_s, bar)
                    summary = migrate_queue(source, target, queue, options)
            except AsyncTaskError as exc:
                raise CommandError(f"migrate {queue}: {exc.message}", _code(exc)) from None
            summaries.append(summary.to_json())
            if not args.json:
                _print_summary(summary.to_json())
    if args.json:
        print_json({"from": mask_url(args.source), "to": mask_url(args.target), "queues": summaries})
    return EXIT_OK


def _code(exc: AsyncTaskError) -> int:
    from .admin_output import exit_code_for  # noqa: PLC0415

    return EXIT_FAILURE if isinstance(exc, UnsupportedOperationError) else exit_code_for(exc)


def _print_summary(row: dict[str, Any]) -> None:
    verb = "would move" if row["dry_run"] else "moved"
    parts = [f"{row['queue']}: {verb} {row['moved']} tasks"]
    if row["skipped"]:
        parts.append(f"{row['skipped']} already in the target")
    if row["dead_moved"] or row["dead_skipped"]:
        parts.append(f"{row['dead_moved']} dead letters ({row['dead_skipped']} already there)")
    if row["dead_left"]:
        parts.append(f"{row['dead_left']} dead letters copied but left in the source")
    if row["in_flight_left"]:
        parts.append(f"{row['in_flight_left']} in flight left in the source (run again once their lease ends)")
    sys.stdout.write("; ".join(parts) + "\n")
