"""The subcommands of the ``asynctask`` admin command: queues, submit, purge, dead.

Each takes the open transport and the parsed arguments, prints its result, and returns an exit code
(or raises :class:`~asynctask.cli.admin_output.CommandError` for a user error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from asynctask.errors import AsyncTaskError, PayloadError
from asynctask.message import DeadTask, QueueStats, encode_payload, validate_queue_name
from asynctask.transports.base import Transport

from .admin_output import (
    CommandError,
    Progress,
    confirm,
    exit_code_for,
    format_age,
    format_time,
    one_line,
    print_json,
    print_table,
)
from .exit_codes import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE

#: Payloads stored per ``submit_tasks`` call when submitting a file.
SUBMIT_CHUNK = 500
#: How many dead tasks ``dead show`` / ``dead replay IDS`` look through to find the ids named.
DEAD_SCAN_LIMIT = 100_000


def known_queue(transport: Transport, queue: str) -> str:
    """``queue`` when its name is valid and the transport knows it; else a CommandError.

    A bad name is EXIT_USAGE (QueueNameError's message); a queue the transport does not know is
    EXIT_NOT_FOUND, naming the known ones.
    """
    validate_queue_name(queue)
    known = transport.queues()
    if queue not in known:
        listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
        raise CommandError(f"unknown queue {queue!r}: the transport knows {listing}", EXIT_NOT_FOUND)
    return queue


# -- queues -------------------------------------------------------------------------------------


def queue_dict(name: str, stats: QueueStats) -> dict[str, Any]:
    """One queue's counts as ``queues --json`` (and the dashboard's API) give them."""
    return {
        "queue": name,
        "ready": stats.ready,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "dead": stats.dead,
        "oldest_ready_age_s": stats.oldest_ready_age_s,
    }


def cmd_queues(transport: Transport, args: argparse.Namespace) -> int:
    """A table of ready, delayed, in flight, dead and the oldest ready task's age, per queue."""
    names = [known_queue(transport, q) for q in args.queues] if args.queues else transport.queues()
    rows = []
    for name in names:
        stats = transport.stats(name)
        rows.append((name, stats))
    if args.json:
        print_json([queue_dict(name, s) for name, s in rows])
        return EXIT_OK
    if not rows:
        sys.stdout.write("no queues\n")
        return EXIT_OK
    print_table(
        ("QUEUE", "READY", "DELAYED", "IN_FLIGHT", "DEAD", "OLDEST_READY"),
        [(name, s.ready, s.delayed, s.in_flight, s.dead, format_age(s.oldest_ready_age_s)) for name, s in rows],
    )
    return EXIT_OK


# -- submit -------------------------------------------------------------------------------------


