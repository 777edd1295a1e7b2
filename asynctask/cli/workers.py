"""``asynctask-workers``: parse the command line, load the configuration, run the supervisor.

Exit codes are :mod:`asynctask.workers.supervisor`'s ``EXIT_*`` constants: 0 clean (halted, or
stopped by a signal with every task finished; also "no workers configured"), 1 internal error,
2 bad usage or configuration, 3 transport unreachable at start, 4 shutdown forced (second signal
or end of the grace period).  Errors the user can fix print one line on stderr, no traceback.

Modules named by ``--require`` / ``asynctask_require`` are imported with the current directory on
``sys.path`` (as ``python -m`` does); the worker children inherit that path.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from asynctask.errors import AsyncTaskError, ConfigurationError, TransportUnavailableError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynctask-workers",
        description="Run the configured asynctask workers (asynctask_workers) under a supervisor.",
        epilog="exit codes: 0 clean, 1 internal error, 2 bad usage or configuration,"
        " 3 transport unreachable at start, 4 shutdown forced (workers killed)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing (not even errors of tasks)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="YAML configuration file (repeatable, merged in order;"
                        " default $ASYNCTASK_CONFIG or ./asynctask.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                        help="set a setting; VALUE is YAML (repeatable)")
    parser.add_argument("--require", action="append", default=[], metavar="MODULE",
                        help="import MODULE so its workers register (repeatable)")
    parser.add_argument("--transport", metavar="URL", help="transport URL (overrides the configuration)")
    parser.add_argument("--scheduler", action="store_true", help="also run the cron scheduler")
    parser.add_argument("--halt-when-empty", action="store_true", help="exit once every queue is empty")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on PORT")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"asynctask-workers: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The console script.  Returns the exit code."""
    # imported here so that --help answers fast
    from asynctask.config import load_settings, parse_set_option  # noqa: PLC0415
    from asynctask.workers.child import configure_logging  # noqa: PLC0415
    from asynctask.workers.supervisor import (  # noqa: PLC0415
        EXIT_ERROR,
        EXIT_OK,
        EXIT_UNAVAILABLE,
        EXIT_USAGE,
        Supervisor,
    )

    args = build_parser().parse_args(argv)
    # --require names modules of the project being run, as ``python -m`` would find them (children
    # started with spawn inherit sys.path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    level = getattr(logging, args.log_level)
    configure_logging(level, args.quiet)
    log = logging.getLogger("asynctask.workers")
    try:
        overrides = [parse_set_option(text) for text in args.settings]
        settings = load_settings(args.config, overrides, require=args.require)
        if args.transport:
            settings = replace(settings, transport=args.transport)
        if not settings.workers and not settings.scheduled_only_workers():
            if not args.quiet:
                print("No workers configured; terminating.", file=sys.stderr)
            return EXIT_OK
        supervisor = Supervisor(
            settings,
            halt_when_empty=args.halt_when_empty,
            scheduler=args.scheduler,
            metrics_port=args.metrics_port,
            log_level=level,
            quiet=args.quiet,
        )
        try:
            supervisor.probe()
        except TransportUnavailableError as exc:
            supervisor.transport.close()
            return _fail(f"transport unavailable: {exc}", EXIT_UNAVAILABLE)
        return supervisor.run()
    except TransportUnavailableError as exc:
        return _fail(f"transport unavailable: {exc}", EXIT_UNAVAILABLE)
    except ConfigurationError as exc:
        return _fail(exc.message, EXIT_USAGE)
    except AsyncTaskError as exc:
        return _fail(exc.message, EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("internal error")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
