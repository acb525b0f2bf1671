"""Request bodies: multipart and JSON parsing, limits, and cleanup of uploaded parts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message

from serve_app.errors import BadInput, PayloadTooLarge, SchemaError, UnsupportedMediaType
from serve_app.http.body import parse_analyze_input, parse_batch_input

BOUNDARY = "memeserve-test-boundary"


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of (field name, file name or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def request(body: bytes, content_type: str, policy_header: str | None = None) -> Request:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if policy_header is not None:
        headers.append((b"x-memeserve-policy", policy_header.encode()))
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


def parse(
    body: bytes, content_type: str, limit: int = 1 << 20, policy_header: str | None = None
) -> tuple[bytes, str | None, str | None]:
    return asyncio.run(parse_analyze_input(request(body, content_type, policy_header), limit))


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
def closed_forms(monkeypatch: pytest.MonkeyPatch) -> list[FormData]:
    """Every FormData whose parts were closed (their spooled temporary files released)."""
    closed: list[FormData] = []
    original = FormData.close

    async def recording_close(self: FormData) -> None:
        closed.append(self)
        await original(self)

    monkeypatch.setattr(FormData, "close", recording_close)
    return closed


def test_a_multipart_upload_gives_the_image_and_the_text(closed_forms: list[FormData]) -> None:
    body = multipart(("image", "m.png", b"PNGDATA"), ("text", None, "笑死".encode()))
    assert parse(body, MULTIPART) == (b"PNGDATA", "笑死", None)
    assert len(closed_forms) == 1


def test_the_policy_comes_from_the_body_else_the_header() -> None:
    with_field = multipart(("image", "m.png", b"PNGDATA"), ("policy", None, b"support"))
    assert parse(with_field, MULTIPART) == (b"PNGDATA", None, "support")
    assert parse(with_field, MULTIPART, policy_header="moderation")[2] == "support"
    plain = multipart(("image", "m.png", b"PNGDATA"))
    assert parse(plain, MULTIPART, policy_header="moderation")[2] == "moderation"
    as_json = json.dumps({"image_base64": "UE5HREFUQQ==", "policy": "support"}).encode()
    assert parse(as_json, "application/json") == (b"PNGDATA", None, "support")
    with pytest.raises(SchemaError, match="policy"):
        parse(
            json.dumps({"image_base64": "UE5HREFUQQ==", "policy": "x" * 65}).encode(),
            "application/json",
        )


@pytest.mark.parametrize(
    "parts",
    [
        [("photo", "m.png", b"PNGDATA")],  # no image field
        [("image", None, b"not a file")],  # image is a plain field
        [("text", None, "只有文字".encode()), ("other", "o.png", b"PNGDATA")],  # wrong file name
    ],
    ids=["image-missing", "image-not-a-file", "file-under-another-name"],
)
def test_a_schema_error_still_closes_the_uploaded_parts(
    closed_forms: list[FormData], parts: list[tuple[str, str | None, bytes]]
) -> None:
    with pytest.raises(SchemaError):
        parse(multipart(*parts), MULTIPART)
    assert len(closed_forms) == 1


def test_a_body_over_the_limit_is_413_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        parse(multipart(("image", "m.png", b"x" * 2000)), MULTIPART, limit=1000)


def test_json_bodies_and_their_errors() -> None:
    good = json.dumps({"image_base64": "UE5HREFUQQ==", "text": "t"}).encode()
    assert parse(good, "application/json") == (b"PNGDATA", "t", None)
    with pytest.raises(BadInput, match="not valid JSON"):
        parse(b"{", "application/json")
    with pytest.raises(SchemaError, match="image_base64"):
        parse(b"{}", "application/json")
    with pytest.raises(BadInput, match="base64"):
        parse(json.dumps({"image_base64": "!!"}).encode(), "application/json")
    with pytest.raises(UnsupportedMediaType):
        parse(b"raw", "image/png")


def test_a_batch_error_names_the_item_and_field() -> None:
    body = json.dumps({"items": [{"id": "a"}]}).encode()
    with pytest.raises(SchemaError, match=r"items\.0\.image_base64"):
        asyncio.run(parse_batch_input(request(body, "application/json"), 1 << 20))
