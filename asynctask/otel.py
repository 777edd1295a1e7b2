"""OpenTelemetry tracing of tasks: a built-in middleware (the ``otel`` extra).

.. code-block:: yaml

    asynctask_middleware: [asynctask.otel.Tracing]        # or asynctask.otel.LinkedTracing

Off unless listed.  It needs ``opentelemetry-api`` (``pip install 'asynctask-jobs[otel]'`` brings the
SDK too); the application configures the SDK (a ``TracerProvider`` with its exporter) as for any
other library, in the producer and in a module the workers import (``asynctask_require``): without
one, OpenTelemetry's no-op tracer makes every call here nearly free.

Producer (``before_submit``)
    a ``PRODUCER`` span ``"<queue> publish"``, a child of the span current at the submit, started and
    ended in the hook (there is no hook after the store); its W3C trace context (``traceparent``,
    ``tracestate``, as :func:`opentelemetry.propagate.inject` writes them with the configured
    propagator) goes in ``Task.meta`` under :data:`META_KEY`.  The task id is not known yet (the
    transport makes it as it stores the task): the producer span has no ``messaging.message.id``.
Consumer (``before_process`` to ``after_process``)
    a ``CONSUMER`` span ``"<queue> process"`` whose parent is the producer's span (:class:`Tracing`),
    or a new trace with a *link* to it (:class:`LinkedTracing`, or ``Tracing(link=True)``: for
    fan-out, where one request submits many tasks whose traces should stay small).  It is the current
    span while ``process`` runs, in the thread or the coroutine that runs it (the runners call both
    hooks there: ``concurrency`` threads and ``async def process`` included), so spans the task
    starts are its children.  When ``process`` raised, the span records the exception and its status
    is ``ERROR``.  ``on_worker_stop`` flushes the tracer provider (a child leaves with
    ``os._exit``: ``atexit`` does not run there).

Attributes (OpenTelemetry messaging semantic conventions): ``messaging.system`` = ``asynctask``,
``messaging.destination.name`` = the queue, ``messaging.operation`` and ``messaging.operation.type``
= ``publish`` / ``process``, ``messaging.operation.name`` likewise; on the consumer span also
``messaging.message.id`` (the task id), ``messaging.asynctask.attempt`` (1 on the first delivery),
``messaging.asynctask.worker`` and ``messaging.asynctask.outcome`` (``acked``, ``retried``, ``dead``).

A thread that overran ``timeout_s`` is settled from the dispatcher thread: its span ends there (with
the timeout as its error) and the lane's context is left to the abandoned thread.
"""

from __future__ import annotations

import logging
import threading
from contextvars import Token
from typing import Any, ClassVar

from asynctask.errors import ConfigurationError
from asynctask.message import Task
from asynctask.middleware import Middleware

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - the extra is installed wherever tests run
    raise ConfigurationError(
        "asynctask.otel needs opentelemetry-api and opentelemetry-sdk: pip install 'asynctask-jobs[otel]'"
    ) from None

__all__ = ["META_KEY", "SYSTEM", "LinkedTracing", "Tracing"]

logger = logging.getLogger(__name__)

#: the key of ``Task.meta`` that holds the W3C trace context (a dict: ``traceparent``, ``tracestate``)
META_KEY = "otel"
#: ``messaging.system``
SYSTEM = "asynctask"
#: how long ``on_worker_stop`` waits for the exporter
FLUSH_TIMEOUT_MS = 5000

#: the open consumer spans, by (task id, attempts): a span, the context made current and its token
_Open = tuple[trace.Span, otel_context.Context, Token[otel_context.Context]]


class Tracing(Middleware):
    """Producer and consumer spans (see the module docstring); ``link``: link, do not parent."""

    #: True: the consumer span starts a new trace linked to the producer's span (a class default,
    #: as ``asynctask_middleware`` builds classes with no arguments: :class:`LinkedTracing`)
    link: ClassVar[bool] = False

    def __init__(self, link: bool | None = None, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.linked = type(self).link if link is None else link
        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer("asynctask", tracer_provider=tracer_provider)
        self.worker = "-"
        self._open: dict[tuple[str, int], _Open] = {}
        self._lock = threading.Lock()

    # -- producer ----------------------------------------------------------------------------------

    def before_submit(self, queue: str, payload: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        attributes = _attributes(queue, "publish")
        with self.tracer.start_as_current_span(f"{queue} publish", kind=SpanKind.PRODUCER, attributes=attributes):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        if carrier:
            meta[META_KEY] = carrier

    # -- consumer ----------------------------------------------------------------------------------

    def on_worker_start(self, worker: Any) -> None:
        self.worker = str(getattr(worker, "name", None) or type(worker).__name__)

    def before_process(self, task: Task) -> None:
        carrier = task.meta.get(META_KEY) if task.meta else None
        # from an empty context: the consumer's parent is the producer, never what the worker runs in
        sent = propagate.extract(carrier, context=otel_context.Context()) if isinstance(carrier, dict) else None
        attributes: dict[str, str | int] = {
            **_attributes(task.queue, "process"),
            "messaging.message.id": task.id,
            "messaging.asynctask.attempt": task.attempts,
            "messaging.asynctask.worker": self.worker,
        }
        name = f"{task.queue} process"
        if self.linked:
            producer = trace.get_current_span(sent).get_span_context() if sent is not None else None
            links = [Link(producer)] if producer is not None and producer.is_valid else None
            span = self.tracer.start_span(
                name, otel_context.Context(), kind=SpanKind.CONSUMER, attributes=attributes, links=links
            )
        else:
            parent = sent if sent is not None else otel_context.Context()
            span = self.tracer.start_span(name, parent, kind=SpanKind.CONSUMER, attributes=attributes)
        current = trace.set_span_in_context(span)
        token = otel_context.attach(current)
        with self._lock:
            self._open[(task.id, task.attempts)] = (span, current, token)

    def after_process(self, task: Task, outcome: str, error: BaseException | None) -> None:
        with self._lock:
            found = self._open.pop((task.id, task.attempts), None)
        if found is None:
            return
        span, current, token = found
        span.set_attribute("messaging.asynctask.outcome", outcome)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        # detach only where it was attached (the same thread or coroutine): a thread that overran
        # timeout_s is settled from another thread
        if otel_context.get_current() is current:
            otel_context.detach(token)

    def on_worker_stop(self, worker: Any) -> None:
        provider = self.tracer_provider or trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush(FLUSH_TIMEOUT_MS)


class LinkedTracing(Tracing):
    """:class:`Tracing` whose consumer spans link to the producer's span instead of being its child."""

    link = True


def _attributes(queue: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation": operation,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
