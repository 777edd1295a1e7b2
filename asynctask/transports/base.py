"""The transport contract, written as docstrings, and the helpers every transport shares.

A transport stores tasks on named queues and hands them out under a lease.  :class:`Transport`
owns every public method: each checks its arguments once (:mod:`asynctask.transports.checks`), so
a bad argument raises the same error with the same message on every transport and before anything
is stored or sent, then calls one protected hook (``_submit``, ``_get_tasks``, ``_ack``, ``_nack``,
``_extend``, ``_dead``, ``_stats``, ``_queues``, ``_purge``, ``_dead_tasks``, ``_replay_dead``,
``_purge_dead``, ``_claim_once``; ``_ack_tasks`` optionally; the keyed state's ``_state_*`` and
``_cancel``: :mod:`asynctask.transports.state`) that a transport implements with its
arguments already checked.  A new transport is one module implementing the hooks plus one
``tests/transports/harness_<name>.py``.

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
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from asynctask.message import (
    DeadTask,
    QueueStats,
    Task,
    encode_body,
    encode_payload,
    validate_delay,
    validate_queue_name,
)
from asynctask.transports.checks import (
    MAX_BATCH,
    prepare_submit,
    validate_claim,
    validate_flag,
    validate_ids,
    validate_lease,
    validate_limit,
    validate_max_count,
    validate_reason,
    validate_submit_options,
    validate_task,
    validate_tasks,
)
from asynctask.transports.state import KeyedState
from asynctask.transports.transfer import Transfer
from asynctask.transports.urls import (
    ParsedURL,
    mask_url,
    option_bool,
    option_positive_float,
    parse_url,
    quote_path,
    take_options,
)

if TYPE_CHECKING:
    from asynctask.middleware import MiddlewareChain

__all__ = [
    "DEFAULT_LEASE_S",
    "MAX_BATCH",
    "Backoff",
    "ParsedURL",
    "Transport",
    "dead_reason_for_undecodable",
    "mask_url",
    "option_bool",
    "option_positive_float",
    "parse_url",
    "prepare_submit",
    "quote_path",
    "take_options",
    "validate_claim",
]

logger = logging.getLogger(__name__)

#: The lease a fetch takes when neither the call nor the URL (``lease_s=``) names one.
DEFAULT_LEASE_S = 30.0


class Transport(KeyedState, Transfer, abc.ABC):
    """Where tasks wait: the contract every transport keeps.

    Instances are safe to use from several threads of one process unless a transport's docstring
    says otherwise; a forked child must open its own (``get_transport(url)`` again).  Server errors
    are raised as :class:`~asynctask.errors.TransportError` (``TransportUnavailableError`` when the
    server cannot be reached).  Argument errors are raised before anything is stored or sent, the
    same on every transport: ``QueueNameError`` / ``PayloadError`` for queue names, payloads,
    priorities and delays; ``ValueError`` for the other arguments; ``TypeError`` where a
    :class:`~asynctask.message.Task` is due and something else came.
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
    #: the producer's middleware (``asynctask_middleware``, set by ``get_transport()``): its
    #: ``before_submit`` hooks see every submit and may add to the meta
    middleware: MiddlewareChain | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.lease_s = DEFAULT_LEASE_S

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"

    # -- producing ---------------------------------------------------------------------------

    def submit_task(
        self,
        queue: str,
        payload: dict[str, Any] | None = None,
        *,
        delay_s: float = 0,
        priority: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """Store one task durably and return its id (a new :func:`~asynctask.message.new_task_id`).

        Visible to consumers after ``delay_s`` seconds (finite, >= 0); ``priority`` 0..9, higher
        first; ``meta`` (a JSON object, for the framework) comes back as ``Task.meta`` on every
        delivery and in the dead letters.  Raises ``QueueNameError`` / ``PayloadError`` (nothing
        stored) for bad arguments.
        A transport may override this for a one-round-trip path; it checks through
        :func:`~asynctask.transports.checks.prepare_submit`, so it refuses exactly what this does.
        """
        body, delay = self.prepare_one(queue, payload, delay_s, priority, meta)
        return self._submit(queue, [body], delay, priority)[0]

    def prepare_one(
        self, queue: str, payload: dict[str, Any] | None, delay_s: float, priority: int, meta: dict[str, Any] | None
    ) -> tuple[str, float]:
        """One submit checked and encoded (the middleware's ``before_submit`` first): its body and
        delay.  The one-round-trip ``submit_task`` of a transport goes through this too."""
        if self.middleware is not None:
            meta = self.middleware.before_submit(queue, payload, meta)
        return prepare_submit(queue, payload, delay_s, priority, meta)

    def submit_tasks(
        self,
        queue: str,
        payloads: Iterable[dict[str, Any] | None],
        *,
        delay_s: float = 0,
        priority: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> list[str]:
        """Store many tasks in as few round trips as the server allows; return their ids in order.

        Every payload is validated before any is stored: one bad payload stores none.  ``meta``
        goes with each of them.
        """
        delay = validate_submit_options(queue, delay_s, priority)
        if self.middleware is not None:
            payloads = list(payloads)
            metas = [self.middleware.before_submit(queue, payload, meta) for payload in payloads]
            bodies = [encode_body(payload, each) for payload, each in zip(payloads, metas, strict=True)]
            return self._submit(queue, bodies, delay, priority) if bodies else []
        if meta:
            bodies = [encode_body(payload, meta) for payload in payloads]
        else:
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
        to ``timeout_s`` (finite, >= 0) when none is; returns ``[]`` when none came.  ``max_count``
        is an int from 1 to :data:`MAX_BATCH`; ``lease_s`` a finite number > 0 or None.
        """
        validate_queue_name(queue)
        validate_max_count(max_count)
        timeout = validate_delay(timeout_s, "timeout_s")
        lease = self.lease_s if lease_s is None else validate_lease(lease_s)
        return self._get_tasks(queue, max_count, timeout, lease)

    @abc.abstractmethod
    def _get_tasks(self, queue: str, max_count: int, timeout_s: float, lease_s: float) -> list[Task]:
        """Reserve tasks (arguments already validated)."""

    # -- finishing a delivery ------------------------------------------------------------------

    def ack(self, task: Task) -> None:
        """Done: remove the task for good.  A no-op when this delivery's lease was already lost.

        Raises TypeError when ``task`` is not a Task.
        """
        self._ack(validate_task(task))

    def ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack many tasks (a list or tuple of Task), in as few round trips as the server allows.

        Each is acked as by :meth:`ack`.  Raises TypeError (nothing acked) when ``tasks`` is not a
        list or tuple of Task.  May be called from another thread than the one that fetched (the
        runner's ack flusher, under the runner's lock).
        """
        checked = validate_tasks(tasks)
        if checked:
            self._ack_tasks(checked)

    @abc.abstractmethod
    def _ack(self, task: Task) -> None:
        """Ack one checked task."""

    def _ack_tasks(self, tasks: Sequence[Task]) -> None:
        """Ack checked tasks (never empty); transports that can batch override this."""
        for task in tasks:
            self._ack(task)

    def nack(self, task: Task, *, delay_s: float = 0, count_attempt: bool = True) -> None:
        """Give the task back, ready again after ``delay_s`` (finite, >= 0: else PayloadError).

        With ``count_attempt=False`` (a task fetched but never started, e.g. at shutdown) the next
        delivery's ``attempts`` is this one's again instead of one more; ``count_attempt`` must be a
        bool (ValueError).  A no-op when this delivery's lease was already lost.
        """
        self._nack(validate_task(task), validate_delay(delay_s), validate_flag("count_attempt", count_attempt))

    @abc.abstractmethod
    def _nack(self, task: Task, delay_s: float, count_attempt: bool) -> None:
        """Give a checked task back."""

    def extend(self, task: Task, lease_s: float) -> bool:
        """Keep the lease for ``lease_s`` seconds (finite, > 0: else ValueError) from now.

        Returns False when the lease was already lost (the task may be another worker's now).  Safe
        to call from another thread than the one that fetched: the runner's lease keeper does.
        """
        return self._extend(validate_task(task), validate_lease(lease_s))

    @abc.abstractmethod
    def _extend(self, task: Task, lease_s: float) -> bool:
        """Extend a checked task's lease."""

    def dead(self, task: Task, reason: str) -> None:
        """Move the task to its queue's dead-letter store with ``reason``, its attempts and the time.

        ``reason`` must be a str (ValueError).  A no-op when this delivery's lease was already lost.
        """
        self._dead(validate_task(task), validate_reason(reason))

    @abc.abstractmethod
    def _dead(self, task: Task, reason: str) -> None:
        """Dead-letter a checked task."""

    # -- inspecting and administering ---------------------------------------------------------
    # Each raises QueueNameError for a bad queue name, before asking the store.

    def poll_queue(self, queue: str) -> int:
        """How many tasks are ready now (rex.asynctask's name)."""
        return self.stats(queue).ready

    def stats(self, queue: str) -> QueueStats:
        """Counts of ready, delayed, in-flight and dead tasks of ``queue`` (a snapshot)."""
        return self._stats(validate_queue_name(queue))

    @abc.abstractmethod
    def _stats(self, queue: str) -> QueueStats: ...

    def queues(self) -> list[str]:
        """Sorted names of the queues this store knows (any that holds or held a task)."""
        return self._queues()

    @abc.abstractmethod
    def _queues(self) -> list[str]: ...

    def purge(self, queue: str) -> int:
        """Drop the ready and delayed tasks of ``queue`` (not in-flight, not dead); return how many."""
        return self._purge(validate_queue_name(queue))

    @abc.abstractmethod
    def _purge(self, queue: str) -> int: ...

    def dead_tasks(self, queue: str, limit: int = 100) -> list[DeadTask]:
        """Up to ``limit`` dead tasks of ``queue``, oldest death first.

        ``limit`` is an int >= 0 (ValueError otherwise, a bool included); 0 returns ``[]``.
        """
        validate_queue_name(queue)
        if validate_limit(limit) == 0:
            return []
        return self._dead_tasks(queue, limit)

    @abc.abstractmethod
    def _dead_tasks(self, queue: str, limit: int) -> list[DeadTask]:
        """Up to ``limit`` (>= 1) dead tasks."""

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Give dead tasks (all, or those named by ``ids``) back to ``queue`` as new; return how many.

        A replayed task's next delivery has ``attempts`` 1 and its old priority.  ``ids`` is None
        or a list or tuple of str (ValueError otherwise: a bare str too); an id named twice counts
        once; ids that name no dead task of ``queue`` are skipped.
        """
        validate_queue_name(queue)
        chosen = validate_ids(ids)
        return 0 if chosen == [] else self._replay_dead(queue, chosen)

    @abc.abstractmethod
    def _replay_dead(self, queue: str, ids: list[str] | None) -> int:
        """Replay all dead tasks (None) or those of ``ids`` (distinct, never empty)."""

    def purge_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead tasks (all, or those named by ``ids``) for good; return how many.

        ``ids`` as for :meth:`replay_dead`.
        """
        validate_queue_name(queue)
        chosen = validate_ids(ids)
        return 0 if chosen == [] else self._purge_dead(queue, chosen)

    @abc.abstractmethod
    def _purge_dead(self, queue: str, ids: list[str] | None) -> int:
        """Delete all dead tasks (None) or those of ``ids`` (distinct, never empty)."""

    def claim_once(self, key: str, ttl_s: float) -> bool:
        """True for exactly one caller per ``key`` until ``ttl_s`` seconds have passed.

        ``key`` is a non-empty str of at most 200 characters, ``ttl_s`` a finite number > 0
        (ValueError otherwise).  Callers in other processes and on other hosts count alike.
        """
        key, ttl = validate_claim(key, ttl_s)
        return self._claim_once(key, ttl)

    @abc.abstractmethod
    def _claim_once(self, key: str, ttl_s: float) -> bool: ...

    def topology(self) -> dict[str, Any]:
        """What this transport is connected to, for ``asynctask doctor`` (cluster nodes, the
        sentinels' master, the broker node, a pooler in between...): JSON-ready, no password.
        Empty where there is nothing to say beyond the URL."""
        return {}

    def close(self) -> None:
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
