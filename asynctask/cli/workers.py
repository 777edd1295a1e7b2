"""``asynctask-workers``: parse the command line, load the configuration, run the supervisor.

Exit codes are :mod:`asynctask.cli.exit_codes`' constants: 0 clean (halted, or
stopped by a signal with every task finished; also "no workers configured"), 1 internal error,
2 bad usage or configuration, 3 transport unreachable at start, 4 shutdown forced (second signal
or end of the grace period).  Errors the user can fix print one line on stderr, no traceback.

Modules named by ``--require`` / ``asynctask_require`` are imported with the current directory on
``sys.path`` (as ``python -m`` does; :func:`asynctask.importing.import_modules`, which ``asynctask
doctor`` uses too); the worker children inherit that path.  An import that fails names the file
and line of the user's code; ``--log-level debug`` logs the full traceback.

``--log-format json`` writes one JSON object per log line, in the supervisor and its children, with
the task's fields while one runs (:mod:`asynctask.logformat`).

``--metrics-port N`` serves metrics on 127.0.0.1 unless ``--metrics-bind ADDRESS`` says otherwise
(``0.0.0.0``: every interface).  ``--heartbeat-s N`` replaces ``asynctask_heartbeat_s``: how often
the supervisor writes its record in the worker registry (:mod:`asynctask.registry`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from asynctask.cli.common import LOG_LEVELS, log_level
from asynctask.cli.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from asynctask.errors import AsyncTaskError, ConfigurationError, TransportUnavailableError
from asynctask.logformat import JSON, LOG_FORMATS, TEXT, JsonFormatter

#: The address ``--metrics-port`` listens on unless ``--metrics-bind`` names another.
DEFAULT_METRICS_BIND = "127.0.0.1"

if TYPE_CHECKING:
    from asynctask.config import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynctask-workers",
        description="Run the configured asynctask workers (asynctask_workers) under a supervisor.",
        epilog="exit codes: 0 clean, 1 internal error, 2 bad usage or configuration,"
        " 3 transport unreachable at start, 4 shutdown forced (workers killed)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing (not even errors of tasks)")
    parser.add_argument(
        "--log-level",
        default="info",
        type=log_level,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)}, in any case (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default=TEXT,
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line with the task's fields (default: text)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="FILE",
        help="YAML configuration file (repeatable, merged in order; default $ASYNCTASK_CONFIG or ./asynctask.yaml)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="settings",
        help="replace the value of a setting (files merge, --set replaces); VALUE is YAML (repeatable)",
    )
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE so its workers register (repeatable)",
    )
    parser.add_argument("--transport", metavar="URL", help="transport URL (overrides the configuration)")
    parser.add_argument("--scheduler", action="store_true", help="also run the cron scheduler")
    parser.add_argument("--halt-when-empty", action="store_true", help="exit once every queue is empty")
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics and /healthz on PORT"
    )
    parser.add_argument(
        "--metrics-bind",
        default=DEFAULT_METRICS_BIND,
        metavar="ADDRESS",
        help=f"the address --metrics-port listens on (default {DEFAULT_METRICS_BIND}; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=_seconds,
        metavar="N",
        help="seconds between two records of this supervisor in the worker registry"
        " (default: asynctask_heartbeat_s, 5)",
    )
    return parser


def _seconds(text: str) -> float:
    """``--heartbeat-s``: a number > 0 and <= ``MAX_HEARTBEAT_S``."""
    from asynctask.config_values import MAX_HEARTBEAT_S  # noqa: PLC0415 - --help answers fast

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_HEARTBEAT_S:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds > 0 and <= {MAX_HEARTBEAT_S} is allowed")
    return value


def _say(text: str, log_format: str, level: int = logging.ERROR) -> None:
    """A message for the user on stderr (also with ``--quiet``, for errors): as it is, or as one
    JSON object under ``--log-format json``, so that every line of stderr is one."""
    if log_format == JSON:
        text = JsonFormatter().format(logging.LogRecord("asynctask.workers", level, __file__, 0, text, None, None))
    print(text, file=sys.stderr)


def _fail(message: str, code: int, log_format: str = TEXT) -> int:
    _say(f"asynctask-workers: {message}", log_format)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The console script.  Returns the exit code."""
    # imported here so that --help answers fast
    from asynctask.importing import add_working_directory  # noqa: PLC0415
    from asynctask.workers.child import configure_logging  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    # --require names modules of the project being run, as ``python -m`` would find them (children
    # started with spawn inherit sys.path)
    add_working_directory()
    level = getattr(logging, args.log_level.upper())
    # the children's too (format included): pika and psycopg2 silent below debug
    configure_logging(level, args.quiet, args.log_format)
    try:
        return _run(args, level)
    except TransportUnavailableError as exc:
        return _fail(f"transport unavailable: {exc}", EXIT_UNAVAILABLE, args.log_format)
    except ConfigurationError as exc:
        return _fail(exc.message, EXIT_USAGE, args.log_format)
    except AsyncTaskError as exc:
        return _fail(exc.message, EXIT_ERROR, args.log_format)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        logging.getLogger("asynctask.workers").exception("internal error")
        return EXIT_ERROR


def with_task_queues(settings: Settings) -> Settings:
    """With no ``asynctask_workers`` setting: the queues of the ``@task`` functions of the required
    modules, each consumed by the built-in ``tasks`` worker (the required modules are imported)."""
    from asynctask.config import WorkerEntry  # noqa: PLC0415
    from asynctask.importing import import_modules  # noqa: PLC0415
    from asynctask.tasks import task_queues  # noqa: PLC0415

    if settings.workers or not settings.require:
        return settings
    import_modules(list(settings.require))
    entries = tuple(WorkerEntry(queue, "tasks", source="@task functions") for queue in task_queues())
    return replace(settings, workers=entries) if entries else settings


def _run(args: argparse.Namespace, level: int) -> int:
    """Load the configuration and run the supervisor; errors are :func:`main`'s to report."""
    from asynctask.config import load_settings, parse_set_option, where_looked  # noqa: PLC0415
    from asynctask.workers.supervisor import Supervisor  # noqa: PLC0415

    overrides = [parse_set_option(text) for text in args.settings]
    settings = load_settings(args.config, overrides, require=args.require)
    if args.transport:
        settings = replace(settings, transport=args.transport)
    if args.heartbeat_s is not None:
        settings = replace(settings, heartbeat_s=args.heartbeat_s)
    settings = with_task_queues(settings)
    if not settings.workers and not settings.scheduled_only_workers():
        if not args.quiet:
            _say(f"No workers configured; terminating.\n{where_looked(settings)}", args.log_format, logging.INFO)
        return EXIT_OK
    supervisor = Supervisor(
        settings,
        halt_when_empty=args.halt_when_empty,
        scheduler=args.scheduler,
        metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
        log_level=level,
        quiet=args.quiet,
    )
    try:
        supervisor.probe()
    except TransportUnavailableError as exc:
        supervisor.transport.close()
        return _fail(f"transport unavailable: {exc}", EXIT_UNAVAILABLE, args.log_format)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
