"""Structured logs, with the request id of the current task.

The request id (chosen by :mod:`serve_app.http.headers`) is carried in a contextvar;
every log record of our packages is one JSON object per line with the request id and
the OpenTelemetry trace and span ids of the current span (see
:mod:`serve_app.observability.tracing`), so a log line and its trace find each other.
``MEMESERVE_LOG_FORMAT=text`` switches to plain lines for reading in a terminal.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
from typing import Any

from serve_app.observability.replica import current_replica
from serve_app.observability.tracing import current_ids

LOG_FORMAT_ENV = "MEMESERVE_LOG_FORMAT"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def set_request_id(request_id: str) -> None:
    """Make ``request_id`` the current one for log records of this task."""
    request_id_var.set(request_id)


def current_request_id() -> str:
    """The request id of the current task, or ``"-"`` outside a request."""
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` and ``span_id`` from the current context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = current_ids()
        return True


def _replica() -> dict[str, str]:
    context = current_replica()
    if context is None:
        return {}
    return {"deployment": context.deployment, "replica": context.replica_tag}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, ids, replica, exception."""

    def __init__(self) -> None:
        super().__init__()
        self._replica: dict[str, str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._replica is None:
            self._replica = _replica()
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            **self._replica,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter() -> logging.Formatter:
    if os.environ.get(LOG_FORMAT_ENV, "json").strip().lower() == "text":
        return logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(trace_id)s] %(message)s"
        )
    return JsonFormatter()


def configure_logging(level: int = logging.INFO) -> None:
    """Log our packages to stderr, structured; idempotent per process."""
    for name in ("serve_app", "deployments"):
        logger = logging.getLogger(name)
        if any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
            continue
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(_formatter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
