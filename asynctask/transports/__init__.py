"""Transport lookup: a URL's scheme picks the transport class.

Built-in schemes (each class is imported only when its scheme is used, so a missing driver only
matters to its users):

=========================================  ===========================================
``memory://[name]``, ``localmem://``       :mod:`asynctask.transports.memory`
``filesys:/dir``, ``file:///dir``          :mod:`asynctask.transports.filesystem`
``redis://``, ``rediss://``, ``redis+unix://``  :mod:`asynctask.transports.redis`
``pgsql:``, ``postgresql://``, ``postgres://``  :mod:`asynctask.transports.pgsql`
``amqp://``, ``amqps://``                  :mod:`asynctask.transports.amqp`
=========================================  ===========================================

Third-party packages add schemes through the entry-point group ``asynctask.transports``: the entry
point's name is the scheme, its value a ``Transport`` subclass.

With no URL, :func:`get_transport` uses ``$ASYNCTASK_TRANSPORT``, then ``asynctask_transport`` from
the config file (``$ASYNCTASK_CONFIG`` or ``./asynctask.yaml``), then the embedded default: the
filesystem transport under ``$ASYNCTASK_HOME`` or ``~/.local/share/asynctask``.  The config file is
read and checked by :func:`asynctask.config.configured_transport`, as ``asynctask-workers`` reads it:
a misspelled setting is a :class:`~asynctask.errors.ConfigurationError`, never a silent fallback.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path

from asynctask.errors import ConfigurationError, TransportURLError, UnknownTransportError
from asynctask.transports.base import Transport, mask_url, parse_url

__all__ = ["Transport", "get_transport", "known_schemes", "quiet_drivers", "resolve_transport_url"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "asynctask.transports"

#: extra of the ``asynctask-jobs`` distribution -> the driver it installs
_EXTRA_DRIVERS = {"redis": "redis", "pgsql": "psycopg2-binary", "amqp": "pika"}

_BUILTIN: dict[str, tuple[str, str, str]] = {
    # scheme: (module, class, extra that installs its driver)
    "memory": ("asynctask.transports.memory", "MemoryTransport", ""),
    "localmem": ("asynctask.transports.memory", "MemoryTransport", ""),
    "filesys": ("asynctask.transports.filesystem", "FilesystemTransport", ""),
    "file": ("asynctask.transports.filesystem", "FilesystemTransport", ""),
    "redis": ("asynctask.transports.redis", "RedisTransport", "redis"),
    "rediss": ("asynctask.transports.redis", "RedisTransport", "redis"),
    "redis+unix": ("asynctask.transports.redis", "RedisTransport", "redis"),
    "pgsql": ("asynctask.transports.pgsql", "PgsqlTransport", "pgsql"),
    "postgresql": ("asynctask.transports.pgsql", "PgsqlTransport", "pgsql"),
    "postgres": ("asynctask.transports.pgsql", "PgsqlTransport", "pgsql"),
    "amqp": ("asynctask.transports.amqp", "AmqpTransport", "amqp"),
    "amqps": ("asynctask.transports.amqp", "AmqpTransport", "amqp"),
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


def default_home() -> Path:
    """Where the embedded default keeps its queues: ``$ASYNCTASK_HOME`` or ``~/.local/share/asynctask``."""
    home = os.environ.get("ASYNCTASK_HOME")
    return Path(home) if home else Path.home() / ".local" / "share" / "asynctask"


def _config_file_url() -> tuple[str, str] | None:
    # asynctask.config imports this package (default_home): imported when first needed
    from asynctask.config import configured_transport  # noqa: PLC0415

    return configured_transport()


def resolve_transport_url(url: str | None = None) -> str:
    """The URL :func:`get_transport` would use for ``url`` (see the module docstring for the order)."""
    if url:
        return url
    source: str
    env_url = os.environ.get("ASYNCTASK_TRANSPORT")
    if env_url:
        url, source = env_url, "ASYNCTASK_TRANSPORT"
    elif (found := _config_file_url()) is not None:
        url, source = found[0], found[1]
    else:
        url, source = "filesys:" + str(default_home()), "the embedded default"
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
            raise ConfigurationError(
                f"the {scheme}:// transport cannot be loaded: {exc}{hint}"
            ) from None
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
    """Open the transport for ``url`` (resolved as the module docstring says when None).

    Raises :class:`TransportURLError` for a malformed URL or unknown option,
    :class:`UnknownTransportError` for an unknown scheme, and
    :class:`~asynctask.errors.TransportUnavailableError` when a server transport cannot connect.
    Passwords never appear in the messages.
    """
    resolved = resolve_transport_url(url)
    parsed = parse_url(resolved)
    if not parsed.scheme:
        raise TransportURLError(
            f"transport URL {mask_url(resolved)!r} has no scheme; known schemes: {', '.join(known_schemes())}"
        )
    return transport_class(parsed.scheme, resolved)(resolved)
