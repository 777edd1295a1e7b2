"""``asynctask``: the admin command (queues, submit, purge, dead letters, tasks, workers, doctor).

Usage::

    asynctask [--transport URL | --config FILE... | --set NAME=VALUE...] COMMAND ...
    asynctask queues [QUEUE...] [--json]
    asynctask submit QUEUE [JSON] [--delay-s N] [--priority N] [--json]
    asynctask submit QUEUE --file tasks.jsonl [--partial] [--delay-s N] [--priority N] [--json]
    asynctask purge QUEUE [--yes] [--json]
    asynctask dead list|show|replay|purge QUEUE [IDS...] [--limit N] [--yes] [--json]
    asynctask task ID [--queue QUEUE] [--json]
    asynctask cancel ID --queue QUEUE [--json]
    asynctask schedules [--json]
    asynctask dashboard [--port 8181] [--bind 127.0.0.1] [--auth USER:PASSWORD] [--read-only]
    asynctask workers [--json]
    asynctask export QUEUE [--dead] [--output FILE]
    asynctask import QUEUE [FILE] [--dead] [--json]
    asynctask migrate --from URL --to URL [--queue QUEUE...] [--dead] [--dry-run] [--json]
    asynctask doctor [--json]

The transport is found as ``asynctask-workers`` finds it (see :mod:`asynctask.cli.admin_settings`).
The global options may also follow the command (``asynctask queues --transport URL``).

Every user error prints ONE line on stderr, ``asynctask: error: ...``, and exits with one of:

====  ==========================================================================================
0     done
1     the command ran but found a problem (``doctor``), ``--partial`` skipped bad lines, the answer
      at a confirmation was not "yes", the transport cannot do what was asked (``dead purge``), or
      the task could not be cancelled (``cancel``)
2     bad usage or input: unknown option, bad queue name, bad JSON, bad line in a file, bad or
      unknown transport URL, invalid configuration, a destructive command without ``--yes`` and
      no terminal to ask on
3     the transport cannot be reached or opened (server down, store directory not creatable)
5     unknown queue (one the transport does not know), unknown dead task id, or no record of the task
      (``task``)
6     the transport failed an operation for another reason
70    unexpected internal error (a bug: rerun with ``--log-level debug`` for the traceback)
130   interrupted (Ctrl-C)
====  ==========================================================================================

The constants live in :mod:`asynctask.cli.exit_codes`, shared with ``asynctask-workers``: 0, 2 and 3
mean the same from both; 4, its "shutdown forced", does not occur here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from asynctask.errors import AsyncTaskError, TransportError
from asynctask.transports import attach_state_store, get_transport
from asynctask.transports.base import Transport

from . import admin_commands, admin_dashboard, admin_schedules, admin_settings, admin_tasks, admin_transfer
from .admin_doctor import doctor
from .admin_output import CommandError, exit_code_for, one_line
from .admin_workers import cmd_workers
from .common import LOG_LEVELS, log_level
from .exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["build_parser", "exit_code_for", "main"]

logger = logging.getLogger(__name__)

PROG = "asynctask"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


def _common(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The options every command takes; ``prefix`` keeps the top-level values apart from the command's."""
    group = parser.add_argument_group("transport and configuration")
    group.add_argument(
        "--transport",
        metavar="URL",
        dest=prefix + "transport",
        default=argparse.SUPPRESS,
        help="the transport URL (beats --config, --set and $ASYNCTASK_TRANSPORT)",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        dest=prefix + "config",
        action="append",
        default=argparse.SUPPRESS,
        help="a YAML configuration file (repeatable, merged in order)",
    )
    group.add_argument(
        "--set",
        metavar="NAME=VALUE",
        dest=prefix + "set",
        action="append",
        default=argparse.SUPPRESS,
        help="replace the value of one setting (files merge, --set replaces), VALUE parsed as YAML (repeatable)",
    )
    group.add_argument(
        "--require",
        metavar="MODULE",
        dest=prefix + "require",
        action="append",
        default=argparse.SUPPRESS,
        help="import MODULE so its workers register (doctor; repeatable)",
    )
    group.add_argument(
        "--log-level",
        dest=prefix + "log_level",
        default=argparse.SUPPRESS,
        type=log_level,
        metavar="LEVEL",
        help=f"logging level on stderr: {', '.join(LOG_LEVELS)}, in any case (default: warning)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``asynctask`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Inspect and administer asynctask queues.",
        epilog="exit codes: 0 done, 1 a problem found (doctor, --partial, not confirmed, unsupported),"
        " 2 bad usage or input, 3 transport unreachable, 5 unknown queue or dead task id,"
        " 6 other transport failure, 70 internal error, 130 interrupted",
    )
    _common(parser, "top_")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
        _common(sub, "")
        return sub

    queues = command("queues", "ready, delayed, in-flight and dead counts and the oldest ready age, per queue")
    queues.add_argument("queues", nargs="*", metavar="QUEUE", help="only these queues (default: all known)")

    submit = command("submit", "submit a task (JSON object payload), or one per line of a JSON-lines file")
    submit.add_argument("queue", metavar="QUEUE")
    submit.add_argument("payload", nargs="?", metavar="JSON", help="the payload, a JSON object (default: {})")
    submit.add_argument("--file", metavar="FILE", help="a JSON-lines file, one payload per line ('-': stdin)")
    submit.add_argument(
        "--partial",
        action="store_true",
        help="with --file: submit the good lines even when some are bad (exit 1 when any was skipped)",
    )
    submit.add_argument("--delay-s", type=float, default=0.0, metavar="N", help="visible after N seconds")
    submit.add_argument("--priority", type=int, default=0, metavar="N", help="0 to 9, higher first (default 0)")

    purge = command("purge", "drop the ready and delayed tasks of a queue (asks unless --yes)")
    purge.add_argument("queue", metavar="QUEUE")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask")

    dead = command("dead", "dead letters: list, show, replay or purge them")
    dead.add_argument("action", choices=("list", "show", "replay", "purge"))
    dead.add_argument("queue", metavar="QUEUE")
    dead.add_argument("ids", nargs="*", metavar="ID", help="dead task ids (default for list/replay/purge: all)")
    dead.add_argument("--limit", type=int, default=100, metavar="N", help="list: at most N (default 100)")
    dead.add_argument("-y", "--yes", action="store_true", help="purge: do not ask")

    task = command("task", "a task's status, result or error, attempts and times (tasks that keep results)")
    task.add_argument("id", metavar="ID")
    task.add_argument("--queue", metavar="QUEUE", help="its queue (default: look in every known queue)")

    cancel = command("cancel", "cancel a task no worker has taken yet (exit 1 when it could not be)")
    cancel.add_argument("id", metavar="ID")
    cancel.add_argument("--queue", metavar="QUEUE", required=True, help="its queue")

    command("schedules", "every schedule (configured and decorated): where defined, next and last fire")
    admin_dashboard.add_arguments(command("dashboard", "serve the web dashboard (the dashboard extra)"))
    command("workers", "the supervisors running on every host and their children, from their heartbeats")
    admin_transfer.add_parsers(command)

    doctor = command("doctor", "check the configuration, the transport and the workers; exit 1 when something is wrong")
    doctor.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    return parser


