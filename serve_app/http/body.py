"""Request bodies: read within a byte limit, then parsed as multipart or JSON (400/413/415/422)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from serve_app.errors import BadInput, PayloadTooLarge, SchemaError, UnsupportedMediaType
from serve_app.http.errors import validation_message
from serve_app.http.headers import POLICY_HEADER
from serve_app.http.wire import AnalyzeJSONRequest, BatchRequest

M = TypeVar("M", bound=BaseModel)


ImageBody = TypeVar("ImageBody", bound=BaseModel)


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


async def parse_analyze_input(
    request: Request, body_limit: int
) -> tuple[bytes, str | None, str | None]:
    """(image bytes, context text, policy) from a multipart or JSON analyze request.

    The policy is the body's ``policy`` field, else the ``x-memeserve-policy`` header.
    """
    data, fields = await parse_image_input(request, body_limit, AnalyzeJSONRequest)
    policy = fields.get("policy") or request.headers.get(POLICY_HEADER) or None
    return data, fields.get("text"), policy


async def parse_image_input(
    request: Request, body_limit: int, model: type[ImageBody]
) -> tuple[bytes, dict[str, Any]]:
    """(image bytes, the other fields) of a multipart (``image`` file + text fields) or JSON
    (``image_base64`` + fields) body; the fields are ``model``'s, validated as it says."""
    content_type = request.headers.get("content-type", "").lower()
    names = [name for name in model.model_fields if name != "image_base64"]
    body = await read_body_limited(request, body_limit)
    if content_type.startswith("multipart/form-data"):
        replayed = Request(request.scope, _replay(body))
        try:
            form = await replayed.form(max_files=1, max_fields=8, max_part_size=body_limit)
        except Exception as exc:
            raise BadInput(f"malformed multipart body: {exc}") from None
        try:
            image = form.get("image")
            if image is None:
                raise SchemaError("multipart field 'image' (a file) is required")
            if not isinstance(image, UploadFile):
                raise SchemaError("multipart field 'image' must be a file upload")
            fields: dict[str, Any] = {}
            for name in names:
                value = form.get(name)
                if value is not None and not isinstance(value, str):
                    raise SchemaError(f"multipart field {name!r} must be a plain text field")
                if value is not None:
                    fields[name] = value
            data = await image.read()
        finally:
            # Closes the parts' spooled temporary files on errors too, not at collection.
            await form.close()
        try:
            checked = model.model_validate({"image_base64": "-", **fields})
        except ValidationError as exc:
            raise SchemaError(validation_message(exc.errors())) from None
        return data, checked.model_dump(exclude={"image_base64"})
    if _is_json(content_type):
        fields = _validated(_json_payload(body), model).model_dump()
        return decode_base64_image(fields.pop("image_base64")), fields
    raise UnsupportedMediaType(
        f"send multipart/form-data (fields image, {', '.join(names)}) or application/json "
        f"(image_base64, {', '.join(names)})"
    )


async def parse_batch_input(request: Request, body_limit: int) -> BatchRequest:
    """The batch body, read within ``body_limit`` bytes and validated (415/400/413/422)."""
    return await parse_json_input(
        request,
        body_limit,
        BatchRequest,
        'send application/json: {"items": [{"id", "image_base64"}]}',
    )


async def parse_json_input(
    request: Request, body_limit: int, model: type[M], hint: str | None = None
) -> M:
    """A JSON body read within ``body_limit`` bytes and validated as ``model`` (415/400/413/422)."""
    content_type = request.headers.get("content-type", "").lower()
    if not _is_json(content_type):
        raise UnsupportedMediaType(hint or "send application/json")
    return _validated(_json_payload(await read_body_limited(request, body_limit)), model)


def _validated(payload: object, model: type[M]) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise SchemaError(validation_message(exc.errors())) from None


def _json_payload(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("request body is not valid JSON") from None
