"""``asynctask dashboard``: serve the web dashboard (:mod:`asynctask.dashboard`) on this transport.

Usage::

    asynctask dashboard [--port 8181] [--bind 127.0.0.1] [--auth USER:PASSWORD] [--read-only]
                        [--sample-s 5]

Needs the ``dashboard`` extra (Starlette, uvicorn, Jinja2); without it the command says so in one
line (exit 2).  Binding to an address other than loopback without ``--auth`` is refused before
anything is opened (exit 2); ``--auth`` may also come from ``$ASYNCTASK_DASHBOARD_AUTH``, which keeps
the password out of the process list.  A port that cannot be listened on is one line, exit 2.
The command serves until SIGINT (Ctrl-C) or SIGTERM, finishes the requests in progress, and ends
as the signal asks (130, 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from asynctask.errors import AsyncTaskError, ConfigurationError
from asynctask.transports.base import Transport

from .admin_output import CommandError
from .admin_settings import AdminSettings
from .exit_codes import EXIT_OK, EXIT_USAGE

__all__ = ["AUTH_ENV", "add_arguments", "check_options", "cmd_dashboard"]

logger = logging.getLogger(__name__)

#: the environment variable ``--auth`` falls back to
AUTH_ENV = "ASYNCTASK_DASHBOARD_AUTH"
DEFAULT_PORT = 8181
DEFAULT_BIND = "127.0.0.1"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: a whole number from 0 to 65535 is allowed")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"invalid --sample-s {text!r}: seconds from 0.1 to 3600 are allowed")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``asynctask dashboard``."""
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ADDRESS",
        help=f"address to listen on (default {DEFAULT_BIND}; other than loopback needs --auth)",
    )
    parser.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help=f"require these HTTP Basic credentials on every request (default: ${AUTH_ENV})",
    )
    parser.add_argument("--read-only", action="store_true", help="show, never change: no buttons, every POST 403")
    parser.add_argument(
        "--sample-s", type=_seconds, default=5.0, metavar="N", help="seconds between the chart's samples (default 5)"
    )


def check_options(args: argparse.Namespace) -> None:
    """Check ``--auth`` and ``--bind`` before anything is opened (CommandError, exit 2)."""
    from asynctask.dashboard.security import check_bind, parse_auth  # noqa: PLC0415 - no extra needed here

    auth = args.auth if args.auth is not None else os.environ.get(AUTH_ENV) or None
    try:
        args.credentials = parse_auth(auth) if auth is not None else None
        check_bind(args.bind, args.credentials)
    except ConfigurationError as exc:
        raise CommandError(exc.message, EXIT_USAGE) from None


def _listen(host: str, port: int, shown: str) -> socket.socket:
    """A listening socket on ``host``:``port`` (CommandError, exit 2, naming why it cannot be)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CommandError(f"--bind {shown}: cannot listen there: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}", EXIT_USAGE) from None
    sock.set_inheritable(True)
    return sock


def cmd_dashboard(resolved: AdminSettings, transport: Transport, args: argparse.Namespace) -> int:
    """Serve the dashboard on ``transport`` until interrupted."""
    if not hasattr(args, "credentials"):
        check_options(args)
    try:
        import uvicorn  # noqa: PLC0415 - the dashboard extra

        from asynctask.dashboard.app import create_app  # noqa: PLC0415
    except ImportError as exc:
        raise CommandError(
            f"asynctask dashboard needs the dashboard extra ({exc.name} is missing):"
            " pip install 'asynctask-jobs[dashboard]'",
            EXIT_USAGE,
        ) from None
    settings = resolved.settings
    entries = None
    if settings is not None:
        from .admin_schedules import schedule_entries  # noqa: PLC0415 - imports the scheduler

        try:
            entries = schedule_entries(settings)
        except AsyncTaskError as exc:
            logger.warning("dashboard: the schedules cannot be shown: %s", exc.message)
    app = create_app(
        transport,
        transport_url=resolved.transport_url,
        settings=settings,
        schedule_entries=entries,
        credentials=args.credentials,
        read_only=args.read_only,
        sample_s=args.sample_s,
    )
    host = args.bind.strip().strip("[]")
    shown = f"[{host}]" if ":" in host else host
    sock = _listen(host, args.port, shown)
    port = sock.getsockname()[1]
    sys.stderr.write(
        f"asynctask dashboard: serving http://{shown}:{port}/"
        + (" (read-only)" if args.read_only else "")
        + (" (HTTP Basic auth)" if args.credentials else "")
        + "\n"
    )
    sys.stderr.flush()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK
