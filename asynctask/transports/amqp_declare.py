"""Queue declarations of the AMQP transport's connection (layout: see ``amqp.py``).

:class:`Declarations` is a part of :class:`~asynctask.transports.amqp_connection.AmqpConnection`
(its base): it declares work, dead and holding queues once per connection, registers new ones, and
on quorum queues adds the ``delivery_limit`` guard (``x-delivery-limit``, dead-lettering into the
dead queue), keeping a queue made without it as it is.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from asynctask.errors import TransportError
from asynctask.message import MAX_PRIORITY
from asynctask.transports.amqp_names import MAX_TTL_MS, PERSISTENT, AmqpOptions, Names, describe

logger = logging.getLogger(__name__)


class Declarations:
    """Declaring queues over the connection's publish and admin channels (used from one thread)."""

    if TYPE_CHECKING:  # what AmqpConnection provides
        options: AmqpOptions
        names: Names
        where: str
        _declared: dict[str, float]
        _pub: Any
        _admin: Any

        def admin_channel(self) -> Any: ...
        def passive(self, name: str) -> int | None: ...
        def publish_all(self, items: list[tuple[str, Any, bytes]]) -> None: ...

    def typed(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``arguments`` with the queue type of the ``queue_type`` option (changed in place)."""
        if self.options.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return arguments

    def work_arguments(self, queue: str) -> dict[str, Any]:
        """A work queue's arguments: classic with priorities; quorum (no priorities on RabbitMQ < 4.0)
        with the ``delivery_limit`` guard, dead-lettering at least once into the dead queue."""
        if self.options.queue_type != "quorum":
            return {"x-max-priority": MAX_PRIORITY}
        if not self.options.delivery_limit:
            return self.typed({})
        return self.typed(
            {
                "x-delivery-limit": self.options.delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.names.dead(queue),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",  # at-least-once needs it; no length limit, so no effect
            }
        )

    def ensure_work(self, queue: str) -> str:
        """Declare the work queue and its dead-letter queue; return the work queue's name."""
        name = self.names.work(queue)
        if name not in self._declared:
            self.declare(self.names.dead(queue), self.typed({}))
            arguments = self.work_arguments(queue)
            if "x-delivery-limit" in arguments and self.passive(name) is not None:
                self._declare_guarded(name, arguments)
            self.declare(name, arguments, register=f"queue\t{queue}")
        return name

    def _declare_guarded(self, name: str, arguments: dict[str, Any]) -> None:
        """Declare an existing quorum work queue on the admin channel first: one made without the
        delivery-limit guard (an earlier version, ``delivery_limit=0``) is refused with 406; it is
        then used as it is, with a warning (a policy can add the guard, see ``amqp.py``)."""
        try:
            self.admin_channel().queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._admin = None
            if exc.reply_code != 406:
                raise
            try:
                self.admin_channel().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                self._admin = None
                raise exc from None
            logger.warning(
                "quorum queue %s exists with other arguments than delivery_limit=%d asks (%s): used as it is,"
                " without the broker's delivery-limit guard (delete it when empty, or set a policy)",
                name,
                self.options.delivery_limit,
                describe(exc),
            )
            self._declared[name] = math.inf

    def ensure_delay(self, queue: str, ms: int) -> str:
        """Declare the holding queue for ``ms``: TTL ``ms``, dead-lettering into the work queue.

        It expires after ``2 * ms + 60 s`` unused and is declared again (which resets that) once
        ``ms + 30 s`` have passed since this instance last did, so a message published to it always
        has its full TTL before the queue can expire.
        """
        work = self.ensure_work(queue)
        name = self.names.delay(queue, ms)
        arguments: dict[str, Any] = {
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work,
            "x-expires": min(2 * ms + 60_000, MAX_TTL_MS),
        }
        if self.options.queue_type == "quorum":
            arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        self.declare(name, self.typed(arguments), register=f"delay\t{queue}\t{ms}", refresh_s=ms / 1000 + 30)
        return name

    def redeclare(self, name: str) -> None:
        """Declare queue ``name`` again after a publish to it came back unroutable."""
        prefix = self.names.prefix + "."
        rest = name[len(prefix) :] if name.startswith(prefix) else ""
        parts = rest.split(".")
        if len(parts) == 1 and parts[0]:
            self._declared.pop(name, None)
            self.ensure_work(parts[0])
        elif len(parts) == 2 and parts[1] == "dead":
            self.declare(name, self.typed({}))
        elif len(parts) == 3 and parts[1] == "delay" and parts[2].isdigit():
            self.ensure_delay(parts[0], int(parts[2]))
        elif name == self.names.registry:
            self.declare(name, {})
        else:
            raise TransportError(f"RabbitMQ at {self.where}: queue {name!r} does not exist")

    def forget(self, name: str) -> None:
        """Declare queue ``name`` again when next used (it was deleted)."""
        self._declared.pop(name, None)

    def declare(self, name: str, arguments: dict[str, Any], *, register: str = "", refresh_s: float = 0) -> None:
        """Declare durable queue ``name`` once per connection (again after ``refresh_s`` when > 0).

        When the queue did not exist before, ``register`` (if given) is added to the registry queue,
        so ``queues()`` and ``stats()`` can find it.
        """
        now = time.monotonic()
        seen = self._declared.get(name)
        if seen is not None and (refresh_s <= 0 or now - seen < refresh_s):
            return
        existed = True
        if register:
            existed = self.passive(name) is not None
        self._pub.queue_declare(name, durable=True, arguments=arguments)
        if not existed:
            self.declare(self.names.registry, {})
            self.publish_all([(self.names.registry, pika.BasicProperties(delivery_mode=PERSISTENT), register.encode())])
        self._declared[name] = now
