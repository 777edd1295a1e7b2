"""``@task``: plain functions run by workers, with ``.submit`` and a :class:`TaskHandle` back.

.. code-block:: python

    from asynctask import task

    @task(queue="emails", max_attempts=5, result_ttl_s=3600)
    def send_email(to: str, subject: str = "hi") -> dict: ...

    handle = send_email.submit("a@example.org", subject="x")
    handle.result(timeout_s=10)

A decorated function still runs when called.  ``submit`` stores a task on ``queue`` whose payload is
``{"args": [...], "kwargs": {...}}`` and whose meta names the function (``fn``); the built-in
worker ``tasks`` (:class:`TasksWorker`) runs, for every task of the queue it is given, the function
its meta names, with the options given to ``@task`` (same meaning as the worker class options of
:class:`~asynctask.workers.base.AsyncTaskWorker`).  A task naming a function the worker's process
has not registered is dead-lettered with a reason naming it and the registered ones.

Producers open their transport as :func:`~asynctask.transports.get_transport` does with no URL
(one per thread, reused), with the state store and eager mode of the same configuration
(:mod:`asynctask.producer`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from asynctask.errors import ConfigurationError, PayloadError
from asynctask.message import Task, encode_payload, validate_queue_name
from asynctask.results import ERROR_KEEP_S, QUEUED, TaskHandle, record_key
from asynctask.workers.base import MAX_CONCURRENCY, AsyncTaskWorker, Reject

__all__ = ["TaskFunction", "TaskOptions", "TasksWorker", "registered_functions", "task", "task_queues"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskOptions:
    """The options of one ``@task`` function (the worker class options' meaning)."""

    queue: str = "default"
    name: str = ""
    max_attempts: int = 1
    retry_delay_s: float = 1.0
    max_retry_delay_s: float = 300.0
    timeout_s: float | None = None
    result_ttl_s: float | None = None
    max_crashes: int = 3
    concurrency: int = 1


_functions: dict[str, TaskFunction[Any, Any]] = {}


def registered_functions() -> dict[str, TaskFunction[Any, Any]]:
    """A copy of the registry: function name -> :class:`TaskFunction`."""
    return dict(_functions)


def task_queues() -> list[str]:
    """The queues the registered ``@task`` functions use, sorted."""
    return sorted({function.options.queue for function in _functions.values()})


def _check_options(options: TaskOptions, where: str) -> None:
    validate_queue_name(options.queue)
    for option in ("max_attempts", "max_crashes", "concurrency"):
        value = getattr(options, option)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"@task of {where}: {option} must be an integer >= 1, not {value!r}")
    if options.concurrency > MAX_CONCURRENCY:
        raise ConfigurationError(f"@task of {where}: concurrency must be at most {MAX_CONCURRENCY}")
    for option in ("timeout_s", "result_ttl_s"):
        value = getattr(options, option)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ConfigurationError(f"@task of {where}: {option} must be a number of seconds > 0 or None")


