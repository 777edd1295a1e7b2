"""OpenTelemetry through ``asynctask-workers``: the producer (this process) submits inside a span, the
workers (children on the filesystem transport) export their spans to a file; each consumer span is
in the producer's trace, a child of its producer span (plain, threads and async workers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workers_support import Env

from asynctask.cli.exit_codes import EXIT_OK
from asynctask.middleware import MiddlewareChain
from asynctask.otel import Tracing

QUEUES = {"plain": "acc_observed", "lanes": "acc_observed_threads", "coros": "acc_observed_async"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.close()


def test_the_workers_consumer_spans_are_in_the_producers_trace(world: Env) -> None:
    spans_file = world.tmp / "spans.jsonl"
    world.env["ASYNCTASK_TEST_SPANS"] = str(spans_file)
    config = world.config(
        QUEUES, asynctask_require=["observe_fixture"], asynctask_middleware=["observe_fixture.FileTracing"]
    )
    provider = TracerProvider()  # this process's own: the unit tests may have set the global one
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    world.transport.middleware = MiddlewareChain([Tracing(tracer_provider=provider)])
    submitted: dict[str, str] = {}
    with provider.get_tracer("test").start_as_current_span("request") as request:
        for queue in QUEUES:
            submitted[world.transport.submit_task(queue, {"n": 1})] = queue
            submitted[world.transport.submit_task(queue, {"n": 2, "fail": True})] = queue

    result = world.run("--config", config, "--halt-when-empty")
    assert result.returncode == EXIT_OK, result.stderr

    trace_id = f"{request.get_span_context().trace_id:032x}"
    producers = {
        f"{span.context.span_id:016x}" for span in exporter.get_finished_spans() if span.kind.name == "PRODUCER"
    }
    assert len(producers) == 6
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    consumers = [span for span in spans if span["kind"] == "CONSUMER"]
    assert sorted(span["attributes"]["messaging.message.id"] for span in consumers) == sorted(submitted)
    for span in consumers:
        attributes = span["attributes"]
        queue = submitted[attributes["messaging.message.id"]]
        assert span["name"] == f"{queue} process" and attributes["messaging.destination.name"] == queue
        assert span["trace_id"] == trace_id and span["parent_span_id"] in producers
        assert attributes["messaging.system"] == "asynctask" and attributes["messaging.asynctask.attempt"] == 1
        assert attributes["messaging.asynctask.worker"] == QUEUES[queue]
        assert span["status"] == ("ERROR" if attributes["messaging.asynctask.outcome"] == "dead" else "UNSET")
    assert (
        sorted(span["attributes"]["messaging.asynctask.outcome"] for span in consumers) == ["acked"] * 3 + ["dead"] * 3
    )
    assert len({span["parent_span_id"] for span in consumers}) == 6
