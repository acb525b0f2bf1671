"""The outermost ASGI middleware: one request id, the request's span and count, no tracebacks."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.http.errors import error_response
from serve_app.http.headers import (
    REQUEST_ID_HEADER,
    REQUEST_TIMEOUT_HEADER,
    TRACE_ID_HEADER,
    caller_deadline_s,
    choose_request_id,
    header,
)
from serve_app.observability.logs import set_request_id
from serve_app.observability.metrics import count_request
from serve_app.observability.tracing import current_ids, stage

logger = logging.getLogger(__name__)

_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")
_TRACE_ID = TRACE_ID_HEADER.encode("latin-1")
_TIMEOUT = REQUEST_TIMEOUT_HEADER.encode("latin-1")


class RequestIdMiddleware:
    """Pure ASGI middleware: request id, the request's span and count, no tracebacks out.

    Serve's proxy already puts ``x-request-id`` on the request (the caller's, or a
    fresh one) and echoes it on the response; we adopt it when it is sane and make a
    new one otherwise, so the id in the body is always safe to log. When tracing is on,
    the response names its trace in ``x-trace-id``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(header(scope["headers"], _REQUEST_ID))
        set_request_id(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived_at"] = time.time()  # deadlines count from here, not from the route
        path = scope.get("path", "")
        attributes = {"http.request.method": scope.get("method", ""), "http.route": path}
        with stage("http", {**attributes, "request_id": request_id}) as span:
            trace_id, _ = current_ids()
            started = False

            async def tracking_send(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    count_request(path, status)
                    if trace_id is not None:
                        headers = list(message.get("headers", []))
                        headers.append((_TRACE_ID, trace_id.encode("ascii")))
                        message = {**message, "headers": headers}
                await send(message)

            try:
                # One rule for the deadline header on every route (400 when malformed).
                caller_deadline_s(header(scope["headers"], _TIMEOUT))
                await self.app(scope, receive, tracking_send)
            except Exception as exc:
                if started:
                    logger.exception("error after the response started")
                    return
                response = error_response(exc, request_id)
                await response(scope, receive, tracking_send)
