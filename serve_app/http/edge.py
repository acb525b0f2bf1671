"""Middleware that Serve's HTTP proxy runs in front of the app: our contract at the edge.

Serve's proxy answers some requests itself, before or instead of the Ingress, with
plain text: its 408 when ``x-request-timeout-seconds`` runs out, its 503 when a
deployment's queue is full (backpressure), its 500 on an internal failure. It also
adopts any ``x-request-id`` raw, for its logs and the response header. Installed with
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.http.edge:proxy_middlewares`` in
the environment Ray starts in (``memeserve run`` and the profiles set it), this
middleware makes those answers the service's own:

* every request gets one safe request id before Serve sees it (an unsafe one is
  replaced), so Serve's logs, the response header and the body agree;
* ``x-request-timeout-seconds`` is checked before the proxy starts its timer
  (:func:`serve_app.http.headers.caller_deadline_s`): a value no answer could meet is a
  JSON 400 at once instead of the proxy's text 408 later;
* the proxy's own plain-text errors become the JSON error body — a timeout the JSON
  504 ``deadline_exceeded``, backpressure 503 ``unavailable`` with ``Retry-After``;
* a request the HTTP server cannot parse gets the JSON 400 too (:func:`json_parse_errors`).

Responses of the app (JSON already) pass untouched. It imports no Ray, no FastAPI.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.errors import BadInput
from serve_app.http.headers import (
    REQUEST_ID_HEADER,
    REQUEST_TIMEOUT_HEADER,
    caller_deadline_s,
    choose_request_id,
    header,
)
from serve_app.http.text_errors import JsonErrors, Replacement, error_body, error_messages

logger = logging.getLogger(__name__)


_REQUEST_ID = REQUEST_ID_HEADER.encode("latin-1")
_TIMEOUT = REQUEST_TIMEOUT_HEADER.encode("latin-1")
# The proxy's own answers, and what the caller gets instead.
_PROXY_ERRORS: dict[int, Replacement] = {
    408: Replacement(504, "deadline_exceeded", "no answer within the request's deadline"),
    429: Replacement(429, "too_many_requests", "the service is at capacity; retry shortly", 1),
    500: Replacement(500, "internal_error", "internal error; see the service logs"),
    503: Replacement(503, "unavailable", "the service is at capacity; retry shortly", 1),
}


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback: the middleware list it wraps around the proxy's app.

    Called once in each proxy process before its HTTP server starts, so it also makes
    that server's answer to a request it cannot parse our JSON error
    (:func:`json_parse_errors`).
    """
    json_parse_errors()
    return [Middleware(EdgeMiddleware)]


def _parse_error_response(message: str) -> bytes:
    request_id = choose_request_id(None)
    body = error_body("bad_request", message, request_id)
    head = (
        "HTTP/1.1 400 Bad Request\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def json_parse_errors() -> list[str]:
    """Make uvicorn answer unparseable requests (``Content-Length: abc``) with our JSON 400.

    Such a request never becomes ASGI, so no middleware sees it: uvicorn's protocols
    write a text 400 and close. Their ``send_400_response`` is replaced in this process
    (the proxy's) by one that writes the JSON error body and closes the same way.
    Returns the protocol classes patched (none when uvicorn's layout changed).
    """
    patched: list[str] = []
    for module_name, class_name in (
        ("uvicorn.protocols.http.h11_impl", "H11Protocol"),
        ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # httptools is optional
            continue
        protocol = getattr(module, class_name, None)
        if protocol is None or not hasattr(protocol, "send_400_response"):
            logger.warning(
                "uvicorn's %s has no send_400_response: parse errors stay text", class_name
            )
            continue

        def send_400_response(self: Any, msg: str) -> None:
            self.transport.write(_parse_error_response(msg))
            self.transport.close()

        protocol.send_400_response = send_400_response
        patched.append(class_name)
    return patched


class EdgeMiddleware:
    """Pure ASGI middleware for Serve's proxy; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        request_id = choose_request_id(header(headers, _REQUEST_ID))
        headers = [(k, v) for k, v in headers if k.lower() != _REQUEST_ID]
        headers.append((_REQUEST_ID, request_id.encode("latin-1")))
        scope = {**scope, "headers": headers}
        try:
            caller_deadline_s(header(headers, _TIMEOUT))
        except BadInput as exc:
            echo = [(b"x-request-id", request_id.encode("latin-1"))]
            for message in error_messages(exc.status, exc.code, exc.message, request_id, echo):
                await send(message)
            return
        await self.app(scope, receive, JsonErrors(send, request_id, _PROXY_ERRORS))
