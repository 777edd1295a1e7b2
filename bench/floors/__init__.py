"""Floors: the bare storage loop a transport is compared with, one module per transport.

The bench looks a floor up by the transport's module name: the URL's scheme picks the transport class
(``asynctask.transports.get_transport``'s table, aliases included), and ``bench/floors/<name>.py``
with ``<name>`` the last part of that class's module (``filesystem``, ``redis``, ``pgsql``, ``amqp``)
provides it.  A transport with no floor module prints "no floor".

The interface each floor module implements (a class named ``Floor``)::

    class Floor:
        def __init__(self, url: str) -> None:
            '''Connect to what ``url`` names (same server/directory and options as the transport).
            Use a private namespace (a temporary directory, a key prefix, a scratch table or queue)
            and never touch the transport's own data.'''

        def submit(self, n: int) -> float:
            '''Seconds to store n items one at a time, each durable the way the transport's single
            submit_task is (one round trip / one write+rename each).  Cleans its items up afterwards,
            outside the timed part.'''

        def submit_batch(self, n: int, batch: int) -> float:
            '''Seconds to store n items in batches of ``batch`` (pipelines, multi-row inserts,
            one publish per item with one confirm per batch...); cleans up as submit does.'''

        def fill(self, n: int) -> None:
            '''Add n items for drain() to take (untimed).  May be called again to top the backlog up.'''

        def drain(self, n: int) -> float:
            '''Seconds to take out, read and delete n items put by fill(), oldest first where the
            store orders them, one consumer, the way the transport's get_tasks(..., 100) + ack_tasks
            loop does (for the filesystem: rename, read, unlink each).  n <= the items filled and not
            yet drained; the rest stays for later calls.'''

        def close(self) -> None:
            '''Remove everything the floor created and release connections.  Idempotent.'''

Payloads: floors store the bytes of :data:`BODY` (the same JSON the bench submits through the
transport), so item sizes match.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

#: The payload the bench submits, and its stored form for floors.
PAYLOAD: dict[str, Any] = {"kind": "bench", "n": 12345, "text": "x" * 100}
BODY = b'{"kind":"bench","n":12345,"text":"' + b"x" * 100 + b'"}'


class FloorProtocol(Protocol):
    def submit(self, n: int) -> float: ...
    def submit_batch(self, n: int, batch: int) -> float: ...
    def fill(self, n: int) -> None: ...
    def drain(self, n: int) -> float: ...
    def close(self) -> None: ...


def floor_name(url: str) -> str:
    """The floor module name for ``url``: the last part of its transport class's module."""
    from asynctask.transports import transport_class
    from asynctask.transports.base import parse_url

    return transport_class(parse_url(url).scheme, url).__module__.rsplit(".", 1)[-1]


def load_floor(url: str) -> FloorProtocol | None:
    """A Floor for ``url``, or None when ``bench/floors/<name>.py`` does not exist."""
    name = floor_name(url)
    try:
        module = importlib.import_module(f"bench.floors.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.floors.{name}":
            return None
        raise
    floor: FloorProtocol = module.Floor(url)
    return floor
