"""OpenTelemetry middleware (asynctask.otel): producer and consumer spans, with the SDK's in-memory
exporter, on the memory transport, processed in this process (asynctask.testing, eager mode)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asynctask import get_transport
from asynctask.middleware import MiddlewareChain
from asynctask.otel import META_KEY, LinkedTracing, Tracing
from asynctask.testing import process_queue
from asynctask.transports.memory import MemoryTransport
from asynctask.workers import AsyncTaskWorker

#: (trace id, span id) of the span current inside process, by payload n
INSIDE: dict[int, tuple[int, int]] = {}
#: the task's id and its ``meta`` as process saw them, by payload n
SEEN: dict[int, tuple[str, dict[str, Any]]] = {}


def _inside(worker: AsyncTaskWorker, payload: dict[str, Any]) -> None:
    context = trace.get_current_span().get_span_context()
    INSIDE[payload["n"]] = (context.trace_id, context.span_id)
    assert worker.task is not None
    SEEN[payload["n"]] = (worker.task.id, worker.task.meta)
    if payload.get("fail"):
        raise ValueError(f"bad task {payload['n']}")


class Plain(AsyncTaskWorker):
    name = "otel_plain"
    max_attempts = 1

    def process(self, payload: dict[str, Any]) -> None:
        _inside(self, payload)


class Threads(AsyncTaskWorker):
    name = "otel_threads"
    concurrency = 3
    max_attempts = 1

    def process(self, payload: dict[str, Any]) -> None:
        time.sleep(0.01)  # the lanes overlap
        _inside(self, payload)


class Coroutines(AsyncTaskWorker):
    name = "otel_async"
    concurrency = 3
    max_attempts = 1

    async def process(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        _inside(self, payload)


class Overrun(AsyncTaskWorker):
    name = "otel_overrun"
    concurrency = 2
    max_attempts = 1
    timeout_s = 0.1

    def process(self, payload: dict[str, Any]) -> None:
        time.sleep(0.4)


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry refuses to replace it) exporting here."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    found = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(found))
    yield found
    found.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    INSIDE.clear()
    SEEN.clear()
    return exporter


def store(middleware: object) -> MemoryTransport:
    transport = MemoryTransport(f"memory://{uuid.uuid4().hex}")
    transport.middleware = MiddlewareChain([middleware])
    return transport


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def submit_in_a_span(transport: MemoryTransport, payloads: list[dict[str, Any]]) -> ReadableSpan | Any:
    with trace.get_tracer("test").start_as_current_span("request") as request:
        transport.submit_tasks("jobs", payloads)
    return request


@pytest.mark.parametrize("worker", ["otel_plain", "otel_threads", "otel_async"])
def test_the_consumer_span_is_a_child_of_the_producer_span(spans: InMemorySpanExporter, worker: str) -> None:
    transport = store(Tracing())
    request = submit_in_a_span(transport, [{"n": n} for n in range(4)])
    assert process_queue("jobs", worker, transport=transport) == 4

    trace_id = request.get_span_context().trace_id
    publishes = named(spans, "jobs publish")
    processes = named(spans, "jobs process")
    assert len(publishes) == 4 and len(processes) == 4
    for publish in publishes:
        assert publish.kind is SpanKind.PRODUCER
        assert publish.context.trace_id == trace_id and publish.parent is not None
        assert publish.parent.span_id == request.get_span_context().span_id
        assert dict(publish.attributes or {}) == {
            "messaging.system": "asynctask",
            "messaging.destination.name": "jobs",
            "messaging.operation": "publish",
            "messaging.operation.type": "publish",
            "messaging.operation.name": "publish",
        }
    producers = {span.context.span_id for span in publishes}
    # the W3C trace context of its producer span, in each task's meta
    assert {meta[META_KEY]["traceparent"][:52] for _, meta in SEEN.values()} == {
        f"00-{trace_id:032x}-{span_id:016x}" for span_id in producers
    }
    for process in processes:
        attributes = dict(process.attributes or {})
        assert process.kind is SpanKind.CONSUMER and process.status.status_code is StatusCode.UNSET
        assert process.context.trace_id == trace_id
        assert process.parent is not None and process.parent.span_id in producers and process.parent.is_remote
        assert attributes["messaging.system"] == "asynctask"
        assert attributes["messaging.destination.name"] == "jobs"
        assert attributes["messaging.operation"] == "process"
        assert attributes["messaging.asynctask.attempt"] == 1
        assert attributes["messaging.asynctask.outcome"] == "acked"
    # each consumer has its own producer, and is the current span while its process runs
    assert len({process.parent.span_id for process in processes if process.parent}) == 4
    ids = {str(attributes["messaging.message.id"]) for attributes in (dict(p.attributes or {}) for p in processes)}
    assert ids == {task_id for task_id, _ in SEEN.values()}
    assert set(INSIDE.values()) == {(trace_id, process.context.span_id) for process in processes}
    assert trace.get_current_span() is trace.INVALID_SPAN  # no context left attached here


def test_the_link_variant_starts_a_new_trace_linked_to_the_producer(spans: InMemorySpanExporter) -> None:
    transport = store(LinkedTracing())
    request = submit_in_a_span(transport, [{"n": 1}])
    process_queue("jobs", "otel_plain", transport=transport)
    (publish,) = named(spans, "jobs publish")
    (process,) = named(spans, "jobs process")
    assert process.parent is None and process.context.trace_id != request.get_span_context().trace_id
    (link,) = process.links
    assert (link.context.trace_id, link.context.span_id) == (publish.context.trace_id, publish.context.span_id)
    assert Tracing(link=True).linked and not Tracing().linked and LinkedTracing(link=False).linked is False


def test_a_task_that_raised_has_an_error_span_with_the_exception(spans: InMemorySpanExporter) -> None:
    transport = store(Tracing())
    submit_in_a_span(transport, [{"n": 1, "fail": True}])
    process_queue("jobs", "otel_plain", transport=transport)
    (process,) = named(spans, "jobs process")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "ValueError: bad task 1"
    assert (process.attributes or {})["messaging.asynctask.outcome"] == "dead"
    (event,) = process.events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"


def test_a_thread_that_overran_ends_its_span_from_the_dispatcher(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    transport = store(Tracing())
    transport.submit_task("jobs", {"n": 1})
    with caplog.at_level(logging.ERROR):
        process_queue("jobs", "otel_overrun", transport=transport)
    (process,) = named(spans, "jobs process")
    assert process.status.status_code is StatusCode.ERROR and "timeout_s" in (process.status.description or "")
    assert "Failed to detach context" not in caplog.text
    assert process.parent is not None  # a root producer span, even without a span at the submit


def test_eager_mode_traces_through_the_configured_middleware(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "asynctask.yaml").write_text(
        f"asynctask_eager: true\nasynctask_require: [{__name__}]\n"
        "asynctask_workers: {jobs: otel_plain}\nasynctask_middleware: [asynctask.otel.Tracing]\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in ("ASYNCTASK_TRANSPORT", "ASYNCTASK_CONFIG", "ASYNCTASK_EAGER"):
        monkeypatch.delenv(name, raising=False)
    transport = get_transport()
    request = submit_in_a_span(transport, [{"n": 5}])  # type: ignore[arg-type]
    (process,) = named(spans, "jobs process")
    assert process.context.trace_id == request.get_span_context().trace_id
    assert INSIDE[5] == (process.context.trace_id, process.context.span_id)


def test_without_a_tracer_provider_nothing_is_recorded_and_nothing_fails() -> None:
    chain = MiddlewareChain([Tracing(tracer_provider=trace.NoOpTracerProvider())])
    transport = MemoryTransport(f"memory://{uuid.uuid4().hex}")
    transport.middleware = chain
    transport.submit_task("jobs", {"n": 9})
    (task,) = transport.get_tasks("jobs", 1)
    assert META_KEY not in task.meta  # no span, no context: nothing to carry
    chain.before_process(task)
    chain.after_process(task, "acked", None)
    chain.on_worker_stop(Plain())
