"""``AsyncTaskWorker``, its registry, and the ``Retry`` / ``Reject`` signals.

A subclass that sets ``name`` registers itself when its class statement runs (``__init_subclass__``);
registering a second class under a taken name raises :class:`~asynctask.errors.ConfigurationError`
naming both classes.  Lifecycle in a worker child: ``setup()`` once after the child starts,
``process(payload)`` per task, ``teardown()`` once at exit.

Class options (override in the subclass):

``max_attempts`` (1)
    attempts a task gets; an exception (or ``raise Retry``) with attempts left nacks it with
    ``retry_delay_s`` backoff, on the last attempt it goes to the dead-letter store with the exception
    and traceback.  A crash of the child is not an attempt (see ``max_crashes``).
``max_crashes`` (3)
    deaths of its child (any signal or exit, not the supervisor's kill for ``timeout_s``) a task may
    cause: before that it runs again, after a short delay; then it is quarantined in the dead-letter
    store with every cause (:mod:`asynctask.workers.crashes`).  ``max_crashes`` in an
    ``asynctask_workers`` entry overrides it for that queue.
``retry_delay_s`` (1.0)
    first retry delay; doubles per attempt (capped by ``max_retry_delay_s``), with +-25 % jitter.
``timeout_s`` (None)
    a task running longer is stopped and counted as a failed attempt: the child interrupts Python
    code itself (one task at a time) or cancels the coroutine (``async def process``), and the
    supervisor replaces a child stuck in C code shortly after.  A thread (``concurrency`` above 1)
    cannot be interrupted: its task counts the failed attempt at once and the child is replaced once
    its other tasks finish (:mod:`asynctask.workers.lanes`).
``lease_s`` (None: the transport's)
    the lease each fetch takes; the runner extends it while the task runs.
``result_ttl_s`` (None)
    keep each task's status and ``process``'s return value (JSON) this many seconds, for
    :class:`~asynctask.results.TaskHandle` (failures: at least 7 days); None keeps nothing.
``concurrency`` (1)
    tasks one child runs at once: ``def process`` runs on that many threads (one shared worker
    instance), ``async def process`` as that many coroutines on one event loop (``setup`` and
    ``teardown`` may then be ``async def`` too).  ``concurrency`` in an ``asynctask_workers`` entry
    overrides it for that queue.  ``self.task`` is the caller's task in every thread and coroutine
    (a context variable).  See :mod:`asynctask.workers.lanes`.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import random
from collections.abc import Awaitable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

from asynctask.errors import ConfigurationError, UnknownWorkerError
from asynctask.message import Task

if TYPE_CHECKING:
    from asynctask.transports.base import Transport

__all__ = [
    "MAX_CONCURRENCY",
    "AsyncTaskWorker",
    "Reject",
    "Retry",
    "TaskTimeout",
    "get_worker",
    "is_async_worker",
    "registered_workers",
]

#: The most tasks one child may run at once (``concurrency``)
MAX_CONCURRENCY = 1000

_registry: dict[str, type[AsyncTaskWorker]] = {}


class Retry(Exception):  # noqa: N818 - the rex-style signal name reads better in workers
    """Raise from ``process`` to give the task back and run it again after ``delay_s``.

    Each retry is an attempt: once ``max_attempts`` are spent the task goes to the dead-letter store
    with the reason "retries exhausted" (so set ``max_attempts`` to the retries you allow plus one).
    ``delay_s`` None means the worker's backoff for this attempt; ``reason`` is logged and kept in the
    dead letter.
    """

    def __init__(self, delay_s: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "Retry raised")
        self.delay_s = delay_s
        self.reason = reason


class Reject(Exception):  # noqa: N818
    """Raise from ``process`` to send the task to the dead-letter store at once with ``reason``."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


