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
POLICY_HEADER = "x-memeserve-policy"
"""The scene policy, for clients that cannot change request bodies."""
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")
"""W3C trace context a caller may send; the request's spans continue its trace."""
CORS_ALLOW_HEADERS = (
    "content-type",
    "authorization",
    REQUEST_ID_HEADER,
    REQUEST_TIMEOUT_HEADER,
    POLICY_HEADER,
    *TRACE_CONTEXT_HEADERS,
)
"""Request headers a cross-origin caller may send: every header the API documents."""
CORS_EXPOSE_HEADERS = (REQUEST_ID_HEADER, TRACE_ID_HEADER, "retry-after")
"""Response headers a cross-origin page may read."""
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) in ASGI ``headers``, or None."""
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def choose_request_id(incoming: str | None) -> str:
    """The caller's id if it is 1-128 safe characters, else a fresh one."""
    if incoming and _VALID.match(incoming):
        return incoming
    return uuid.uuid4().hex


MIN_REQUEST_TIMEOUT_S = 1.0
"""The shortest deadline a caller may ask for: below it no answer of ours could arrive
before Serve's proxy gives up with its own plain-text 408, so it is refused (400)."""


def caller_deadline_s(header: str | None) -> float | None:
    """The caller's deadline from ``x-request-timeout-seconds``; None for none (absent, ≤ 0).

    One rule for every route: anything but a finite number of seconds, or a deadline
    under :data:`MIN_REQUEST_TIMEOUT_S`, is a 400. Zero or less means "no timeout" to
    Serve's proxy; the configured deadline still holds then.
    """
    if header is None:
        return None
    try:
        wanted = float(header)
    except ValueError:
        raise BadInput("x-request-timeout-seconds must be a number of seconds") from None
    if not math.isfinite(wanted):
        raise BadInput("x-request-timeout-seconds must be a finite number of seconds")
    if wanted <= 0:
        return None
    if wanted < MIN_REQUEST_TIMEOUT_S:
        raise BadInput(
            f"x-request-timeout-seconds must be at least {MIN_REQUEST_TIMEOUT_S:g} s "
            "(or 0 for no deadline of your own)"
        )
    return wanted


def request_timeout_s(header: str | None, configured: float) -> float:
    """Seconds one request may take: ``configured``, or the caller's shorter deadline.

    Serve's proxy gives up at the caller's value and cuts the response, so the graph
    stops earlier — 10 % of it, at least 0.25 s and at most 0.5 s — and the caller gets
    the JSON 504 (a stream its ``error`` event) in that margin.
    """
    wanted = caller_deadline_s(header)
    if wanted is None:
        return configured
    return min(configured, wanted - max(0.25, min(0.5, wanted * 0.1)))
