"""Transport URLs: parsing, option parsers and masking the password for display.

Re-exported by :mod:`asynctask.transports.base`, where transports and tools have always found them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from asynctask.errors import TransportURLError


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for reprs, logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***@"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=userinfo + host))


@dataclass(frozen=True)
class ParsedURL:
    """A transport URL split into parts; ``options`` are the query parameters."""

    url: str = field(repr=False)
    scheme: str
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    path: str
    options: dict[str, str]
    #: Every ``(host, port)`` of a host list (``h1:p1,h2:p2``) in order; one entry otherwise (empty
    #: when the URL names no host).  ``host`` and ``port`` are the first's.
    hosts: tuple[tuple[str, int | None], ...] = ()

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"ParsedURL({self.masked!r})"


def parse_url(url: str) -> ParsedURL:
    """Split a transport URL.  Raises :class:`TransportURLError` (password masked) when malformed."""
    try:
        parts = urlsplit(url)
        userinfo, at, hostlist = parts.netloc.rpartition("@")
        hosts = [_host_port(piece) for piece in hostlist.split(",")] if "," in hostlist else []
        if hosts:  # parse the rest with the first host alone
            parts = parts._replace(netloc=userinfo + at + hostlist.split(",", 1)[0])
        port = parts.port
    except ValueError as exc:
        raise TransportURLError(f"invalid transport URL {mask_url(url)!r}: {exc}") from None
    if not hosts and parts.hostname:
        hosts = [(parts.hostname, port)]
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise TransportURLError(f"invalid transport URL {mask_url(url)!r}: option {name!r} is repeated")
        options[name] = value
    return ParsedURL(
        url=url,
        scheme=parts.scheme.lower(),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        path=unquote(parts.path),
        options=options,
        hosts=tuple(hosts),
    )


def _host_port(piece: str) -> tuple[str, int | None]:
    """One ``host[:port]`` of a host list (``[v6]:port`` too); ValueError when malformed."""
    parts = urlsplit("//" + piece)
    if not parts.hostname or parts.netloc != piece:
        raise ValueError(f"host list item {piece!r} is not host[:port]")
    return parts.hostname, parts.port


def option_positive_float(name: str, value: str) -> float:
    """Parse a URL option that must be a finite number > 0 (seconds)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise TransportURLError(f"option {name}={value!r}: a number of seconds > 0 is allowed")
    return number


def option_bool(name: str, value: str) -> bool:
    """Parse a URL option that is a flag: 1/0, true/false, yes/no, on/off."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise TransportURLError(f"option {name}={value!r}: one of 1, 0, true, false, yes, no is allowed")


def take_options(parsed: ParsedURL, parsers: dict[str, Callable[[str, str], Any]]) -> dict[str, Any]:
    """Parse ``parsed.options`` with one parser per allowed option name.

    Raises :class:`TransportURLError` naming the unknown option and the allowed ones.
    """
    result: dict[str, Any] = {}
    for name, value in parsed.options.items():
        parser = parsers.get(name)
        if parser is None:
            allowed = ", ".join(sorted(parsers)) or "none"
            raise TransportURLError(
                f"unknown option {name!r} in transport URL {parsed.masked!r}; allowed options: {allowed}"
            )
        result[name] = parser(name, value)
    return result


def quote_path(text: str) -> str:
    """Percent-quote ``text`` for use in a URL path."""
    return quote(text, safe="/")
