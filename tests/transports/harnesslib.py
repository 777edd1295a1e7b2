"""The Harness type the ``harness_<name>.py`` modules build (see conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from asynctask.transports.base import Transport


@dataclass
class Harness:
    """One transport under test.

    ``url`` opens another transport on the same store (in this process or, when ``cross_process``,
    in another); ``inject_garbage(queue)`` stores a task whose body does not decode, the way a bad
    producer or a corrupted store would.
    """

    name: str
    url: str
    transport: Transport
    cross_process: bool
    inject_garbage: Callable[[str], None]

    def open(self) -> Transport:
        from asynctask.transports import get_transport

        return get_transport(self.url)


def default_inject_garbage(transport: Transport) -> Callable[[str], None]:
    """Store an undecodable body through the transport's own store hook, skipping validation."""

    def inject(queue: str) -> None:
        transport._submit(queue, ["{this is not json"], 0.0, 0)

    return inject
