"""The transport contract, written as docstrings, and the helpers every transport shares.

A transport stores tasks on named queues and hands them out under a lease.  Subclasses implement
the underscored hooks (``_submit``, ``_get_tasks``) and the abstract public methods; the public
``submit_*`` / ``get_*`` methods here validate arguments first, so a bad queue name or payload raises
before anything is stored, on every transport alike.

Guarantees every transport gives (the contract suite in ``tests/transports`` checks each):

* Delivery is at least once.  A task taken and neither acked, nacked nor dead-lettered before its
  lease runs out is delivered again, with ``attempts`` raised by one.
* Order: highest priority first, then oldest first (FIFO within a priority).
* A delivery is named by its ``Task.receipt``.  ``ack``/``nack``/``dead``/``extend`` of a delivery
  whose lease was lost are no-ops (``extend`` returns False): they never touch a later delivery.
* Delays, retries and dead letters live in the store, never in a process's memory.
* A stored body that does not decode is moved to the dead-letter store with a reason by the fetch
  that met it; the fetch goes on to the next task.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from asynctask.errors import TransportURLError
from asynctask.task import (
    DeadTask,
    QueueStats,
    Task,
    encode_payload,
    validate_delay,
    validate_priority,
    validate_queue_name,
)

logger = logging.getLogger(__name__)

#: The lease a fetch takes when neither the call nor the URL (``lease_s=``) names one.
DEFAULT_LEASE_S = 30.0
#: Most tasks one ``get_tasks`` call may ask for.
MAX_BATCH = 1000


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for reprs, logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***@"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=userinfo + host))


@dataclass(frozen=True)
class ParsedURL:
    """A transport URL split into parts; ``options`` are the query parameters."""

    url: str = field(repr=False)
    scheme: str
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    path: str
    options: dict[str, str]

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"ParsedURL({self.masked!r})"


def parse_url(url: str) -> ParsedURL:
    """Split a transport URL.  Raises :class:`TransportURLError` (password masked) when malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransportURLError(f"invalid transport URL {mask_url(url)!r}: {exc}") from None
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise TransportURLError(f"invalid transport URL {mask_url(url)!r}: option {name!r} is repeated")
        options[name] = value
    return ParsedURL(
        url=url,
        scheme=parts.scheme.lower(),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        path=unquote(parts.path),
        options=options,
    )


def option_positive_float(name: str, value: str) -> float:
    """Parse a URL option that must be a finite number > 0 (seconds)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise TransportURLError(f"option {name}={value!r}: a number of seconds > 0 is allowed")
    return number


def option_bool(name: str, value: str) -> bool:
    """Parse a URL option that is a flag: 1/0, true/false, yes/no, on/off."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise TransportURLError(f"option {name}={value!r}: one of 1, 0, true, false, yes, no is allowed")


def take_options(
    parsed: ParsedURL, parsers: dict[str, Callable[[str, str], Any]]
) -> dict[str, Any]:
    """Parse ``parsed.options`` with one parser per allowed option name.

    Raises :class:`TransportURLError` naming the unknown option and the allowed ones.
    """
    result: dict[str, Any] = {}
    for name, value in parsed.options.items():
        parser = parsers.get(name)
        if parser is None:
            allowed = ", ".join(sorted(parsers)) or "none"
            raise TransportURLError(
                f"unknown option {name!r} in transport URL {parsed.masked!r}; allowed options: {allowed}"
            )
        result[name] = parser(name, value)
    return result


def quote_path(text: str) -> str:
    """Percent-quote ``text`` for use in a URL path."""
    return quote(text, safe="/")


