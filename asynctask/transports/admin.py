"""The administration half of a transport built by composition (filesystem, AMQP).

Such a transport holds an object that inspects and administers its store (:class:`Administration`:
``FileAdmin``, ``AmqpAdmin``) in its ``admin`` attribute; :class:`AdminHooks` answers the
administration hooks of :class:`~asynctask.transports.base.Transport` with it, so that no transport
writes the same seven forwarding methods again.  The hooks' arguments arrive checked by the
public methods of ``Transport``; their contracts are the docstrings there.
"""

from __future__ import annotations

from typing import Protocol

from asynctask.message import DeadTask, QueueStats

__all__ = ["AdminHooks", "Administration"]


class Administration(Protocol):
    """Inspection and administration of one store, arguments already checked."""

    def stats(self, queue: str) -> QueueStats: ...

    def queues(self) -> list[str]: ...

    def purge(self, queue: str) -> int: ...

    def dead_tasks(self, queue: str, limit: int) -> list[DeadTask]: ...

    def replay_dead(self, queue: str, ids: list[str] | None) -> int: ...

    def purge_dead(self, queue: str, ids: list[str] | None) -> int: ...

    def claim_once(self, key: str, ttl_s: float) -> bool: ...


class AdminHooks:
    """Mixin (listed before ``Transport``): the administration hooks, answered by ``self.admin``."""

    admin: Administration

    def _stats(self, queue: str) -> QueueStats:
        return self.admin.stats(queue)

    def _queues(self) -> list[str]:
        return self.admin.queues()

    def _purge(self, queue: str) -> int:
        return self.admin.purge(queue)

    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        return self.admin.dead_tasks(queue, limit)

    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        return self.admin.replay_dead(queue, ids)

    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        return self.admin.purge_dead(queue, ids)

    def _claim_once(self, key: str, ttl_s: float) -> bool:
        return self.admin.claim_once(key, ttl_s)