def _option(args: argparse.Namespace, name: str) -> list[str]:
    """A repeatable option's values, before the command then after it."""
    return list(getattr(args, "top_" + name, [])) + list(getattr(args, name, []))


def _log_level(args: argparse.Namespace) -> str:
    return str(getattr(args, "log_level", None) or getattr(args, "top_log_level", None) or "warning")


_COMMANDS: dict[str, Callable[[Transport, argparse.Namespace], int]] = {
    "queues": admin_commands.cmd_queues,
    "submit": admin_commands.cmd_submit,
    "purge": admin_commands.cmd_purge,
    "dead": admin_commands.cmd_dead,
    "task": admin_tasks.cmd_task,
    "cancel": admin_tasks.cmd_cancel,
    "workers": cmd_workers,
    "export": admin_transfer.cmd_export,
    "import": admin_transfer.cmd_import,
}


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; raises AsyncTaskError / CommandError for ``main`` to report."""
    if args.command == "dashboard":  # --bind and --auth are checked before anything is opened
        admin_dashboard.check_options(args)
    if args.command == "migrate":  # two transports of its own, named by --from and --to
        return admin_transfer.cmd_migrate(args)
    transport_url = getattr(args, "transport", None) or getattr(args, "top_transport", None)
    resolved = admin_settings.resolve(
        transport_url,
        _option(args, "config"),
        _option(args, "set"),
        _option(args, "require"),
        keep_error=args.command == "doctor",
    )
    if args.command == "doctor":
        return doctor(resolved, args)
    try:
        transport = get_transport(resolved.transport_url)
        if resolved.settings is not None:
            attach_state_store(transport, resolved.settings.state_store)
    except TransportError as exc:
        # A store that cannot be opened (a server that does not answer, a directory that cannot be
        # created) is "unreachable" whatever the transport calls it.
        raise CommandError(exc.message, EXIT_UNAVAILABLE) from None
    with transport:
        if args.command == "schedules":
            return admin_schedules.cmd_schedules(resolved, transport, args)
        if args.command == "dashboard":
            return admin_dashboard.cmd_dashboard(resolved, transport, args)
        return _COMMANDS[args.command](transport, args)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``asynctask`` console script: parse, run, and turn every error into one line and a code."""
    args = build_parser().parse_args(argv)
    _configure_logging(_log_level(args))
    try:
        return run(args)
    except CommandError as exc:
        return _fail(exc.message, exc.code)
    except AsyncTaskError as exc:
        return _fail(exc.message, exit_code_for(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Output piped into a command that stopped reading (``| head``): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (rerun with --log-level debug for the traceback)",
            EXIT_INTERNAL,
        )


def _configure_logging(level_name: str) -> None:
    """Log to stderr at ``level_name``; below debug, only asynctask's own loggers speak, so a driver's
    log lines (pika logs every failed connection attempt) never add to the one-line error."""
    level = getattr(logging, level_name.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    if level > logging.DEBUG:
        handler.addFilter(lambda record: record.name == "asynctask" or record.name.startswith("asynctask."))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "asynctask_admin", False)]:
        root.removeHandler(old)  # main() called again in one process (tests)
    handler.asynctask_admin = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
