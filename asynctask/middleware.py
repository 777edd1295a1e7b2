"""Middleware: hooks around submitting and running tasks (``asynctask_middleware``).

.. code-block:: yaml

    asynctask_middleware: [asynctask.middleware.LoggingContext, myapp.middleware.Sentry]

Each entry is the dotted path of a class, built with no arguments, in every worker child and in
every producer that opens its transport with ``get_transport()`` (which reads the setting where it
reads the URL); it works the same on every transport.  A class defines any of these methods
(subclassing :class:`Middleware` is optional):

``on_worker_start(worker)``
    in a worker child, after ``setup()``;
``before_submit(queue, payload, meta)``
    in a producer, before a task is stored; it may add keys to ``meta`` (a dict: the task's
    ``Task.meta``, which the worker reads as ``self.task.meta``) and must not replace the payload;
``before_process(task)``
    in a worker, before ``process`` (in the thread or coroutine that runs it);
``after_process(task, outcome, error)``
    after the task was settled: ``outcome`` is ``acked``, ``retried`` or ``dead``, ``error`` the
    exception ``process`` raised (None when it returned);
``on_worker_stop(worker)``
    in a worker child, before ``teardown()``.

Hooks run in the listed order, the after-hooks (``after_process``, ``on_worker_stop``) in reverse.
An exception in a hook is logged with the class and hook name and goes no further: it never loses
or fails the task.

Built in: :class:`LoggingContext` puts ``task_id``, ``queue``, ``worker`` and ``attempt`` on every log
record emitted while a task runs (``-`` outside a task), for a format such as
``%(task_id)s %(message)s``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from typing import Any

from asynctask.errors import ConfigurationError
from asynctask.importing import import_object
from asynctask.message import Task

__all__ = ["LoggingContext", "Middleware", "MiddlewareChain", "load_middleware"]

logger = logging.getLogger(__name__)

HOOKS = ("on_worker_start", "before_submit", "before_process", "after_process", "on_worker_stop")


class Middleware:
    """A base class with every hook doing nothing (optional: any class with some hooks will do)."""

    def on_worker_start(self, worker: Any) -> None:
        pass

    def before_submit(self, queue: str, payload: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        pass

    def before_process(self, task: Task) -> None:
        pass

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        pass

    def on_worker_stop(self, worker: Any) -> None:
        pass


class MiddlewareChain:
    """The middleware instances of a process, called in order (see the module docstring)."""

    def __init__(self, instances: Sequence[object]) -> None:
        self.instances = list(instances)
        self._hooks = {
            name: [(m, getattr(m, name)) for m in self.instances if callable(getattr(m, name, None))] for name in HOOKS
        }

    def __bool__(self) -> bool:
        return bool(self.instances)

    def _call(self, hook: str, args: tuple[Any, ...], reverse: bool = False) -> None:
        found = self._hooks[hook]
        for instance, method in reversed(found) if reverse else found:
            try:
                method(*args)
            except Exception:
                logger.exception("middleware %s.%s failed", type(instance).__name__, hook)

    def on_worker_start(self, worker: Any) -> None:
        self._call("on_worker_start", (worker,))

    def before_submit(
        self, queue: str, payload: dict[str, Any] | None, meta: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Run the ``before_submit`` hooks on a copy of ``meta``; the meta to store (None: none)."""
        if not self._hooks["before_submit"]:
            return meta
        grown = dict(meta or {})
        self._call("before_submit", (queue, payload, grown))
        return grown or None

    def before_process(self, task: Task) -> None:
        self._call("before_process", (task,))

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        self._call("after_process", (task, outcome, error), reverse=True)

    def on_worker_stop(self, worker: Any) -> None:
        self._call("on_worker_stop", (worker,), reverse=True)


def load_middleware(paths: Sequence[str]) -> MiddlewareChain | None:
    """Build the classes named by ``paths`` (dotted paths); None when there are none.

    Raises :class:`~asynctask.errors.ConfigurationError` naming a path that does not import, is not
    a class, or cannot be built with no arguments.
    """
    instances = []
    for path in paths:
        cls = import_object(path, "asynctask_middleware")
        if not isinstance(cls, type):
            raise ConfigurationError(
                f"asynctask_middleware: {path!r} is not a class (a dotted path to a class is allowed)"
            )
        try:
            instances.append(cls())
        except Exception as exc:
            raise ConfigurationError(f"asynctask_middleware: {path}() failed: {type(exc).__name__}: {exc}") from None
    return MiddlewareChain(instances) if instances else None


# -- built in --------------------------------------------------------------------------------------

_current: contextvars.ContextVar[tuple[str, str, str, int] | None] = contextvars.ContextVar(
    "asynctask_log_context", default=None
)
_installed = False


def _install_record_factory() -> None:
    """Wrap the log record factory once: every record gets the running task's fields."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        found = _current.get()
        record.task_id, record.queue, record.worker, record.attempt = found or ("-", "-", "-", 0)
        return record

    logging.setLogRecordFactory(factory)


class LoggingContext(Middleware):
    """``task_id``, ``queue``, ``worker`` and ``attempt`` on every log record of a running task."""

    def __init__(self) -> None:
        _install_record_factory()
        self.worker = "-"

    def on_worker_start(self, worker: Any) -> None:
        self.worker = str(getattr(worker, "name", None) or type(worker).__name__)

    def before_process(self, task: Task) -> None:
        _current.set((task.id, task.queue, self.worker, task.attempts))

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        _current.set(None)
