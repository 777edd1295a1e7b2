"""Names, headers, URL options and small helpers of the AMQP transport (layout: see ``amqp.py``)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import ssl
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from asynctask.errors import TransportURLError
from asynctask.message import new_task_id
from asynctask.transports.base import ParsedURL, mask_url, option_positive_float, parse_url, take_options

#: Headers this transport writes.  ``asynctask-attempts`` is the number of deliveries the task had
#: before this copy was published (0 for a new task); a delivery's ``attempts`` is that plus one,
#: plus the broker's count of returns (``x-delivery-count`` on quorum queues, else 1 when the
#: ``redelivered`` flag is set).
HDR_ATTEMPTS = "asynctask-attempts"
HDR_ENQUEUED = "asynctask-enqueued-ms"  # epoch milliseconds, like every time header
HDR_DUE = "asynctask-due-ms"
HDR_REASON = "asynctask-reason"
HDR_DEAD_AT = "asynctask-dead-ms"
HDR_QUEUE = "asynctask-queue"

#: The largest TTL/expiry RabbitMQ takes (milliseconds, an unsigned 32-bit field).
MAX_TTL_MS = 2**32 - 1
#: Delay buckets never go past this (46 days); a longer delay is re-delayed when it comes out early.
MAX_DELAY_MS = 4_000_000_000
#: How many messages one confirmed publish batch holds.
PUBLISH_CHUNK = 2000
#: The ``x-delivery-limit`` of quorum work queues unless the URL says (option ``delivery_limit``).
DELIVERY_LIMIT = 20
#: RabbitMQ's ``consumer_timeout`` unless the URL says (option ``consumer_timeout_s``): 30 min.
CONSUMER_TIMEOUT_S = 1800.0

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
PERSISTENT = 2


def _not_a_missing_queue(record: logging.LogRecord) -> bool:
    """False for pika's warning about a 404 "no queue" channel close: the answer to a passive declare."""
    if not str(record.msg).startswith("Received remote Channel.Close"):
        return True
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        len(args) >= 2
        and isinstance(args[0], int)
        and args[0] == 404
        and str(args[1]).startswith("NOT_FOUND - no queue")
    )


# Here because every module of the AMQP transport imports this one: installed before any declare.
logging.getLogger("pika.channel").addFilter(_not_a_missing_queue)


def to_ms(epoch_s: float) -> int:
    """Epoch seconds as the integer milliseconds the time headers hold (AMQP tables have no float)."""
    return round(epoch_s * 1000)


def from_ms(value: object, default: float = 0.0) -> float:
    """Epoch seconds from a time header (default when missing or not a number)."""
    return value / 1000 if isinstance(value, int) and not isinstance(value, bool) else default


def enqueued_at(properties: Any) -> float:
    """When the task of a message was enqueued (or replayed): its header, else its timestamp."""
    return from_ms((properties.headers or {}).get(HDR_ENQUEUED), float(properties.timestamp or 0))


@dataclass(frozen=True)
class AmqpOptions:
    """The URL options, parsed (see the module docstring of ``amqp.py``)."""

    prefetch: int = 512
    heartbeat_s: int = 600
    queue_type: str = "classic"
    prefix: str = "asynctask"
    connect_timeout_s: float = 5.0
    lease_s: float | None = None
    delivery_limit: int = DELIVERY_LIMIT  # quorum queues only; 0: none declared
    consumer_timeout_s: float = CONSUMER_TIMEOUT_S  # the broker's; 0: it has none
    hosts: tuple[tuple[str, int], ...] = ()  # every host of the URL, in order (ports filled in)

    @property
    def max_lease_s(self) -> float:
        """The longest lease a delivery gets: below the broker's ``consumer_timeout`` by a margin (its
        check runs about once a minute), so that our lease runs out before the broker acts."""
        if not self.consumer_timeout_s:
            return math.inf
        return self.consumer_timeout_s - min(60.0, self.consumer_timeout_s / 10)