def parse_payload(text: str, where: str) -> dict[str, Any]:
    """Parse one payload: a JSON object.  Raises CommandError (EXIT_USAGE) naming ``where``."""
    try:
        value = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        position = f"line {exc.lineno} column {exc.colno}" if "\n" in text.rstrip("\r\n") else f"column {exc.colno}"
        raise CommandError(f"{where}: bad JSON: {exc.msg} at {position}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CommandError(f"{where}: bad JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CommandError(f"{where}: a payload must be a JSON object, not {type(value).__name__}", EXIT_USAGE)
    try:
        encode_payload(value)
    except PayloadError as exc:
        raise CommandError(f"{where}: {exc.message}", EXIT_USAGE) from None
    return value


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    stream: TextIO
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    try:
        yield from enumerate(stream, start=1)
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}", EXIT_USAGE) from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def load_file(path: str, *, partial: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Every payload of a JSON-lines file (blank lines skipped), validated before anything is sent.

    Without ``partial`` the first bad line raises CommandError naming ``path:LINE``; with it, bad
    lines are collected as messages and the good payloads returned.
    """
    name = "<stdin>" if path == "-" else path
    payloads: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            payloads.append(parse_payload(line, f"{name}:{number}"))
        except CommandError as exc:
            if not partial:
                raise CommandError(f"{exc.message} (nothing was submitted)", exc.code) from None
            problems.append(exc.message)
    return payloads, problems


def cmd_submit(transport: Transport, args: argparse.Namespace) -> int:
    """Submit one payload (argument or ``{}``) or every line of ``--file``; print the id(s)."""
    validate_queue_name(args.queue)
    options = {"delay_s": args.delay_s, "priority": args.priority}
    if args.file is not None:
        if args.payload is not None:
            raise CommandError("give either a JSON payload or --file, not both", EXIT_USAGE)
        return _submit_file(transport, args, options)
    if args.partial:
        raise CommandError("--partial only applies to --file", EXIT_USAGE)
    payload = parse_payload(args.payload, "payload") if args.payload is not None else {}
    task_id = transport.submit_task(args.queue, payload, **options)
    if args.json:
        print_json({"queue": args.queue, "submitted": 1, "ids": [task_id]})
    else:
        sys.stdout.write(task_id + "\n")
    return EXIT_OK


def _submit_file(transport: Transport, args: argparse.Namespace, options: dict[str, Any]) -> int:
    payloads, problems = load_file(args.file, partial=args.partial)
    for problem in problems:
        sys.stderr.write(f"asynctask: skipped: {problem}\n")
    ids: list[str] = []
    progress = Progress(f"submitting to {args.queue}", len(payloads))
    started = time.monotonic()
    try:
        for start in range(0, len(payloads), SUBMIT_CHUNK):
            ids += transport.submit_tasks(args.queue, payloads[start : start + SUBMIT_CHUNK], **options)
            progress.update(len(ids))
    except AsyncTaskError as exc:
        progress.finish()
        raise CommandError(
            f"{len(ids)} of {len(payloads)} tasks were submitted before the transport failed: {one_line(exc.message)}",
            exit_code_for(exc),
        ) from None
    progress.finish()
    elapsed = time.monotonic() - started
    if args.json:
        print_json({"queue": args.queue, "submitted": len(ids), "skipped": len(problems), "ids": ids})
    else:
        sys.stdout.write(f"submitted {len(ids)} tasks to {args.queue} in {elapsed:.2f}s")
        sys.stdout.write(f" ({len(problems)} bad lines skipped)\n" if problems else "\n")
    return EXIT_FAILURE if problems else EXIT_OK


# -- purge --------------------------------------------------------------------------------------


def cmd_purge(transport: Transport, args: argparse.Namespace) -> int:
    """Drop the ready and delayed tasks of a queue, after asking (unless ``--yes``)."""
    queue = known_queue(transport, args.queue)
    stats = transport.stats(queue)
    confirm(
        f"Drop {stats.ready} ready and {stats.delayed} delayed tasks of queue {queue!r}"
        f" (in-flight and dead tasks stay)?",
        assume_yes=args.yes,
        what=f"purge queue {queue!r}",
    )
    count = transport.purge(queue)
    if args.json:
        print_json({"queue": queue, "purged": count})
    else:
        sys.stdout.write(f"purged {count} tasks from {queue}\n")
    return EXIT_OK


# -- dead ---------------------------------------------------------------------------------------


def dead_dict(dead: DeadTask, *, full: bool) -> dict[str, Any]:
    """One dead letter as ``dead list|show --json`` (and the dashboard's API) give it; ``full``: the
    whole reason (the traceback), else one line of at most 200 characters."""
    result: dict[str, Any] = {
        "id": dead.id,
        "queue": dead.queue,
        "attempts": dead.attempts,
        "dead_at": dead.dead_at,
        "dead_at_utc": format_time(dead.dead_at),
        "reason": dead.reason if full else one_line(dead.reason, 200),
    }
    payload = dead.payload
    if payload is not None:
        result["payload"] = payload
    else:
        result["body"] = dead.body
    return result


def _find_dead(transport: Transport, queue: str, ids: list[str]) -> list[DeadTask]:
    """The dead tasks named by ``ids``, in that order; CommandError (EXIT_NOT_FOUND) naming a missing one."""
    by_id = {dead.id: dead for dead in transport.dead_tasks(queue, DEAD_SCAN_LIMIT)}
    missing = [task_id for task_id in ids if task_id not in by_id]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CommandError(f"no dead task {shown} in queue {queue!r} ({len(by_id)} dead tasks there)", EXIT_NOT_FOUND)
    return [by_id[task_id] for task_id in dict.fromkeys(ids)]


def cmd_dead(transport: Transport, args: argparse.Namespace) -> int:
    """``dead list|show|replay|purge QUEUE [IDS...]``."""
    queue = known_queue(transport, args.queue)
    ids: list[str] = list(args.ids)
    if args.action == "list":
        return _dead_list(transport, queue, ids, args)
    if args.action == "show":
        if not ids:
            raise CommandError("dead show needs at least one task id (see: asynctask dead list QUEUE)", EXIT_USAGE)
        found = _find_dead(transport, queue, ids)
        if args.json:
            print_json([dead_dict(dead, full=True) for dead in found])
            return EXIT_OK
        for number, dead in enumerate(found):
            if number:
                sys.stdout.write("\n")
            _print_dead(dead)
        return EXIT_OK
    if args.action == "replay":
        if ids:
            _find_dead(transport, queue, ids)
        count = transport.replay_dead(queue, list(dict.fromkeys(ids)) if ids else None)
        if args.json:
            print_json({"queue": queue, "replayed": count})
        else:
            sys.stdout.write(f"replayed {count} dead tasks to {queue}\n")
        return EXIT_OK
    return _dead_purge(transport, queue, ids, args)


def _dead_list(transport: Transport, queue: str, ids: list[str], args: argparse.Namespace) -> int:
    found = _find_dead(transport, queue, ids) if ids else transport.dead_tasks(queue, args.limit)
    if args.json:
        print_json([dead_dict(dead, full=False) for dead in found])
        return EXIT_OK
    if not found:
        sys.stdout.write(f"no dead tasks in {queue}\n")
        return EXIT_OK
    print_table(
        ("ID", "ATTEMPTS", "DEAD_AT", "REASON"),
        [(d.id, d.attempts, format_time(d.dead_at), one_line(d.reason, 80)) for d in found],
    )
    return EXIT_OK


def _print_dead(dead: DeadTask) -> None:
    out = sys.stdout
    out.write(f"id:        {dead.id}\n")
    out.write(f"queue:     {dead.queue}\n")
    out.write(f"attempts:  {dead.attempts}\n")
    out.write(f"dead at:   {format_time(dead.dead_at)}\n")
    payload = dead.payload
    if payload is not None:
        out.write("payload:   " + json.dumps(payload, ensure_ascii=False, indent=2).replace("\n", "\n           "))
        out.write("\n")
    else:
        out.write(f"body:      {dead.body!r} (does not decode)\n")
    out.write("reason:\n")
    for line in dead.reason.splitlines() or [""]:
        out.write(f"  {line}\n")


def _dead_purge(transport: Transport, queue: str, ids: list[str], args: argparse.Namespace) -> int:
    if ids:
        _find_dead(transport, queue, ids)
        what = f"{len(set(ids))} dead tasks of queue {queue!r}"
    else:
        what = f"all {transport.stats(queue).dead} dead tasks of queue {queue!r}"
    confirm(f"Delete {what} for good?", assume_yes=args.yes, what=f"purge dead tasks of {queue!r}")
    count = transport.purge_dead(queue, list(dict.fromkeys(ids)) if ids else None)
    if args.json:
        print_json({"queue": queue, "purged": count})
    else:
        sys.stdout.write(f"deleted {count} dead tasks of {queue}\n")
    return EXIT_OK
