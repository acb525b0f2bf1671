"""The middleware Serve's proxy runs in front of the app (serve_app.http.edge)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from serve_app.http.edge import EdgeMiddleware, json_parse_errors, proxy_middlewares


def plain(status: int, text: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """An inner app answering like Serve's proxy does itself: a short text response."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        plain.seen = scope  # type: ignore[attr-defined]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": text, "more_body": False})

    return app


def call(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    asyncio.run(EdgeMiddleware(app)(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return int(start["status"]), dict(start["headers"]), body


@pytest.mark.parametrize(
    ("proxy_status", "status", "code", "retry_after"),
    [
        (408, 504, "deadline_exceeded", None),
        (503, 503, "unavailable", b"1"),
        (500, 500, "internal_error", None),
    ],
)
def test_the_proxys_own_text_errors_become_the_json_error(
    proxy_status: int, status: int, code: str, retry_after: bytes | None
) -> None:
    got, headers, body = call(
        plain(proxy_status, b"Request abc timed out after 1.0s."),
        [(b"x-request-id", b"caller-1")],
    )
    error = json.loads(body)["error"]
    assert got == status and error["code"] == code and error["request_id"] == "caller-1"
    assert "abc" not in error["message"]  # the proxy's internals are not echoed
    assert headers[b"content-type"] == b"application/json"
    assert headers.get(b"retry-after") == retry_after


def test_a_retry_after_the_proxy_sent_is_kept() -> None:
    _, headers, _ = call(plain(503, b"busy", [(b"retry-after", b"7")]), [])
    assert headers[b"retry-after"] == b"7"


def test_json_answers_of_the_app_pass_untouched() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"error": {"code": "x"}}'})

    status, _, body = call(app, [])
    assert status == 503 and body == b'{"error": {"code": "x"}}'


@pytest.mark.parametrize("value", [b"0.2", b"soon", b"nan"])
def test_a_deadline_no_answer_could_meet_is_refused_before_the_proxy_starts_its_timer(
    value: bytes,
) -> None:
    reached: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(True)

    status, headers, body = call(app, [(b"x-request-timeout-seconds", value)])
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "bad_input" and not reached
    assert headers[b"x-request-id"] == error["request_id"].encode()


def test_an_unsafe_request_id_is_replaced_before_serve_sees_it() -> None:
    app = plain(200, b"ok")
    call(app, [(b"x-request-id", b"has a space"), (b"x-request-id", b"second")])
    ids = [v for k, v in plain.seen["headers"] if k == b"x-request-id"]  # type: ignore[attr-defined]
    assert len(ids) == 1 and b" " not in ids[0] and len(ids[0]) == 32


def test_the_proxy_callback_installs_it_and_patches_uvicorns_parse_errors() -> None:
    (middleware,) = proxy_middlewares()
    assert middleware.cls is EdgeMiddleware
    assert "H11Protocol" in json_parse_errors()