class TaskTimeout(BaseException):
    """A task ran past its worker's ``timeout_s``.

    A ``BaseException`` so that a worker's ``except Exception`` cannot swallow it.
    """


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class AsyncTaskWorker:
    """Base class of workers.  Subclass it, set ``name`` and implement :meth:`process`."""

    #: registry key used in ``asynctask_workers``; a class without one is abstract (not registered)
    name: ClassVar[str | None] = None
    max_attempts: ClassVar[int] = 1
    retry_delay_s: ClassVar[float] = 1.0
    max_retry_delay_s: ClassVar[float] = 300.0
    timeout_s: ClassVar[float | None] = None
    lease_s: ClassVar[float | None] = None
    max_crashes: ClassVar[int] = 3
    concurrency: ClassVar[int] = 1
    result_ttl_s: ClassVar[float | None] = None
    #: options differ per task (the built-in ``tasks`` worker: per ``@task`` function)
    per_task_options: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{_qualified(cls)}.name must be a non-empty string, not {name!r}")
        for option in ("max_attempts", "max_crashes", "concurrency"):
            value = getattr(cls, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{_qualified(cls)}.{option} must be an integer >= 1, not {value!r}")
        if cls.concurrency > MAX_CONCURRENCY:
            raise ConfigurationError(
                f"{_qualified(cls)}.concurrency must be at most {MAX_CONCURRENCY}, not {cls.concurrency!r}"
            )
        taken = _registry.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise ConfigurationError(
                f"worker name {name!r} is registered twice: by {_qualified(taken)} and by {_qualified(cls)}"
            )
        if cls.process is AsyncTaskWorker.process:
            raise ConfigurationError(
                f"worker {name!r} ({_qualified(cls)}) does not define process(self, payload): every task it took"
                " would fail"
            )
        if not inspect.iscoroutinefunction(cls.process):
            for hook in ("setup", "teardown"):
                if inspect.iscoroutinefunction(getattr(cls, hook)):
                    raise ConfigurationError(
                        f"worker {name!r} ({_qualified(cls)}) has an async def {hook}() but a plain def process():"
                        " make process async def too, or the hook a plain def"
                    )
        _registry[name] = cls

    def __init__(self) -> None:
        self.logger = logging.getLogger(f"asynctask.worker.{self.name or type(self).__name__}")
        # each thread and each coroutine of a child sees its own task (``concurrency``)
        self._task_var: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
            f"asynctask_task_{id(self)}", default=None
        )
        self.queue: str | None = None
        self.transport: Transport | None = None
        self._transport_lock: AbstractContextManager[Any] = contextlib.nullcontext()

    def bind(self, transport: Transport, queue: str, lock: AbstractContextManager[Any] | None = None) -> None:
        """Attach the transport and queue the runner feeds this worker from (done by the runner);
        ``lock`` is held around :meth:`requeue`'s call (the runner's threads share the transport)."""
        self.transport = transport
        self.queue = queue
        self._transport_lock = lock or contextlib.nullcontext()

    @property
    def task(self) -> Task | None:
        """The task the calling thread or coroutine is processing (None outside ``process``)."""
        return self._task_var.get()

    @task.setter
    def task(self, task: Task | None) -> None:
        self._task_var.set(task)

    # -- the hooks a subclass implements -------------------------------------------------------

    def setup(self) -> Awaitable[None] | None:
        """Runs once in the child before the first task (open connections, load models...);
        may be ``async def`` in a worker whose ``process`` is."""

    def process(self, payload: dict[str, Any]) -> Any:
        """Do the work of one task (``def`` or ``async def``).  ``self.task`` is the Task being processed."""
        raise NotImplementedError(f"{_qualified(type(self))} must implement process(payload)")

    def teardown(self) -> Awaitable[None] | None:
        """Runs once at exit, after the last task (also after a failure of ``setup``); may be
        ``async def`` in a worker whose ``process`` is."""

    # -- helpers for process() -----------------------------------------------------------------

    def requeue(self, payload: dict[str, Any] | None = None, *, delay_s: float = 0, priority: int = 0) -> str:
        """Submit ``payload`` as a new task to the queue being processed (rex.asynctask's)."""
        if self.transport is None or self.queue is None:
            raise RuntimeError("requeue() is only available while the worker is run by a runner")
        with self._transport_lock:
            return self.transport.submit_task(self.queue, payload, delay_s=delay_s, priority=priority)

    @classmethod
    def retry_delay(cls, attempts: int, rng: random.Random | None = None) -> float:
        """The delay before the next delivery after failed attempt number ``attempts`` (1-based):
        ``retry_delay_s * 2**(attempts-1)``, capped at ``max_retry_delay_s``, with +-25 % jitter."""
        return cls.jittered(min(cls.retry_delay_s * 2 ** max(attempts - 1, 0), cls.max_retry_delay_s), rng)

    @staticmethod
    def jittered(base_s: float, rng: random.Random | None = None) -> float:
        return max(float(base_s * (rng or random).uniform(0.75, 1.25)), 0.0)

    # -- per-task options (the built-in ``tasks`` worker has one set per function) ----------------

    def max_attempts_for(self, task: Task) -> int:
        return self.max_attempts

    def retry_delay_for(self, task: Task) -> float:
        """The delay before the next delivery of ``task`` after its failed attempt."""
        return self.retry_delay(task.attempts)

    def timeout_for(self, task: Task) -> float | None:
        return self.timeout_s

    def result_ttl_for(self, task: Task) -> float | None:
        """How long ``task``'s status and result are kept (None: not at all)."""
        return self.result_ttl_s

    def result_name(self, task: Task) -> str:
        """What produced ``task``'s result, for error messages."""
        return f"worker {self.name}"

    @classmethod
    def queue_concurrency(cls, queue: str) -> int:
        """The ``concurrency`` of this worker's children on ``queue`` (unless its entry says)."""
        return cls.concurrency

    @classmethod
    def queue_max_crashes(cls, queue: str) -> int:
        """The ``max_crashes`` of this worker's children on ``queue`` (unless its entry says)."""
        return cls.max_crashes

    @classmethod
    def keeps_results_on(cls, queue: str) -> bool:
        """Whether tasks of ``queue`` may keep results (the state store must then be there)."""
        return cls.result_ttl_s is not None


def is_async_worker(cls: type[AsyncTaskWorker]) -> bool:
    """True when ``cls.process`` is ``async def`` (its child runs an event loop, not threads)."""
    return inspect.iscoroutinefunction(cls.process)


def registered_workers() -> dict[str, type[AsyncTaskWorker]]:
    """A copy of the registry: worker name -> class."""
    return dict(_registry)


def get_worker(name: str) -> type[AsyncTaskWorker]:
    """The class registered under ``name``; UnknownWorkerError listing the registered names otherwise."""
    cls = _registry.get(name)
    if cls is None:
        from asynctask.config_values import did_you_mean  # noqa: PLC0415 - config imports this module

        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownWorkerError(
            f'Worker "{name}" does not exist{did_you_mean(name, _registry)}; registered workers: {known}'
        )
    return cls
