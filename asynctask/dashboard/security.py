"""The dashboard's guards: where it may listen, HTTP Basic credentials, the CSRF token, read-only.

* :func:`check_bind`: an address other than loopback (``127.0.0.0/8``, ``::1``, ``localhost``)
  needs credentials (``--auth``); without them the command refuses to start.
* :class:`Guard` is an ASGI middleware in front of every route, static files included:

  - without credentials, a request whose ``Host`` is not a loopback name gets 403 (a page of
    another site rebinding its name to 127.0.0.1 cannot read the dashboard or its CSRF token);
  - with credentials, a request without valid HTTP Basic credentials gets 401 (user and password
    compared with :func:`hmac.compare_digest`);
  - a request that changes something is a POST, and a POST gets 403 unless it carries the
    process's CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``), or always in
    read-only mode; any other method than GET, HEAD and POST gets 405;
  - every answer forbids framing and foreign scripts (``X-Frame-Options``,
    ``Content-Security-Policy``).

The CSRF token is random per process (:func:`secrets.token_urlsafe`), embedded in every page; a
page of another site cannot read it, so it cannot make the browser post on the user's behalf.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from asynctask.errors import ConfigurationError

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Credentials",
    "Guard",
    "check_bind",
    "is_loopback",
    "new_csrf_token",
    "parse_auth",
]

logger = logging.getLogger(__name__)

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
#: the largest form body read when looking for the CSRF token field
MAX_FORM_BYTES = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Credentials:
    """The one user and password ``--auth USER:PASSWORD`` allows (repr hides the password)."""

    user: str
    password: str = field(repr=False)

    def match(self, header: str | None) -> bool:
        """True when ``header`` (an ``Authorization`` value) holds exactly these Basic credentials."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both comparisons always run, so the time taken does not tell which one failed.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and user_ok and password_ok


def parse_auth(text: str) -> Credentials:
    """``USER:PASSWORD`` (the password may contain ``:``); ConfigurationError naming what is wrong."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("--auth: USER:PASSWORD is allowed, both non-empty (got no ':' or an empty part)")
    return Credentials(user, password)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (brackets allowed)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, credentials: Credentials | None) -> None:
    """Refuse (ConfigurationError) to listen on a non-loopback ``host`` without credentials."""
    if not host.strip():
        raise ConfigurationError("--bind: an address is needed (e.g. 127.0.0.1)")
    if credentials is None and not is_loopback(host):
        raise ConfigurationError(
            f"--bind {host}: refusing to serve the dashboard beyond this machine without --auth USER:PASSWORD"
            " (loopback needs none: 127.0.0.1, ::1, localhost)"
        )


class Guard:
    """ASGI middleware: Basic auth (when ``credentials``), CSRF on POST, 403 on POST when ``read_only``."""

    def __init__(
        self, app: ASGIApp, *, csrf_token: str, credentials: Credentials | None = None, read_only: bool = False
    ) -> None:
        self.app = app
        self.csrf_token = csrf_token
        self.credentials = credentials
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope["method"], headers)
        if refusal is None and scope["method"] == "POST":
            body, receive = await _buffer(receive)
            if not self._token_ok(headers, body):
                logger.warning("refused a POST to %s without a valid CSRF token", scope.get("path"))
                refusal = (403, "missing or wrong CSRF token: reload the page and try again", {})
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """Why a request is refused before its body is read (status, message, headers), or None."""
        if self.credentials is None and not is_loopback(_host_name(headers.get("host", ""))):
            # Without credentials only this machine may ask, by a loopback name: a page of another
            # site whose name was made to resolve to 127.0.0.1 (DNS rebinding) is not answered.
            return 403, "this dashboard answers requests to a loopback host name only (no --auth)", {}
        if self.credentials is not None and not self.credentials.match(headers.get("authorization")):
            return 401, "authentication required", {"www-authenticate": 'Basic realm="asynctask"'}
        if method not in ("GET", "HEAD", "POST"):
            return 405, f"method {method} not allowed: GET to read, POST to change", {"allow": "GET, POST"}
        if method == "POST" and self.read_only:
            return 403, "read-only dashboard: nothing can be changed (started with --read-only)", {}
        return None

    def _token_ok(self, headers: dict[str, str], body: bytes) -> bool:
        given = headers.get(CSRF_HEADER)
        if given is None and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            values = parse_qs(body.decode("latin-1")).get(CSRF_FIELD)
            given = values[0] if values else None
        return given is not None and hmac.compare_digest(given.encode("latin-1"), self.csrf_token.encode("latin-1"))


def new_csrf_token() -> str:
    """A fresh random token (one per dashboard process)."""
    return secrets.token_urlsafe(32)


async def _buffer(receive: Receive) -> tuple[bytes, Receive]:
    """Read the request body (at most MAX_FORM_BYTES) and a ``receive`` that replays it to the app."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_FORM_BYTES:
            chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


#: headers every answer carries: no framing (clickjacking of the buttons), nothing but this origin's
#: scripts and styles, no type sniffing, no Referer to other sites
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def _with_headers(send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return sender


def _host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8181`` -> ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _answer(send: Send, status: int, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.encode(), value.encode()) for key, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
