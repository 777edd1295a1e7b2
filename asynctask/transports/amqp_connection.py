"""Connection (to one host of the URL's list at a time), channels and confirmed publishing for the
AMQP transport; queue declarations are its base :class:`~asynctask.transports.amqp_declare.Declarations`.

Read :mod:`asynctask.transports.amqp` first: its docstring states the URL, the options and every
queue declared.  :class:`AmqpConnection` is what the transport (``amqp.py``), its consumers
(``amqp_consumer.py``) and its administration (``amqp_admin.py``) share: one ``BlockingConnection``
with three kinds of channels, used from ONE thread.

* one *consume* channel per queue fetched from (opened by ``amqp.py``), each with its own
  ``basic.qos`` and consumer; delivery tags are only valid while their channel is open, and a
  reconnect forgets every delivery, so receipts of older deliveries stop being current;
* the *publish* channel, in confirm mode.  Confirms are tracked here rather than through
  ``BlockingChannel.basic_publish`` (which waits for one confirm per message): a batch is written
  in one go and then the confirms for all of it are awaited, so ``submit_tasks`` costs one round
  trip per batch.  Every publish is ``mandatory``: a message the broker cannot route (its queue was
  deleted meanwhile) comes back, the queue is declared again and the message published again;
* the *admin* channel: passive declares (a missing queue closes the channel with 404, so never on
  the other two), purges, deletes, claim queues.

Any pika error on the connection or on the consume/publish channel drops the whole connection
(the broker then gives every unacked delivery back) and is raised as
:class:`~asynctask.errors.TransportUnavailableError` (connection-level) or ``TransportError``; the
next call connects again, trying the URL's hosts from the one after the lost one (``hosts``,
``where``: the one connected to; ``server``: what that broker said of itself).  A refused login
or an unknown or forbidden vhost is also ``TransportUnavailableError`` (as on Redis and PostgreSQL:
``asynctask-workers`` exits 3), its message naming the user, host and vhost with the password
masked; it is not tried on the other hosts (the same on every node of a cluster).

pika logs the broker's 404 answer to a passive declare (how :meth:`AmqpConnection.passive` learns that a
queue does not exist yet) as a warning; ``amqp_names`` drops that one line, being no problem.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions

from asynctask.errors import TransportError, TransportUnavailableError
from asynctask.transports.amqp_declare import Declarations
from asynctask.transports.amqp_names import (
    PUBLISH_CHUNK,
    Names,
    connection_parameters,
    describe,
    parse_amqp_url,
)

logger = logging.getLogger(__name__)


#: Frames waiting to be written are joined into buffers of about this size (see ``_coalesce_output``).
COALESCE_BYTES = 64 * 1024


class _HostDownError(Exception):
    """One host of the URL did not answer (the connect loop tries the next)."""


#: Per host list: the index of the host a new connection of this process tries first (the one last
#: connected to, or the one after a lost one), so that a transport made again after an outage (the
#: worker's reopen) does not wait on a dead host first.
_FIRST_HOST: dict[tuple[str, ...], int] = {}


class AmqpConnection(Declarations):
    """The connection of one AMQP transport: channels, declarations, confirmed publishing.

    Connects when made (raising ``TransportUnavailableError`` when it cannot) and again in
    :meth:`guard` after a loss.  ``conn`` is the pika connection (None while there is none),
    ``generation`` counts connections made (a receipt names the one it came from), and
    ``on_lost`` is called whenever the connection is dropped, so that whoever holds deliveries
    of it forgets them (their tags died with it).  Used from one thread.
    """

    def __init__(self, url: str) -> None:
        parsed, self.options = parse_amqp_url(url)
        self._params_list = [connection_parameters(parsed, self.options, host) for host in self.options.hosts]
        self.hosts = [f"[{p.host}]:{p.port}" if ":" in p.host else f"{p.host}:{p.port}" for p in self._params_list]
        self._index = _FIRST_HOST.get(tuple(self.hosts), 0) % len(self.hosts)  # of the host connected to
        self.where = self.hosts[self._index]
        self.server: dict[str, str] = {}  # what the broker connected to says of itself
        self._masked = parsed.masked
        self.names = Names(self.options.prefix)
        self.conn: Any = None
        self._pub: Any = None
        self._admin: Any = None
        self.generation = 0
        self.on_lost: Callable[[], None] = lambda: None
        self._declared: dict[str, float] = {}
        self._unconfirmed: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._nacked: list[int] = []
        self._returned: list[tuple[str, Any, bytes]] = []
        self._pub_seq = 0
        self._outage = False
        self._connect()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        """Connect to the first host that answers, starting from ``_index`` (the host after the one
        lost, see :meth:`_lost`), going round the URL's list once.  A refused login or vhost is the
        same on every node of a cluster: raised at once."""
        failures: list[str] = []
        for step in range(len(self._params_list)):
            index = (self._index + step) % len(self._params_list)
            try:
                self._open(index)
            except _HostDownError as down:
                failures.append(f"{self.hosts[index]}: {down}")
                logger.debug("RabbitMQ at %s does not answer: %s", self.hosts[index], down)
                continue
            _FIRST_HOST[tuple(self.hosts)] = index
            if failures:
                logger.warning("connected to RabbitMQ at %s; not answering: %s", self.where, "; ".join(failures))
            return
        if len(failures) == 1:
            where, _, reason = failures[0].partition(": ")
            raise TransportUnavailableError(f"cannot connect to RabbitMQ at {where} ({self._masked}): {reason}")
        raise TransportUnavailableError(
            f"cannot connect to RabbitMQ at any of {', '.join(self.hosts)} ({self._masked}): {'; '.join(failures)}"
        )

    def _open(self, index: int) -> None:
        """Connect to host ``index`` of the URL and open the publish channel; raise _HostDownError when
        it does not answer."""
        params, where = self._params_list[index], self.hosts[index]
        try:
            conn = pika.BlockingConnection(params)
        except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as exc:
            raise TransportUnavailableError(
                f"RabbitMQ at {where} refused the login of user {params.credentials.username!r}"
                f" ({self._masked}): {describe(exc)}"
            ) from None
        except pika.exceptions.ProbableAccessDeniedError as exc:
            raise TransportUnavailableError(
                f"RabbitMQ at {where} denied access to vhost {params.virtual_host!r} ({self._masked}): {describe(exc)}"
            ) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise _HostDownError(describe(exc)) from None
        try:
            pub = conn.channel()
            done: list[bool] = []
            pub._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: done.append(True))
            pub._impl.add_on_return_callback(self._on_return)
            pub._flush_output(lambda: bool(done))
        except (pika.exceptions.AMQPError, OSError) as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise _HostDownError(f"cannot open channels: {describe(exc)}") from None
        self.conn, self._pub, self._admin = conn, pub, None
        self._unconfirmed.clear()
        self._pub_seq = 0
        self.generation += 1
        before, self._index, self.where = self.where, index, where
        properties = getattr(conn._impl, "server_properties", None) or {}
        self.server = {
            key: value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            for key, value in properties.items()
            if key in ("cluster_name", "product", "version")
        }
        if self._outage:
            moved = f" (instead of {before})" if before != where else ""
            logger.warning("reconnected to RabbitMQ at %s%s", self.where, moved)
            self._outage = False

    def ensure(self) -> None:
        """Connect when there is no open connection.  An open one is first asked for what the
        broker sent (a close, EOF, heartbeats): a connection the broker dropped while this
        instance was idle is replaced before it is used, instead of failing the call."""
        if self.conn is not None and self.conn.is_open and self._has_input():
            try:
                self.conn.process_data_events(time_limit=0)
            except (pika.exceptions.AMQPError, OSError, AssertionError) as exc:
                self._lost(exc)
        if self.conn is None or not self.conn.is_open:
            if self.conn is not None:
                self._lost(None)
            self._connect()

    def _has_input(self) -> bool:
        """Whether the broker sent anything not yet read (a close, EOF, heartbeats, deliveries).

        One ``poll`` system call instead of a ``process_data_events`` pass (a pika timer and an ioloop
        turn, ~0.1 ms): it runs before every publish, so before the message leaves.  True when the
        socket cannot be inspected (then the caller lets pika look), or TLS holds decrypted bytes.
        """
        sock = getattr(getattr(self.conn._impl, "_transport", None), "_sock", None)
        if sock is None:
            return True
        try:
            pending = getattr(sock, "pending", None)  # ssl.SSLSocket: bytes already decrypted
            if pending is not None and pending():
                return True
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):  # closed or detached socket: let pika find out
            return True

    def _lost(self, exc: BaseException | None) -> None:
        """Forget the connection (closing it gives unacked deliveries back); log once per outage."""
        if not self._outage:
            logger.warning(
                "lost the connection to RabbitMQ at %s: %s; reconnecting on the next call",
                self.where,
                describe(exc) if exc is not None else "connection closed",
            )
            self._outage = True
        conn, self.conn, self._pub, self._admin = self.conn, None, None, None
        if conn is not None:  # the next connect tries the next host first (this one last)
            self._index = (self._index + 1) % len(self._params_list)
            _FIRST_HOST[tuple(self.hosts)] = self._index
        self._declared.clear()
        self.on_lost()
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def guard(self, reconnect: bool = True) -> Iterator[None]:
        """Connect if needed; translate pika errors, dropping the connection on any of them.

        AssertionError is caught too: pika asserts on its own state when a channel died under it.
        """
        if reconnect:
            self.ensure()
        try:
            yield
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._lost(exc)
            raise TransportError(f"RabbitMQ at {self.where} closed a channel: {describe(exc)}") from None
        except pika.exceptions.ConnectionClosedByBroker as exc:
            self._lost(exc)
            raise TransportUnavailableError(
                f"RabbitMQ at {self.where} closed the connection: {describe(exc)}"
            ) from None
        except (pika.exceptions.AMQPError, OSError, AssertionError) as exc:
            self._lost(exc)
            raise TransportUnavailableError(
                f"lost the connection to RabbitMQ at {self.where}: {describe(exc)}"
            ) from None

    def drop(self) -> None:
        """Forget the connection without closing it (its holder closed it, or gave up on it)."""
        self.conn = self._pub = self._admin = None

    def admin_channel(self) -> Any:
        """The channel for commands the broker may answer by closing it (passive declares, purges)."""
        if self._admin is None or not self._admin.is_open:
            self._admin = self.conn.channel()
        return self._admin

    def passive(self, name: str) -> int | None:
        """Ready-message count of queue ``name``; None when it does not exist."""
        try:
            return int(self.admin_channel().queue_declare(name, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._admin = None
            if exc.reply_code == 404:
                return None
            raise

    # -- publishing with confirms -----------------------------------------------------------------

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        if method.multiple:
            while self._unconfirmed:
                first = next(iter(self._unconfirmed))
                if first > tag:
                    break
                self._unconfirmed.popitem(last=False)
                if nack:
                    self._nacked.append(first)
        elif tag in self._unconfirmed:
            del self._unconfirmed[tag]
            if nack:
                self._nacked.append(tag)

    def _on_return(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._returned.append((method.routing_key, properties, body))

    def _coalesce_output(self) -> None:
        """Join the frames waiting to be written into one buffer, so they leave in one ``send``.

        pika writes each frame (three per message: method, header, body) with its own ``send``: with
        TCP_NODELAY that is a packet, a system call and a broker wake-up per frame (and ~20 % of
        ``submit_tasks`` throughput).  Only the buffering is changed (same bytes, same order); without
        the expected pika internals nothing is.
        """
        buffers = getattr(getattr(self.conn._impl, "_transport", None), "_tx_buffers", None)
        if not isinstance(buffers, collections.deque) or len(buffers) < 2:
            return
        joined: list[bytes] = []
        part: list[bytes] = []
        size = 0
        for frame in buffers:
            part.append(frame)
            size += len(frame)
            if size >= COALESCE_BYTES:  # bounded: a partial send copies the rest of its buffer
                joined.append(b"".join(part))
                part, size = [], 0
        if part:
            joined.append(b"".join(part))
        buffers.clear()
        buffers.extend(joined)

    def publish(self, items: list[tuple[str, Any, bytes]], *, retry_unroutable: bool = True) -> list[int]:
        """Publish ``(queue, properties, body)`` persistently and wait for every confirm.

        Returns the indexes of ``items`` the broker nacked (a full ``reject-publish`` queue).
        A returned (unroutable) message means its queue went away: it is declared again (through
        :meth:`redeclare`) and the message published once more.
        """
        nacked: list[int] = []
        for start in range(0, len(items), PUBLISH_CHUNK):
            chunk = items[start : start + PUBLISH_CHUNK]
            impl = self._pub._impl
            first_seq = self._pub_seq + 1
            for routing_key, properties, body in chunk:
                impl.basic_publish("", routing_key, body, properties, mandatory=True)
                self._pub_seq += 1
                self._unconfirmed[self._pub_seq] = None
            self._nacked, self._returned = [], []
            self._coalesce_output()
            self._pub._flush_output(lambda: not self._unconfirmed)
            nacked += [start + seq - first_seq for seq in self._nacked]
            returned, self._returned = self._returned, []
            if returned:
                if not retry_unroutable:
                    raise TransportError(f"RabbitMQ at {self.where} could not route to {returned[0][0]!r}")
                for routing_key in {r[0] for r in returned}:
                    self._declared.pop(routing_key, None)
                    self.redeclare(routing_key)
                again = self.publish([(rk, props, body) for rk, props, body in returned], retry_unroutable=False)
                if again:
                    raise TransportError(f"RabbitMQ at {self.where} refused a message to {returned[again[0]][0]!r}")
        return nacked

    def publish_all(self, items: list[tuple[str, Any, bytes]]) -> None:
        """:meth:`publish`, raising TransportError when the broker refused any message."""
        nacked = self.publish(items)
        if nacked:
            raise TransportError(
                f"RabbitMQ at {self.where} refused {len(nacked)} of {len(items)} messages to {items[nacked[0]][0]!r}"
            )
