"""Plain-text error responses made by code we don't own, rewritten as our JSON error body.

Serve's proxy and Starlette's CORS middleware answer some requests themselves with a
short ``text/plain`` body. :class:`JsonErrors` wraps an ASGI ``send`` and replaces
such a response, by its status, with ``{"error": {"code", "message", "request_id"}}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Send

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replacement:
    """What a plain-text response of one status becomes."""

    status: int
    code: str
    message: str | None = None
    """None: the original text, which then must be safe to show (Starlette's are)."""
    retry_after_s: int | None = None
    """Added as ``Retry-After`` unless the response has one."""


def error_body(code: str, message: str, request_id: str) -> bytes:
    """``{"error": {"code", "message", "request_id"}}`` as the bytes of a response body."""
    detail = {"code": code, "message": message, "request_id": request_id}
    return json.dumps({"error": detail}).encode("utf-8")


def error_messages(
    status: int, code: str, message: str, request_id: str, headers: list[tuple[bytes, bytes]]
) -> list[Message]:
    """The ASGI messages of a JSON error response with ``headers`` kept."""
    body = error_body(code, message, request_id)
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *kept,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


class JsonErrors:
    """``send`` that turns plain-text responses of the given statuses into JSON errors."""

    def __init__(self, send: Send, request_id: str, replace: dict[int, Replacement]) -> None:
        self._send = send
        self._request_id = request_id
        self._replace = replace
        self._held: Message | None = None
        self._text = b""

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self._is_plain_error(message):
            self._held = message
            return
        if kind == "http.response.body" and self._held is not None:
            self._text += message.get("body", b"")[:1000]
            if message.get("more_body", False):
                return
            held, self._held = self._held, None
            await self._send_json(held)
            return
        await self._send(message)

    async def _send_json(self, held: Message) -> None:
        original = int(held["status"])
        replacement = self._replace[original]
        headers: list[tuple[bytes, bytes]] = list(held.get("headers", []))
        if replacement.retry_after_s is not None and not any(
            k.lower() == b"retry-after" for k, _ in headers
        ):
            headers.append((b"retry-after", str(replacement.retry_after_s).encode("ascii")))
        text = replacement.message or self._text.decode("utf-8", "replace").strip()
        logger.info(
            "plain-text %d sent as JSON %d %s", original, replacement.status, replacement.code
        )
        for out in error_messages(
            replacement.status, replacement.code, text, self._request_id, headers
        ):
            await self._send(out)

    def _is_plain_error(self, message: Message) -> bool:
        if int(message["status"]) not in self._replace:
            return False
        content_type: Any = next(
            (v for k, v in message.get("headers", []) if k.lower() == b"content-type"), b""
        )
        return not bytes(content_type).lower().startswith(b"application/json")
