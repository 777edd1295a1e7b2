"""A worker that logs, and a tracing middleware that writes its spans to a file, for the tests of
``asynctask-workers`` with OpenTelemetry and ``--log-format json`` (imported by the children with
``asynctask_require``; the middleware is named in ``asynctask_middleware``).

:class:`FileTracing` is :class:`asynctask.otel.Tracing` with the process's tracer provider set up on
its first use: every span is one JSON line in ``$ASYNCTASK_TEST_SPANS``, written in a batch when the
middleware flushes the provider as the child stops (a child leaves with ``os._exit``: no ``atexit``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from asynctask.otel import Tracing
from asynctask.workers import AsyncTaskWorker

logger = logging.getLogger("observe_fixture")


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON line appended to ``path`` (one write per span: children share the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            line = {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "attributes": dict(span.attributes or {}),
                "status": span.status.status_code.name,
                "pid": os.getpid(),
            }
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


class FileTracing(Tracing):
    def __init__(self) -> None:
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider()
            exporter = JsonLinesExporter(os.environ["ASYNCTASK_TEST_SPANS"])
            # batched, and not exported before the child stops: only the middleware's flush writes them
            provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
            trace.set_tracer_provider(provider)
        super().__init__()


class Observed(AsyncTaskWorker):
    name = "acc_observed"
    max_attempts = 1

    def process(self, payload: dict[str, Any]) -> None:
        logger.info("working on %s", payload.get("n"))
        if payload.get("fail"):
            raise ValueError(f"boom in task {payload.get('n')}")


class ObservedThreads(Observed):
    name = "acc_observed_threads"
    concurrency = 3


class ObservedAsync(AsyncTaskWorker):
    name = "acc_observed_async"
    concurrency = 3
    max_attempts = 1

    async def process(self, payload: dict[str, Any]) -> None:
        logger.info("working on %s", payload.get("n"))
        if payload.get("fail"):
            raise ValueError(f"boom in task {payload.get('n')}")
