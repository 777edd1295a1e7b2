"""Transport lookup: a URL's scheme picks the transport class.

Built-in schemes (each class is imported only when its scheme is used, so a missing driver only
matters to its users):

=========================================  ===========================================
``memory://[name]``, ``localmem://``       :mod:`asynctask.transports.memory`
``filesys:/dir``, ``file:///dir``          :mod:`asynctask.transports.filesystem`
``redis://``, ``rediss://``, ``redis+unix://``  :mod:`asynctask.transports.redis`
``redis+cluster://``, ``redis+sentinel://``  :mod:`asynctask.transports.redis` (``rediss+cluster://``: TLS)
``pgsql:``, ``postgresql://``, ``postgres://``  :mod:`asynctask.transports.pgsql`
``amqp://``, ``amqps://``                  :mod:`asynctask.transports.amqp`
=========================================  ===========================================

Third-party packages add schemes through the entry-point group ``asynctask.transports``: the entry
point's name is the scheme, its value a ``Transport`` subclass.

With no URL, :func:`get_transport` uses the one :func:`asynctask.config.transport_choice` names:
``$ASYNCTASK_TRANSPORT``, then ``asynctask_transport`` from the config file (``$ASYNCTASK_CONFIG``
or ``./asynctask.yaml``), then the embedded default: the filesystem transport under
``$ASYNCTASK_HOME`` or ``~/.local/share/asynctask``.  The config file is read and checked as
``asynctask-workers`` reads it: a misspelled setting is a
:class:`~asynctask.errors.ConfigurationError`, never a silent fallback.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from importlib.metadata import entry_points

from asynctask.errors import ConfigurationError, TransportURLError, UnknownTransportError
from asynctask.transports.base import Transport, mask_url, parse_url

__all__ = [
    "Transport",
    "attach_state_store",
    "get_transport",
    "known_schemes",
    "quiet_drivers",
    "resolve_transport_url",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "asynctask.transports"

#: extra of the ``asynctask-jobs`` distribution -> the driver it installs
_EXTRA_DRIVERS = {"redis": "redis", "pgsql": "psycopg2-binary", "amqp": "pika"}

_MODULES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (module under asynctask.transports, class, extra that installs its driver, schemes)
    ("memory", "MemoryTransport", "", ("memory", "localmem")),
    ("filesystem", "FilesystemTransport", "", ("filesys", "file")),
    (
        "redis",
        "RedisTransport",
        "redis",
        ("redis", "rediss", "redis+unix", "redis+cluster", "rediss+cluster", "redis+sentinel"),
    ),
    ("pgsql", "PgsqlTransport", "pgsql", ("pgsql", "postgresql", "postgres")),
    ("amqp", "AmqpTransport", "amqp", ("amqp", "amqps")),
)
#: scheme -> (module, class, extra)
_BUILTIN: dict[str, tuple[str, str, str]] = {
    scheme: (f"asynctask.transports.{module}", cls, extra)
    for module, cls, extra, schemes in _MODULES
    for scheme in schemes
}

_logged_choice: set[str] = set()

#: Loggers of the drivers whose lines repeat what the transports report themselves (pika logs every
#: channel opened and closed at INFO, and a refused login as ERROR lines with a traceback).
DRIVER_LOGGERS = ("pika",)


def quiet_drivers(level: int) -> None:
    """Silence the drivers' own loggers unless ``level`` is DEBUG (a process's logging set-up calls it).

    Every driver error reaches the user through the transport, translated into one line of ours;
    at DEBUG the drivers speak again, for the full story.
    """
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.CRITICAL)


def _plugin_schemes() -> dict[str, object]:
    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    """Every scheme a URL may use here: built-in and installed through entry points."""
    return sorted(set(_BUILTIN) | set(_plugin_schemes()))


def resolve_transport_url(url: str | None = None) -> str:
    """The URL :func:`get_transport` would use: ``url``, else :func:`asynctask.config.transport_choice`'s.

    The chosen URL is logged once per process (password masked) with where it came from.
    """
    if url:
        return url
    # asynctask.config imports this package (asynctask.transports.base): imported when first needed
    from asynctask.config import transport_choice  # noqa: PLC0415

    url, source = transport_choice()
    if url not in _logged_choice:
        _logged_choice.add(url)
        logger.info("using transport %s (from %s)", mask_url(url), source)
    return url


def transport_class(scheme: str, url: str = "") -> type[Transport]:
    """The class for ``scheme``.  Raises UnknownTransportError with the known schemes and a suggestion."""
    scheme = scheme.lower()
    builtin = _BUILTIN.get(scheme)
    if builtin is not None:
        module_name, class_name, extra = builtin
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" (pip install {_EXTRA_DRIVERS[extra]}, or the {extra!r} extra of asynctask-jobs)" if extra else ""
            raise ConfigurationError(f"the {scheme}:// transport cannot be loaded: {exc}{hint}") from None
        cls: type[Transport] = getattr(module, class_name)
        return cls
    plugin = _plugin_schemes().get(scheme)
    if plugin is not None:
        loaded = plugin.load()  # type: ignore[attr-defined]
        if not (isinstance(loaded, type) and issubclass(loaded, Transport)):
            raise ConfigurationError(
                f"entry point {scheme!r} in group {ENTRY_POINT_GROUP!r} is not a Transport subclass"
            )
        return loaded
    known = known_schemes()
    near = difflib.get_close_matches(scheme, known, n=1)
    suggestion = f"; did you mean {near[0]!r}?" if near else ""
    where = f" in {mask_url(url)!r}" if url else ""
    raise UnknownTransportError(
        f"unknown transport scheme {scheme!r}{where}; known schemes: {', '.join(known)}{suggestion}"
    )


def get_transport(url: str | None = None) -> Transport:
    """Open the transport for ``url`` (resolved as the module docstring says when None, with the
    configured ``asynctask_state_store`` attached, or the eager transport under ``asynctask_eager``:
    :mod:`asynctask.producer`).

    Raises :class:`TransportURLError` for a malformed URL or unknown option,
    :class:`UnknownTransportError` for an unknown scheme, and
    :class:`~asynctask.errors.TransportUnavailableError` when a server transport cannot connect.
    Passwords never appear in the messages.
    """
    if url is None:
        # the configured transport with its state store, or eager mode (asynctask.producer)
        from asynctask.producer import open_default_transport  # noqa: PLC0415 - it imports this module

        return open_default_transport()
    resolved = resolve_transport_url(url)
    parsed = parse_url(resolved)
    if not parsed.scheme:
        raise TransportURLError(
            f"transport URL {mask_url(resolved)!r} has no scheme; known schemes: {', '.join(known_schemes())}"
        )
    return transport_class(parsed.scheme, resolved)(resolved)


def attach_state_store(transport: Transport, url: str | None) -> Transport:
    """Give ``transport`` the state store named by ``url`` (``asynctask_state_store``) unless it is
    None or names the transport's own URL; returns ``transport``."""
    if url and url != transport.url:
        transport.state_store = get_transport(url)
    return transport
