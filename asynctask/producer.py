"""What a producer reads and opens: the transport, its state store and eager mode, from one place.

:func:`producer_settings` reads the environment, then ``$ASYNCTASK_CONFIG`` or ``./asynctask.yaml``,
exactly where :func:`~asynctask.transports.get_transport` reads its URL; a web process needs no
wiring beyond that.  :func:`open_default_transport` is what ``get_transport()`` (no URL) returns:
the configured transport with ``asynctask_state_store`` attached, or, with ``asynctask_eager``, the
in-process :class:`~asynctask.eager.EagerTransport`.  :func:`producer_transport` keeps one per
thread for ``@task`` submits (reopened when the settings it came from change).
"""

from __future__ import annotations

import os
import threading

from asynctask.config import Settings, load_settings
from asynctask.middleware import load_middleware
from asynctask.transports import attach_state_store, get_transport, resolve_transport_url
from asynctask.transports.base import Transport

__all__ = ["open_default_transport", "producer_settings", "producer_transport"]

_local = threading.local()
_WATCHED = ("ASYNCTASK_TRANSPORT", "ASYNCTASK_STATE_STORE", "ASYNCTASK_EAGER", "ASYNCTASK_CONFIG", "ASYNCTASK_HOME")


def producer_settings() -> Settings:
    """The settings a producer uses (see the module docstring); ConfigurationError when the file is bad."""
    return load_settings()


def open_default_transport(settings: Settings | None = None) -> Transport:
    """The transport ``get_transport()`` opens: see the module docstring."""
    settings = settings or producer_settings()
    if settings.eager:
        from asynctask.eager import EagerTransport  # noqa: PLC0415 - eager imports the workers

        eager = EagerTransport(settings)
        eager.middleware = load_middleware(settings.middleware)
        return eager
    transport = attach_state_store(get_transport(resolve_transport_url(settings.transport)), settings.state_store)
    transport.middleware = load_middleware(settings.middleware)
    return transport


def producer_transport() -> Transport:
    """This thread's producer transport, opened by :func:`open_default_transport` on first use and
    again when the environment or working directory it was opened under changed."""
    key = (os.getcwd(), *(os.environ.get(name) for name in _WATCHED))
    cached = getattr(_local, "cached", None)
    if cached is not None and cached[0] == key:
        transport: Transport = cached[1]
        return transport
    if cached is not None:
        cached[1].close()
    transport = open_default_transport()
    _local.cached = (key, transport)
    return transport
