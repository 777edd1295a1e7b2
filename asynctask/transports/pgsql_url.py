"""URLs of the PostgreSQL transport (see :mod:`asynctask.transports.pgsql`).

Forms: ``pgsql:dbname`` (libpq defaults and ``PGHOST``, ``PGPORT``, ``PGUSER``... for the rest) and
``pgsql://user:password@host:port/dbname`` (also ``postgresql://``, ``postgres://``).  The host part
may be a list, ``h1:5432,h2:5433`` (libpq tries them in order; with ``target_session_attrs`` it skips
those that do not fit), and a host may be a percent-quoted directory of a unix socket
(``postgresql://%2Fvar%2Frun%2Fpostgresql/test``).

Options: asynctask's own, ``schema``, ``lease_s``, ``connect_timeout`` (seconds, default 5; libpq
takes whole seconds, at least 1) and ``listen_url`` (a second URL, percent-quoted, for the LISTEN
connection: see the transport's docstring); and every connection keyword of libpq
(:data:`LIBPQ_KEYWORDS`, e.g. ``sslmode``, ``sslrootcert``, ``application_name``,
``target_session_attrs``, ``host=/path`` for a socket directory), passed to libpq as given.  A keyword
given in the query wins over the same part of the URL.  Unknown options are refused with the list of
allowed ones; so is a keyword the linked libpq does not know.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg2
import psycopg2.extensions

from asynctask.errors import TransportURLError
from asynctask.transports import base

__all__ = ["LIBPQ_KEYWORDS", "parse_pgsql_url"]

#: libpq's connection keywords (PostgreSQL 17 "Parameter Key Words"), but ``replication`` (the
#: transport's statements do not run on a replication connection).
LIBPQ_KEYWORDS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    }
)
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")
_SECRET_KEYWORDS = ("password", "sslpassword")


def _option_schema(name: str, value: str) -> str:
    if not _SCHEMA_RE.match(value):
        raise TransportURLError(f"option {name}={value!r}: 1 to 40 lowercase letters, digits and _, no digit first")
    return value


def _option_url(name: str, value: str) -> str:
    if not value.lower().startswith(("pgsql:", "postgresql:", "postgres:")):
        raise TransportURLError(f"option {name}: a pgsql://, postgresql:// or postgres:// URL is allowed")
    return value


_OWN_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "schema": _option_schema,
    "lease_s": base.option_positive_float,
    "connect_timeout": base.option_positive_float,
    "listen_url": _option_url,
}


def _hosts(netloc: str, masked: str) -> tuple[str | None, str | None]:
    """libpq's ``host`` and ``port`` for the host part of the URL: comma lists for several hosts."""
    hosts, ports = [], []
    for item in netloc.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise TransportURLError(f"invalid transport URL {masked!r}: port {port!r} of {host!r} is not 1-65535")
        hosts.append(unquote(host))
        ports.append(port)
    if not any(hosts) and not any(ports):
        return None, None
    return ",".join(hosts) or None, (",".join(ports) if len(set(ports)) > 1 else ports[0]) or None


def _described(dsn: dict[str, Any]) -> str:
    hosts = str(dsn.get("host") or os.environ.get("PGHOST") or "local socket").split(",")
    ports = str(dsn.get("port") or os.environ.get("PGPORT") or 5432).split(",")
    ports += [ports[-1] if len(ports) == 1 else "5432"] * (len(hosts) - len(ports))
    return ",".join(f"{h or 'local socket'}:{p or 5432}" for h, p in zip(hosts, ports, strict=False))


def masked(url: str) -> str:
    """``url`` with its passwords masked: the user's, and the values of password options."""
    shown = base.mask_url(url)
    for name in (*_SECRET_KEYWORDS, "listen_url"):
        shown = re.sub(rf"([?&]{name}=)[^&]*", r"\1***", shown)
    return shown


def parse_pgsql_url(url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Split a pgsql URL into psycopg2.connect keywords, asynctask's options (``schema``,
    ``lease_s``, ``connect_timeout``, ``listen_url``) and a description naming the hosts, ports and
    database (passwords masked) for messages."""
    shown = masked(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise TransportURLError(f"invalid transport URL {shown!r}: {exc}") from None
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in query:
            raise TransportURLError(f"invalid transport URL {shown!r}: option {name!r} is repeated")
        query[name] = value
    libpq = {name: query.pop(name) for name in list(query) if name in LIBPQ_KEYWORDS}
    parsed = base.ParsedURL(url, parts.scheme.lower(), None, None, None, None, "", query)
    try:
        options = base.take_options(parsed, _OWN_OPTIONS)
    except TransportURLError as exc:
        if not str(exc).startswith("unknown option"):
            raise
        unknown = next(name for name in query if name not in _OWN_OPTIONS)
        allowed = ", ".join(sorted({*_OWN_OPTIONS, *LIBPQ_KEYWORDS}))
        raise TransportURLError(
            f"unknown option {unknown!r} in transport URL {shown!r}; allowed options: {allowed}"
        ) from None
    userinfo, at, netloc = parts.netloc.rpartition("@")
    if not at:
        userinfo, netloc = "", parts.netloc
    user, colon, password = userinfo.partition(":")
    host, port = _hosts(netloc, shown) if netloc else (None, None)
    pgsql_colon = not netloc and not url.lower().startswith(f"{parsed.scheme}://")
    dsn: dict[str, Any] = {"dbname": unquote(parts.path if pgsql_colon else parts.path.lstrip("/"))}
    given = {"host": host, "port": int(port) if port and port.isdigit() else port}
    given |= {"user": unquote(user) or None, "password": unquote(password) if colon else None}
    dsn.update({key: value for key, value in given.items() if value is not None})
    dsn.update(libpq)
    if not dsn["dbname"]:
        raise TransportURLError(f"transport URL {shown!r} names no database")
    dsn["connect_timeout"] = max(1, round(options.get("connect_timeout", 5)))
    _check_with_libpq(dsn, shown)
    return dsn, options, f"PostgreSQL at {_described(dsn)}, database {dsn['dbname']!r} ({shown})"


def _check_with_libpq(dsn: dict[str, Any], shown: str) -> None:
    """Refuse keywords the linked libpq does not know (an older libpq than the list's)."""
    try:
        psycopg2.extensions.make_dsn(**dsn)
    except psycopg2.ProgrammingError as exc:
        raise TransportURLError(f"transport URL {shown!r}: libpq refuses it: {' '.join(str(exc).split())}") from None