class TaskFunction(Generic[P, R]):
    """A function made a task by ``@task``: call it to run it here, ``submit`` to run it on a worker."""

    def __init__(self, function: Callable[P, R], options: TaskOptions) -> None:
        self.function = function
        self.name = options.name or f"{function.__module__}.{function.__qualname__}"
        self.options = options
        self.is_async = inspect.iscoroutinefunction(function)
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<task {self.name} on {self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Run it on a worker with these arguments (JSON values); returns its handle at once."""
        return self.submit_with(args=args, kwargs=kwargs)

    def submit_with(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay_s: float = 0,
        priority: int = 0,
    ) -> TaskHandle:
        """As :meth:`submit`, with a delay (seconds) and a priority (0-9, higher first).

        Raises :class:`~asynctask.errors.PayloadError` naming the first argument that is not JSON
        (nothing is stored).
        """
        from asynctask.producer import producer_transport  # noqa: PLC0415 - producer imports this module

        payload = {"args": list(args), "kwargs": dict(kwargs or {})}
        _check_arguments(self.name, payload)
        meta: dict[str, Any] = {"fn": self.name}
        transport = producer_transport()
        queue = self.options.queue
        ttl = self.options.result_ttl_s
        if ttl is not None and not transport.keeps_state and transport.state_store is None:
            raise transport._unsupported()  # before anything is stored
        task_id = transport.submit_task(queue, payload, delay_s=delay_s, priority=priority, meta=meta)
        if ttl is not None and not getattr(transport, "eager", False):
            record = f'{{"id":"{task_id}","status":"{QUEUED}","attempts":0}}'
            transport.state_add(queue, record_key(task_id), record, max(ttl, ERROR_KEEP_S))
        return TaskHandle(task_id, queue, transport, result_ttl_s=ttl)


def _check_arguments(name: str, payload: dict[str, Any]) -> None:
    """PayloadError naming the first argument that is not JSON."""
    try:
        encode_payload(payload)
    except PayloadError:
        for index, value in enumerate(payload["args"]):
            _check_one(name, f"argument {index}", value)
        for key, value in payload["kwargs"].items():
            _check_one(name, f"argument {key!r}", value)
        raise


def _check_one(name: str, what: str, value: Any) -> None:
    try:
        encode_payload({"v": value})
    except PayloadError as exc:
        detail = str(exc).removeprefix("payload is not JSON-encodable: ")
        raise PayloadError(f"{name}: {what} is not JSON ({detail}): {value!r:.80}") from None


def task(  # noqa: PLR0913 - the options are the worker class options, by name
    function: Callable[P, R] | None = None,
    *,
    queue: str = "default",
    name: str | None = None,
    max_attempts: int = 1,
    retry_delay_s: float = 1.0,
    timeout_s: float | None = None,
    result_ttl_s: float | None = None,
    max_crashes: int = 3,
    concurrency: int = 1,
) -> Any:
    """Make ``function`` a task (``@task`` or ``@task(...)``); see the module docstring.

    Raises :class:`~asynctask.errors.ConfigurationError` for a bad option, or when another function
    is registered under the same name.
    """

    def decorate(fn: Callable[P, R]) -> TaskFunction[P, R]:
        options = TaskOptions(
            queue, name or "", max_attempts, retry_delay_s, 300.0, timeout_s, result_ttl_s, max_crashes, concurrency
        )
        made = TaskFunction(fn, options)
        _check_options(options, made.name)
        taken = _functions.get(made.name)
        if taken is not None and (taken.function.__module__, taken.function.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ConfigurationError(f"task name {made.name!r} is registered twice: by {taken!r} and by {fn!r}")
        _functions[made.name] = made
        return made

    return decorate(function) if function is not None else decorate


class TasksWorker(AsyncTaskWorker):
    """The built-in worker ``tasks``: runs the ``@task`` function each task's meta names.

    ``async def`` functions run on an event loop of the lane's thread, one at a time per lane.
    The options of each function apply to its tasks (attempts, delays, timeout, results); the
    child's ``concurrency`` is the largest of its queue's functions unless the queue's entry says.
    """

    name = "tasks"
    per_task_options = True

    def __init__(self) -> None:
        super().__init__()
        self._loops = threading.local()

    @classmethod
    def queue_concurrency(cls, queue: str) -> int:
        found = [f.options.concurrency for f in _functions.values() if f.options.queue == queue]
        return max(found, default=1)

    @classmethod
    def queue_max_crashes(cls, queue: str) -> int:
        """The smallest ``max_crashes`` of the queue's functions: the supervisor counts a child's
        deaths per queue, not per function."""
        found = [f.options.max_crashes for f in _functions.values() if f.options.queue == queue]
        return min(found, default=cls.max_crashes)

    @classmethod
    def keeps_results_on(cls, queue: str) -> bool:
        return any(f.options.result_ttl_s is not None for f in _functions.values() if f.options.queue == queue)

    def function_of(self, task: Task) -> TaskFunction[Any, Any]:
        name = task.meta.get("fn")
        found = _functions.get(name) if isinstance(name, str) else None
        if found is None:
            known = ", ".join(sorted(_functions)) or "none"
            raise Reject(f"unknown task function {name!r}: not registered in this worker; registered: {known}")
        return found

    def _options(self, task: Task) -> TaskOptions | None:
        name = task.meta.get("fn")
        found = _functions.get(name) if isinstance(name, str) else None
        return found.options if found is not None else None

    def max_attempts_for(self, task: Task) -> int:
        options = self._options(task)
        return options.max_attempts if options else self.max_attempts

    def retry_delay_for(self, task: Task) -> float:
        options = self._options(task)
        if options is None:
            return self.retry_delay(task.attempts)
        base = min(options.retry_delay_s * 2 ** max(task.attempts - 1, 0), options.max_retry_delay_s)
        return type(self).jittered(base)

    def timeout_for(self, task: Task) -> float | None:
        options = self._options(task)
        return options.timeout_s if options else self.timeout_s

    def result_ttl_for(self, task: Task) -> float | None:
        options = self._options(task)
        ttl = options.result_ttl_s if options else None
        if ttl is None and getattr(self.transport, "eager", False):
            return 3600.0  # an eager handle holds its result
        return ttl

    def result_name(self, task: Task) -> str:
        return str(task.meta.get("fn", self.name))

    def process(self, payload: dict[str, Any]) -> Any:
        assert self.task is not None
        function = self.function_of(self.task)
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        result = function.function(*args, **kwargs)
        if inspect.isawaitable(result):
            loop = getattr(self._loops, "runner", None)
            if loop is None:
                loop = self._loops.runner = asyncio.Runner()
            result = loop.run(_awaited(result))
        return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