def _option_prefetch(name: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise TransportURLError(f"option {name}={value!r}: an integer from 1 to 65535 is allowed")
    return int(value)


def _option_heartbeat(name: str, value: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or number > 65535:
        raise TransportURLError(f"option {name}={value!r}: seconds from 0 (off) to 65535 are allowed")
    return math.ceil(number)


def _option_queue_type(name: str, value: str) -> str:
    if value not in ("classic", "quorum"):
        raise TransportURLError(f"option {name}={value!r}: 'classic' or 'quorum' is allowed")
    return value


def _option_prefix(name: str, value: str) -> str:
    if _PREFIX_RE.match(value) is None or value.lower().startswith("amq."):
        raise TransportURLError(
            f"option {name}={value!r}: 1 to 64 letters, digits and _ . : - (not starting with 'amq.') are allowed"
        )
    return value


def _option_delivery_limit(name: str, value: str) -> int:
    if not value.isdigit() or int(value) > 1_000_000:
        raise TransportURLError(f"option {name}={value!r}: an integer from 0 (none) to 1000000 is allowed")
    return int(value)


def _option_consumer_timeout(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not (number == 0 or number >= 10):
        raise TransportURLError(f"option {name}={value!r}: seconds >= 10 (the broker's consumer_timeout), or 0 (none)")
    return number


def _host_port(entry: str, masked: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` of a host list; the port checked."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or not host:
            raise TransportURLError(f"AMQP URL {masked!r}: host {entry!r} is malformed (an IPv6 host is [addr]:port)")
        port_text = rest[1:] if rest else ""
    else:
        host, colon, port_text = entry.partition(":")
        if not colon:
            port_text = ""
        elif not port_text:
            port_text = " "  # "host:" names no port: refused below
    if not host:
        raise TransportURLError(f"AMQP URL {masked!r}: host {entry!r} names no host name")
    if not port_text:
        return host.lower(), default_port
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TransportURLError(
            f"AMQP URL {masked!r}: port {port_text.strip()!r} of host {entry!r} is not a number from 1 to 65535"
        )
    return host.lower(), int(port_text)


def split_hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    """Every host of ``url`` with its port (``default_port`` when it names none): ``h1:5672,h2:5673``.

    Checked before :func:`parse_url` (which reads the same list) so that a refusal names the bad entry
    or port and what is allowed (the password masked).
    """
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return []
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    hostlist = rest[:end].rpartition("@")[2]
    if not hostlist:
        return []
    if "" in hostlist.split(","):
        raise TransportURLError(f"AMQP URL {mask_url(url)!r}: an empty entry in the host list {hostlist!r}")
    return [_host_port(entry, mask_url(url), default_port) for entry in hostlist.split(",")]


def parse_amqp_url(url: str) -> tuple[ParsedURL, AmqpOptions]:
    """Split and check an ``amqp://`` / ``amqps://`` URL; raises TransportURLError (password masked).

    ``parsed.host`` and ``port`` are the first host's; ``options.hosts`` lists every host of the URL
    with its port (the default one filled in).
    """
    hosts = split_hosts(url, 5671 if url[:8].lower() == "amqps://" else 5672)
    parsed = parse_url(url)
    if parsed.scheme not in ("amqp", "amqps"):
        raise TransportURLError(f"not an AMQP URL: {parsed.masked!r} (amqp:// or amqps:// is expected)")
    if not parsed.host or not hosts:
        raise TransportURLError(f"AMQP URL {parsed.masked!r} names no host")
    values = take_options(
        parsed,
        {
            "prefetch": _option_prefetch,
            "heartbeat_s": _option_heartbeat,
            "queue_type": _option_queue_type,
            "prefix": _option_prefix,
            "connect_timeout_s": option_positive_float,
            "lease_s": option_positive_float,
            "delivery_limit": _option_delivery_limit,
            "consumer_timeout_s": _option_consumer_timeout,
        },
    )
    options = AmqpOptions(**values, hosts=tuple(hosts))
    if "delivery_limit" in values and options.queue_type != "quorum":
        raise TransportURLError(
            f"option delivery_limit={parsed.options['delivery_limit']!r}: only with queue_type=quorum"
            " (classic queues have no delivery limit)"
        )
    if options.lease_s is not None and options.lease_s > options.max_lease_s:
        raise TransportURLError(
            f"option lease_s={parsed.options['lease_s']!r}: at most {options.max_lease_s:g} s is allowed, below the"
            f" broker's consumer_timeout (consumer_timeout_s={options.consumer_timeout_s:g}); raise both together"
        )
    return parsed, options


def connection_parameters(
    parsed: ParsedURL, options: AmqpOptions, host: tuple[str, int] | None = None
) -> pika.ConnectionParameters:
    """pika parameters for ``host`` of the URL (default: its first): vhost from the path (``/`` when
    empty; ``%2F`` is ``/``)."""
    tls = parsed.scheme == "amqps"
    vhost = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    name, port = host or (options.hosts[0] if options.hosts else (parsed.host or "", parsed.port or 0))
    ssl_options = None
    if tls:
        ssl_options = pika.SSLOptions(ssl.create_default_context(), server_hostname=name)
    return pika.ConnectionParameters(
        host=name,
        port=port or (5671 if tls else 5672),
        virtual_host=vhost or "/",
        credentials=pika.PlainCredentials(parsed.username or "guest", parsed.password or "guest"),
        heartbeat=options.heartbeat_s,
        connection_attempts=1,
        socket_timeout=options.connect_timeout_s,
        stack_timeout=options.connect_timeout_s * 2,
        blocked_connection_timeout=60,
        ssl_options=ssl_options,
        client_properties={"connection_name": "asynctask"},
        # The kernel notices a dead broker host even while the process is busy in a task.
        tcp_options={"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 6, "TCP_USER_TIMEOUT": 120_000},
    )


def delay_bucket_ms(delay_s: float) -> int:
    """The holding-queue TTL a delay goes to: milliseconds rounded UP to two significant digits.

    So a task is never visible early, and at most ~10% late (1234 ms -> 1300 ms, 0.2 s -> 200 ms,
    61 s -> 61000 ms, 3 h 25 min -> 12 300 000 ms); one queue serves every delay that rounds the same.
    """
    ms = max(1, math.ceil(delay_s * 1000))
    if ms >= 100:
        step = 10 ** (len(str(ms)) - 2)
        ms = -(-ms // step) * step
    return min(ms, MAX_DELAY_MS)


def claim_expiry_ms(ttl_ms: int) -> int:
    """``x-expires`` of a claim queue: a power-of-two number of seconds >= the TTL (>= 64 s)."""
    seconds = max(64, 2 ** math.ceil(math.log2(max(ttl_ms / 1000, 1))))
    return int(min(seconds * 1000, MAX_TTL_MS))


class Names:
    """Queue names for one ``prefix`` (see the module docstring of ``amqp.py``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.registry = f"{prefix}.registry"
        self.lock = f"{prefix}.lock"

    def work(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    def dead(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.dead"

    def delay(self, queue: str, ms: int) -> str:
        return f"{self.prefix}.{queue}.delay.{ms}"

    def claim(self, key: str) -> str:
        name = f"{self.prefix}.claim.{key}"
        if len(name.encode()) <= 255 and key.isprintable():
            return name
        return f"{self.prefix}.claim.sha1-{hashlib.sha1(key.encode()).hexdigest()}"


def describe(exc: BaseException) -> str:
    """One line for a pika exception (pika's own texts can be tuples or span lines)."""
    if isinstance(exc, pika.exceptions.ChannelClosed | pika.exceptions.ConnectionClosed):
        text = f"{exc.reply_code} {exc.reply_text}"
    elif isinstance(exc, OSError):
        text = str(exc)
    else:
        parts = []
        for part in exc.args:
            inner = getattr(part, "exception", None)  # pika wraps the socket error of a failed connect
            parts.append(describe(inner) if isinstance(inner, BaseException) else str(part) or repr(part))
        text = " ".join(parts) or type(exc).__name__
    return " ".join(text.split())[:300]


def task_properties(task_id: str, priority: int, attempts: int, enqueued: float, due: float) -> Any:
    """The properties of a task message: persistent, id, priority, the attempts and time headers."""
    headers: dict[str, Any] = {HDR_ATTEMPTS: attempts, HDR_ENQUEUED: to_ms(enqueued)}
    if due:
        headers[HDR_DUE] = to_ms(due)
    return pika.BasicProperties(
        delivery_mode=PERSISTENT,
        priority=priority,
        message_id=task_id,
        timestamp=int(enqueued),
        content_type="application/json",
        headers=headers,
    )


def dead_properties(task: Any, reason: str, attempts: int, dead_at: float, queue: str) -> Any:
    """The properties of a dead letter of the task whose message had properties ``task``: persistent,
    its id (a new one when it had none), priority and enqueue time, and the reason, attempts, time of
    death and queue."""
    headers: dict[str, Any] = {
        HDR_REASON: reason,
        HDR_ATTEMPTS: attempts,
        HDR_DEAD_AT: to_ms(dead_at),
        HDR_QUEUE: queue,
        HDR_ENQUEUED: to_ms(enqueued_at(task)),
    }
    return pika.BasicProperties(
        delivery_mode=PERSISTENT,
        message_id=task.message_id or new_task_id(),
        priority=task.priority or 0,
        timestamp=int(dead_at),
        headers=headers,
    )