class Transport(abc.ABC):
    """Where tasks wait: the contract every transport keeps.

    Instances are safe to use from several threads of one process unless a transport's docstring
    says otherwise; a forked child must open its own (``get_transport(url)`` again).  Server errors
    are raised as :class:`~asynctask.errors.TransportError` (``TransportUnavailableError`` when the
    server cannot be reached); argument errors as ``QueueNameError`` / ``PayloadError`` before
    anything is stored.
    """

    #: URL schemes this class handles; the first is its canonical name.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when a Task (with its receipt) may be acked, nacked or dead-lettered through another
    #: instance or process than the one that fetched it (the supervisor does this for a child that
    #: died).  False where a delivery belongs to a connection (AMQP): there the server gives the
    #: task back itself when the dead process's connection closes.
    portable_receipts: ClassVar[bool] = True
    #: How long a worker may hold finished tasks' acks to send them together: the longest a done
    #: task can be re-delivered after a crash or a server restart, traded against a round trip per
    #: task.  (AMQP: 1 ms, as its ack is a frame without a round trip.)
    ack_window_s: ClassVar[float] = 0.02

    def __init__(self, url: str) -> None:
        self.url = url
        self.lease_s = DEFAULT_LEASE_S

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    # -- producing ---------------------------------------------------------------------------

    def submit_task(
        self, queue: str, payload: dict[str, Any] | None = None, *, delay_s: float = 0, priority: int = 0
    ) -> str:
        """Store one task durably and return its id.

        Visible to consumers after ``delay_s`` seconds; ``priority`` 0..9, higher first.  Raises
        ``QueueNameError`` / ``PayloadError`` (nothing stored) for bad arguments.
        """
        return self.submit_tasks(queue, [payload], delay_s=delay_s, priority=priority)[0]

    def submit_tasks(
        self,
        queue: str,
        payloads: Iterable[dict[str, Any] | None],
        *,
        delay_s: float = 0,
        priority: int = 0,
    ) -> list[str]:
        """Store many tasks in as few round trips as the server allows; return their ids in order.

        Every payload is validated before any is stored: one bad payload stores none.
        """
        validate_queue_name(queue)
        delay = validate_delay(delay_s)
        validate_priority(priority)
        bodies = [encode_payload(payload) for payload in payloads]
        if not bodies:
            return []
        return self._submit(queue, bodies, delay, priority)

    @abc.abstractmethod
    def _submit(self, queue: str, bodies: list[str], delay_s: float, priority: int) -> list[str]:
        """Store already-validated JSON bodies; return the new task ids in order."""

    # -- consuming ---------------------------------------------------------------------------

    def get_task(self, queue: str, *, timeout_s: float = 0, lease_s: float | None = None) -> Task | None:
        """Reserve the next ready task for ``lease_s`` seconds (the transport's default when None).

        Waits up to ``timeout_s`` for one to come, without busy polling; returns None when none came.
        """
        tasks = self.get_tasks(queue, 1, timeout_s=timeout_s, lease_s=lease_s)
        return tasks[0] if tasks else None

    def get_tasks(
        self, queue: str, max_count: int, *, timeout_s: float = 0, lease_s: float | None = None
    ) -> list[Task]:
        """Reserve up to ``max_count`` ready tasks in one round trip, highest priority then oldest.

        Returns as soon as at least one task is ready (it does not wait to fill the batch); waits up
        to ``timeout_s`` when none is; returns ``[]`` when none came.
        """
        validate_queue_name(queue)
        if isinstance(max_count, bool) or not isinstance(max_count, int) or not 1 <= max_count <= MAX_BATCH:
            raise ValueError(f"max_count={max_count!r}: an integer from 1 to {MAX_BATCH} is allowed")
        timeout = validate_delay(timeout_s)
        lease = self.lease_s if lease_s is None else float(lease_s)
        if not math.isfinite(lease) or lease <= 0:
            raise ValueError(f"lease_s={lease_s!r}: a number of seconds > 0 is allowed")
        return self._get_tasks(queue, max_count, timeout, lease)

    @abc.abstractmethod
    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        """Reserve tasks (arguments already validated)."""

    @abc.abstractmethod
    def ack(self, task: Task) -> None:
        """Done: remove the task for good.  A no-op when this delivery's lease was already lost."""

    def ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack many tasks, in as few round trips as the server allows."""
        for task in tasks:
            self.ack(task)

    @abc.abstractmethod
    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        """Give the task back, ready again after ``delay_s``.

        With ``count_attempt=False`` (a task fetched but never started, e.g. at shutdown) the next
        delivery's ``attempts`` is this one's again instead of one more.  A no-op when this
        delivery's lease was already lost.
        """

    @abc.abstractmethod
    def extend(self, task: Task, lease_s: float) -> bool:
        """Keep the lease for ``lease_s`` seconds from now; False when it was already lost."""

    @abc.abstractmethod
    def dead(self, task: Task, reason: str) -> None:
        """Move the task to its queue's dead-letter store with ``reason``, its attempts and the time.

        A no-op when this delivery's lease was already lost.
        """

    # -- inspecting and administering ---------------------------------------------------------

    def poll_queue(self, queue: str) -> int:
        """How many tasks are ready now (rex.asynctask's name)."""
        return self.stats(queue).ready

    @abc.abstractmethod
    def stats(self, queue: str) -> QueueStats:
        """Counts of ready, delayed, in-flight and dead tasks of ``queue``."""

    @abc.abstractmethod
    def queues(self) -> list[str]:
        """Sorted names of the queues this store knows (any that holds or held a task)."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Drop the ready and delayed tasks of ``queue`` (not in-flight, not dead); return how many."""

    @abc.abstractmethod
    def dead_tasks(self, queue: str, limit: int = 100) -> list[DeadTask]:
        """Up to ``limit`` dead tasks of ``queue``, oldest death first."""

    @abc.abstractmethod
    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Give dead tasks (all, or those named by ``ids``) back to ``queue`` as new; return how many.

        A replayed task's next delivery has ``attempts`` 1.
        """

    @abc.abstractmethod
    def purge_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead tasks (all, or those named by ``ids``) for good; return how many."""

    @abc.abstractmethod
    def claim_once(self, key: str, ttl_s: float) -> bool:
        """True for exactly one caller per ``key`` until ``ttl_s`` seconds have passed."""

    def close(self) -> None:  # noqa: B027 - transports without resources need not override it
        """Release connections and files.  Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def validate_claim(key: object, ttl_s: object) -> tuple[str, float]:
    """Check ``claim_once`` arguments: a non-empty key of at most 200 characters, ttl > 0."""
    if not isinstance(key, str) or not key or len(key) > 200:
        raise ValueError(f"claim key {key!r}: a non-empty string of at most 200 characters is allowed")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s={ttl_s!r}: a number of seconds > 0 is allowed")
    return key, float(ttl_s)


def dead_reason_for_undecodable(exc: Exception) -> str:
    """The dead-letter reason recorded for a body that does not decode."""
    return f"undecodable task body: {exc}"


class Backoff:
    """Sleep in growing steps until a deadline: waiting without spinning a core.

    ``wait()`` returns False once the deadline has passed.  Steps start at ``first_s`` and double up
    to ``max_s``, so a task that arrives just after a check waits at most ``max_s``.
    """

    def __init__(self, timeout_s: float, *, first_s: float = 0.001, max_s: float = 0.05) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.step_s = first_s
        self.max_s = max_s

    def wait(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(self.step_s, remaining))
        self.step_s = min(self.step_s * 2, self.max_s)
        return True
