"""The request headers the service reads: ``x-request-id`` and ``x-request-timeout-seconds``."""

from __future__ import annotations

import math
import re
import uuid

from serve_app.errors import BadInput

REQUEST_ID_HEADER = "x-request-id"
REQUEST_TIMEOUT_HEADER = "x-request-timeout-seconds"
TRACE_ID_HEADER = "x-trace-id"
"""Names the trace of the request on its response, when tracing is on."""
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")
"""W3C trace context a caller may send; the request's spans continue its trace."""
CORS_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    REQUEST_ID_HEADER,
    REQUEST_TIMEOUT_HEADER,
    *TRACE_CONTEXT_HEADERS,
)
"""Request headers a cross-origin caller may send: every header the API documents."""
CORS_EXPOSE_HEADERS = (REQUEST_ID_HEADER, TRACE_ID_HEADER, "retry-after")
"""Response headers a cross-origin page may read."""
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def choose_request_id(incoming: str | None) -> str:
    """The caller's id if it is 1-128 safe characters, else a fresh one."""
    if incoming and _VALID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def request_timeout_s(header: str | None, configured: float) -> float:
    """Seconds one request may take: ``configured``, or the caller's shorter deadline.

    ``header`` is ``x-request-timeout-seconds``. Serve's proxy gives up at that value
    with a plain-text error, so the graph stops a little earlier (10 %, at most 0.5 s)
    and the caller gets the JSON 504. Zero or less means "no timeout" to Serve; the
    configured deadline still holds. Anything but a number is a 400.
    """
    if header is None:
        return configured
    try:
        wanted = float(header)
    except ValueError:
        raise BadInput("x-request-timeout-seconds must be a number of seconds") from None
    if not math.isfinite(wanted):
        raise BadInput("x-request-timeout-seconds must be a finite number of seconds")
    if wanted <= 0:
        return configured
    return min(configured, wanted - min(0.5, wanted * 0.1))
