"""Request bodies: read within a byte limit, then parsed as multipart or JSON (400/413/415/422)."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from serve_app.errors import BadInput, PayloadTooLarge, SchemaError, UnsupportedMediaType
from serve_app.http.errors import validation_message
from serve_app.http.wire import AnalyzeJSONRequest, BatchRequest


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise BadInput("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def decode_base64_image(value: str) -> bytes:
    """Base64 (optionally a ``data:`` URL) → bytes; 400 when it is not base64."""
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image_base64 is not valid base64") from None


def _is_json(content_type: str) -> bool:
    return content_type.startswith("application/json") or content_type.endswith("+json")


async def parse_analyze_input(request: Request, body_limit: int) -> tuple[bytes, str | None]:
    """(image bytes, context text) from a multipart or JSON analyze request."""
    content_type = request.headers.get("content-type", "").lower()
    body = await read_body_limited(request, body_limit)
    if content_type.startswith("multipart/form-data"):
        replayed = Request(request.scope, _replay(body))
        try:
            form = await replayed.form(max_files=1, max_fields=8, max_part_size=body_limit)
        except Exception as exc:
            raise BadInput(f"malformed multipart body: {exc}") from None
        try:
            image = form.get("image")
            text = form.get("text")
            if image is None:
                raise SchemaError("multipart field 'image' (a file) is required")
            if not isinstance(image, UploadFile):
                raise SchemaError("multipart field 'image' must be a file upload")
            if text is not None and not isinstance(text, str):
                raise SchemaError("multipart field 'text' must be a plain text field")
            return await image.read(), text
        finally:
            # Closes the parts' spooled temporary files on errors too, not at collection.
            await form.close()
    if _is_json(content_type):
        payload = _json_payload(body)
        try:
            parsed = AnalyzeJSONRequest.model_validate(payload)
        except ValidationError as exc:
            raise SchemaError(validation_message(exc.errors())) from None
        return decode_base64_image(parsed.image_base64), parsed.text
    raise UnsupportedMediaType(
        "send multipart/form-data (fields image, text) or application/json (image_base64, text)"
    )


async def parse_batch_input(request: Request, body_limit: int) -> BatchRequest:
    """The batch body, read within ``body_limit`` bytes and validated (415/400/413/422)."""
    content_type = request.headers.get("content-type", "").lower()
    if not _is_json(content_type):
        raise UnsupportedMediaType('send application/json: {"items": [{"id", "image_base64"}]}')
    payload = _json_payload(await read_body_limited(request, body_limit))
    try:
        return BatchRequest.model_validate(payload)
    except ValidationError as exc:
        raise SchemaError(validation_message(exc.errors())) from None


def _json_payload(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("request body is not valid JSON") from None
