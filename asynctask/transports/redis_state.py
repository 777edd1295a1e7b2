"""The Redis transport's keyed state and cancel (:mod:`asynctask.transports.state`).

A record is a string key under its queue's hash tag, so a Redis Cluster keeps it in the queue's
slot::

    {<key_prefix>:<queue>}:s:<key>     string: the value (UTF-8 text), with the TTL as its expiry

Redis expires records on its own clock (SET ... PX), so :meth:`_state_sweep` has nothing to do and
a read never sees an expired record.  ``put`` is one SET (atomic: the old value or the new one),
``add`` one SET NX (``add_many`` one round trip of them), ``get_many`` one MGET, ``delete_many``
one DEL, ``keys`` a SCAN of the database with a MATCH pattern
under the queue's base (a full pass over the keyspace: meant for the occasional listing, not a hot
path).  ``cancel`` is the script ``redis_cancel.lua``.

Puts and reads go over the transport's own connection and are sent again when it broke (safe to
repeat).  ``add``, ``delete`` and ``cancel`` are not: their reply would lie the second time (an add
that took the key reported as lost), so a connection that breaks after sending raises
TransportUnavailableError instead.
"""

from __future__ import annotations

import math

from asynctask.transports.redis_connection import RedisConnection, load_script, pack
from asynctask.transports.state import KeyedState

#: The longest TTL sent to Redis (its limit is near 2**63 ms): about 31,700 years.
MAX_TTL_MS = 10**15
#: Most delayed tasks and expired leases a cancel first moves back to ready (as a fetch does).
CANCEL_PROMOTE_BOUND = 1000
#: Keys asked of each SCAN step.
SCAN_COUNT = 1000
_GLOB = {ord(c): "\\" + c for c in "*?[]\\"}


def _ttl_ms(ttl_s: float) -> int:
    return min(max(math.ceil(ttl_s * 1000), 1), MAX_TTL_MS)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class RedisKeyedState(KeyedState):
    """The ``_state_*`` and ``_cancel`` hooks of :class:`~asynctask.transports.redis.RedisTransport`,
    which provides ``_conn`` and ``_base``."""

    _conn: RedisConnection

    def _base(self, queue: str) -> bytes:
        raise NotImplementedError  # RedisTransport's

    def _state_key(self, queue: str, key: str) -> bytes:
        return self._base(queue) + b"s:" + key.encode()

    def _state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        self._conn.command(b"SET", self._state_key(queue, key), value, b"PX", _ttl_ms(ttl_s))

    def _state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        key_name = self._state_key(queue, key)
        return self._conn.command(b"SET", key_name, value, b"NX", b"PX", _ttl_ms(ttl_s), repeat=False) is not None

    def _state_add_many(self, queue: str, keys: list[str], value: str, ttl_s: float) -> list[bool]:
        # One round trip for the lot (AMQP's cancel keys of a fetched batch): SET NX of each.
        if not keys:
            return []
        ttl_ms = _ttl_ms(ttl_s)
        blob = b"".join(pack((b"SET", self._state_key(queue, key), value, b"NX", b"PX", ttl_ms)) for key in keys)
        return [reply is not None for reply in self._conn.send(blob, [None] * len(keys), repeat=False)]

    def _state_get(self, queue: str, key: str) -> str | None:
        return _text(self._conn.command(b"GET", self._state_key(queue, key)))

    def _state_get_many(self, queue: str, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        values = self._conn.command(b"MGET", *[self._state_key(queue, key) for key in keys])
        return [_text(value) for value in values]

    def _state_delete(self, queue: str, key: str) -> bool:
        return bool(self._conn.command(b"DEL", self._state_key(queue, key), repeat=False))

    def _state_delete_many(self, queue: str, keys: list[str]) -> None:
        if keys:  # one DEL: every key is under the queue's hash tag
            self._conn.command(b"DEL", *[self._state_key(queue, key) for key in keys], repeat=False)

    def _state_keys(self, queue: str, prefix: str) -> list[str]:
        head = self._base(queue) + b"s:"
        pattern = (head.decode() + prefix).translate(_GLOB).encode() + b"*"
        found: set[bytes] = set()  # SCAN may return a key twice
        cursor: bytes | int = 0
        while True:
            cursor, names = self._conn.execute("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
            found.update(names)
            if int(cursor) == 0:
                break
        return [name[len(head) :].decode() for name in found if name.startswith(head)]

    def _state_sweep(self) -> int:
        return 0  # Redis expires records itself

    def _cancel(self, queue: str, task_id: str) -> bool:
        script = load_script("cancel")
        return bool(self._conn.eval(script, self._base(queue), task_id, CANCEL_PROMOTE_BOUND, repeat=False))
