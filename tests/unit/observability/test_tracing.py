"""Spans of the graph's stages, the exporter hook Serve calls, and trace ids in logs."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from serve_app.observability import tracing
from serve_app.observability.logs import JsonFormatter, RequestIdFilter, set_request_id

_MEMORY = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> None:
    # The process-wide provider can be set once; Serve does the same in each replica.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_MEMORY))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another test set the global tracer provider first")


@pytest.fixture(autouse=True)
def _clear() -> None:
    _MEMORY.clear()


def test_stage_names_the_span_and_drops_missing_attributes() -> None:
    with tracing.stage("engine", {"memeserve.engine": "lite", "memeserve.tokens.output": None}):
        tracing.annotate({"memeserve.level": 2, "memeserve.risk": None})
    (span,) = _MEMORY.get_finished_spans()
    assert span.name == "memeserve.engine"
    assert dict(span.attributes or {}) == {"memeserve.engine": "lite", "memeserve.level": 2}


def test_nested_stages_share_the_trace_and_link_parents() -> None:
    with tracing.stage("analyze") as outer, tracing.stage("preprocess"):
        trace_id, span_id = tracing.current_ids()
    inner_span, outer_span = _MEMORY.get_finished_spans()
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id
    assert inner_span.context.trace_id == outer_span.context.trace_id
    assert trace_id == format(outer.get_span_context().trace_id, "032x")
    assert span_id == format(inner_span.context.span_id, "016x")


def test_an_exception_marks_the_span_as_an_error() -> None:
    with pytest.raises(ValueError), tracing.stage("structure"):
        raise ValueError("bad model text")
    (span,) = _MEMORY.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_no_ids_outside_a_span() -> None:
    assert tracing.current_ids() == (None, None)


@pytest.mark.parametrize(
    ("environ", "mode"),
    [
        ({}, "file"),
        ({"MEMESERVE_TRACES": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
    ],
)
def test_exporter_mode_follows_the_environment(environ: dict[str, str], mode: str) -> None:
    assert tracing.exporter_mode(environ) == mode


def test_an_unknown_exporter_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="MEMESERVE_TRACES"):
        tracing.exporter_mode({"MEMESERVE_TRACES": "jaeger"})


def _export_one(processors: list, name: str) -> None:  # type: ignore[type-arg]
    provider = TracerProvider()
    for processor in processors:
        provider.add_span_processor(processor)
    with provider.get_tracer("test").start_as_current_span(name, attributes={"k": "v"}):
        pass
    provider.shutdown()


def test_file_exporter_writes_one_json_span_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMESERVE_TRACES_DIR", str(tmp_path))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    _export_one(tracing.span_processors(), "first")
    _export_one(tracing.span_processors(), "second")
    (path,) = tmp_path.iterdir()
    lines = path.read_text().splitlines()
    spans = [json.loads(line) for line in lines]
    assert [span["name"] for span in spans] == ["first", "second"]
    assert spans[0]["attributes"] == {"k": "v"}
    assert len(spans[0]["context"]["trace_id"]) == 34  # 0x + 32 hex digits


def test_the_periodic_load_reports_are_not_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle graph writes no spans: the replicas' reports to the controller are dropped."""
    monkeypatch.setenv("MEMESERVE_TRACES_DIR", str(tmp_path))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    provider = TracerProvider()
    for processor in tracing.span_processors():
        provider.add_span_processor(processor)
    for name in (
        "replica_handle_request LoadController report",
        "route_to_replica LoadController state",
        "replica_handle_request LoadController status",  # a /v1/status call: kept
        "memeserve.http",
    ):
        with provider.get_tracer("test").start_as_current_span(name):
            pass
    provider.shutdown()
    (path,) = tmp_path.iterdir()
    names = [json.loads(line)["name"] for line in path.read_text().splitlines()]
    assert names == ["replica_handle_request LoadController status", "memeserve.http"]


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces"
    finally:
        server.shutdown()


def test_otlp_exporter_sends_spans_to_the_configured_endpoint(
    collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "memeserve-test")
    _export_one(tracing.span_processors(), "memeserve.engine")
    names = [
        span.name
        for request in _Collector.received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert names == ["memeserve.engine"]


def _log_line(message: str) -> dict[str, object]:
    record = logging.LogRecord("serve_app.x", logging.WARNING, __file__, 1, message, (), None)
    RequestIdFilter().filter(record)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_json_logs_carry_the_request_and_trace_ids() -> None:
    set_request_id("req-42")
    with tracing.stage("analyze"):
        trace_id, span_id = tracing.current_ids()
        entry = _log_line("analysed 讽刺")
    assert entry["message"] == "analysed 讽刺"
    assert entry["request_id"] == "req-42"
    assert entry["trace_id"] == trace_id and entry["span_id"] == span_id
    assert entry["level"] == "WARNING" and entry["logger"] == "serve_app.x"


def test_json_logs_outside_a_trace_have_no_trace_id() -> None:
    entry = _log_line("idle")
    assert entry["trace_id"] is None
