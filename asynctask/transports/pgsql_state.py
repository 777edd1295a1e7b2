"""Keyed state and cancel of the PostgreSQL transport (see :mod:`asynctask.transports.pgsql`).

Records are rows of ``state (queue, key, expires_at, value)``, primary key ``(queue, key)``, index
``state_expiry (expires_at)`` (schema version 2, ``pgsql_schema_2.sql``).  A record is live while
``expires_at > now()``, the server's clock; each hook is one statement of ``pgsql_queries.sql``:

* ``state_put``: ``INSERT ... ON CONFLICT DO UPDATE``, an atomic replace;
* ``state_add``: the same with ``... WHERE`` the row there has expired, ``RETURNING`` a row when it
  wrote: under READ COMMITTED the conflict arm checks the newest committed row, so of concurrent
  callers exactly one gets True;
* ``state_get``, ``state_get_many`` (one statement for all the keys), ``state_keys``: live rows only;
  ``state_delete`` removes the row, live or not, and says whether it was live;
* ``state_sweep`` deletes expired rows in batches of :data:`SWEEP_BATCH` (each statement short: the
  process shares one connection); one index probe when nothing expired.

``cancel`` is one ``DELETE`` of the task row when it has no receipt or its lease ran out (as
``purge``), found through the hash index ``tasks_id``; a fetch leasing it at the same moment wins
(the ``DELETE`` waits for the fetch's row lock, then re-checks the leased row and leaves it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from asynctask.transports.state import KeyedState

__all__ = ["HEX_ID_RE", "MAX_TTL_S", "SWEEP_BATCH", "PgsqlState"]

#: Task ids as ``new_task_id()`` makes them: only these can name a row (the rest fail the cast to uuid).
HEX_ID_RE = re.compile(r"[0-9a-f]{32}\Z")
#: Longer TTLs are cut to this (317 years): ``now() + ttl`` must stay an interval and a timestamptz.
MAX_TTL_S = 1e10
#: Expired rows deleted per statement by :meth:`PgsqlState._state_sweep`.
SWEEP_BATCH = 5000
_KEY_CHARS_RE = re.compile(r"[A-Za-z0-9_.:-]*\Z")


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("state value: PostgreSQL text cannot hold NUL characters (\\x00)")
    return value


class PgsqlState(KeyedState):
    """The ``_state_*`` and ``_cancel`` hooks on the tables of :class:`~asynctask.transports.pgsql.PgsqlTransport`."""

    if TYPE_CHECKING:

        def _run(self, name: str, *args: Any, rows: bool = False) -> Any: ...

    def _state_put(self, queue: str, key: str, value: str, ttl_s: float) -> None:
        self._run("state_put", queue, key, _storable(value), min(ttl_s, MAX_TTL_S))

    def _state_add(self, queue: str, key: str, value: str, ttl_s: float) -> bool:
        return bool(self._run("state_add", queue, key, _storable(value), min(ttl_s, MAX_TTL_S), rows=True))

    def _state_get(self, queue: str, key: str) -> str | None:
        rows = self._run("state_get", queue, key, rows=True)
        return rows[0][0] if rows else None

    def _state_get_many(self, queue: str, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        return [row[0] for row in self._run("state_get_many", queue, keys, rows=True)]

    def _state_delete(self, queue: str, key: str) -> bool:
        rows = self._run("state_delete", queue, key, rows=True)
        return bool(rows and rows[0][0])

    def _state_keys(self, queue: str, prefix: str) -> list[str]:
        if not _KEY_CHARS_RE.match(prefix):  # no key holds such a character
            return []
        return [row[0] for row in self._run("state_keys", queue, prefix, rows=True)]

    def _state_sweep(self) -> int:
        swept = 0
        while True:
            deleted = int(self._run("state_sweep", SWEEP_BATCH))
            swept += deleted
            if deleted < SWEEP_BATCH:
                return swept

    def _cancel(self, queue: str, task_id: str) -> bool:
        return HEX_ID_RE.match(task_id) is not None and self._run("cancel", queue, task_id) > 0
