"""OpenTelemetry spans for every stage of the graph, carried by Ray Serve's own tracing.

Serve does the plumbing when the config file has a top-level ``tracing_config``: each
proxy and replica gets a tracer provider, an incoming ``traceparent`` header becomes the
parent of the request's spans, and the context travels with every ``DeploymentHandle``
call. This module adds the two pieces Serve leaves to the application:

- :func:`span_processors`, the exporter hook that ``tracing_config.exporter_import_path``
  names. It exports over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, and otherwise writes one JSON span per line
  to a file per process (in ``MEMESERVE_TRACES_DIR``, else Serve's ``logs/serve/spans``),
  or to stderr with ``MEMESERVE_TRACES=console``.
- :func:`stage`, the span around one stage of our own work, with its attributes and
  the deployment that ran it (``memeserve.deployment``).

Without ``tracing_config`` the global tracer provider is OpenTelemetry's no-op one, so
:func:`stage` costs next to nothing and records nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from serve_app.observability.replica import current_replica

TRACES_DIR_ENV = "MEMESERVE_TRACES_DIR"
TRACES_MODE_ENV = "MEMESERVE_TRACES"
_OTLP_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

AttributeValue = str | bool | int | float
_tracer = trace.get_tracer("memeserve")


def _json_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def _spans_dir() -> Path:
    configured = os.environ.get(TRACES_DIR_ENV)
    if configured:
        return Path(configured)
    from ray.serve._private.logging_utils import get_serve_logs_dir

    return Path(get_serve_logs_dir()) / "spans"


@functools.cache
def _deployment() -> str | None:
    context = current_replica()
    return None if context is None else str(context.deployment)


def exporter_mode(environ: Mapping[str, str] = os.environ) -> str:
    """``otlp`` when an OTLP endpoint is set, else ``console`` or ``file`` (the default)."""
    if any(environ.get(name) for name in _OTLP_ENDPOINT_ENVS):
        return "otlp"
    mode = environ.get(TRACES_MODE_ENV, "file").strip().lower()
    if mode not in ("file", "console"):
        raise ValueError(f"{TRACES_MODE_ENV} must be 'file' or 'console', not {mode!r}")
    return mode


# Serve traces every handle call, including the replicas' periodic load reports to the
# LoadController: a few per second whether or not any request comes in. They say
# nothing about a request, so they are not exported (idle span files stay still).
_BACKGROUND_SPAN = re.compile(
    r"^(replica_handle_request|route_to_replica) LoadController (report|state)$"
)


class RequestSpansOnly(SpanProcessor):
    """Passes every span to ``inner`` but the graph's periodic background calls."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not _BACKGROUND_SPAN.match(span.name):
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def span_processors() -> list[SpanProcessor]:
    """Serve's exporter hook (``tracing_config.exporter_import_path``), once per process."""
    mode = exporter_mode()
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
        return [RequestSpansOnly(BatchSpanProcessor(OTLPSpanExporter()))]
    out: IO[str]
    if mode == "console":
        out = sys.stderr
    else:
        directory = _spans_dir()
        directory.mkdir(parents=True, exist_ok=True)
        name = f"spans-{socket.gethostname()}-{os.getpid()}.jsonl"
        out = (directory / name).open("a", encoding="utf-8", buffering=1)
    exporter = ConsoleSpanExporter(out=out, formatter=_json_line)
    return [RequestSpansOnly(SimpleSpanProcessor(exporter))]


@contextlib.contextmanager
def stage(
    name: str,
    attributes: Mapping[str, AttributeValue | None] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A ``memeserve.<name>`` span around one stage; ``None`` attributes are left out.

    An exception leaving the block marks the span as an error and is recorded on it.
    """
    clean = {key: value for key, value in (attributes or {}).items() if value is not None}
    deployment = _deployment()
    if deployment is not None:
        clean["memeserve.deployment"] = deployment
    with _tracer.start_as_current_span(f"memeserve.{name}", kind=kind, attributes=clean) as span:
        yield span


def mark_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` as failed by ``exc`` when the stage answers with it instead of raising."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Add attributes to the current span (a no-op when nothing is recorded)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def current_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span as hex, or (None, None) outside a trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
