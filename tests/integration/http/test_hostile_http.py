"""The hostile corpus over real HTTP: status, error code, a clean JSON body, service still up."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.understanding.analysis import Analysis
from tests.support.hostile import CASES, UNIT_CASES, HostileCase

ANALYZE = "/v1/memes/analyze"
# Words that would mean a stack trace or internals leaked into a client-facing body.
LEAKS = ("traceback", 'file "', "pillow", "site-packages", "/serve_app/", "exception")
OBSERVED: dict[str, int] = {}


def _check(response: httpx.Response, case: HostileCase) -> None:
    assert response.status_code == case.status, (case.name, response.text[:500])
    lowered = response.text.lower()
    assert not any(word in lowered for word in LEAKS), (case.name, response.text[:500])
    body: dict[str, Any] = response.json()
    if case.ok:
        analysis = Analysis.model_validate(body)
        if case.size is not None:
            assert (analysis.meta.image.width, analysis.meta.image.height) == case.size
        if case.frames is not None:
            assert analysis.meta.image.frames == case.frames
        assert response.headers["content-type"].startswith("application/json")
        return
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["code"] == case.code, (case.name, error)
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["request_id"], str) and error["request_id"]
    assert case.mentions.lower() in error["message"].lower(), (case.name, error)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_multipart_upload_gets_its_status(client: httpx.Client, case: HostileCase) -> None:
    data = case.build()
    response = client.post(
        ANALYZE,
        files={"image": (case.filename, data, "image/jpeg")},
        headers={"x-request-id": f"hostile-{case.name}"},
    )
    OBSERVED[f"multipart:{case.name}"] = response.status_code
    _check(response, case)
    if not case.ok:
        assert response.json()["error"]["request_id"] == f"hostile-{case.name}"


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda case: case.name)
def test_json_base64_upload_gets_its_status(client: httpx.Client, case: HostileCase) -> None:
    data = case.build()
    encoded = base64.b64encode(data).decode()
    response = client.post(ANALYZE, json={"image_base64": f"data:image/jpeg;base64,{encoded}"})
    OBSERVED[f"json:{case.name}"] = response.status_code
    _check(response, case)


@pytest.mark.parametrize(
    "payload",
    [
        {"image_url": "http://169.254.169.254/latest/meta-data/"},
        {"image_base64": "", "image_url": "http://127.0.0.1:6379/"},
        {"items": [{"id": "a", "image_url": "file:///etc/passwd"}]},
    ],
)
def test_urls_are_never_fetched_for_a_client(client: httpx.Client, payload: dict[str, Any]) -> None:
    """No SSRF: the API takes image bytes only; a URL field is a schema error (422)."""
    route = ANALYZE + "/batch" if "items" in payload else ANALYZE
    response = client.post(route, json=payload)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_declared_oversized_body_is_refused_before_it_is_read(
    client: httpx.Client, base_url: str
) -> None:
    """413 from Content-Length alone: the server answers without waiting for the body."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/memes/analyze HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{"
        )
        answer = _read_response(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "payload_too_large" in answer


def _read_response(sock: Any) -> str:
    """Headers and the whole body (by its Content-Length) of one HTTP/1.1 response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-headers: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {body!r}"
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_service_keeps_serving_after_the_corpus(client: httpx.Client) -> None:
    """Runs after the corpus tests (file order): a normal meme and health still work."""
    meme = meme_bytes(MemeSpec(template=1, top="你说得对，但是"))
    response = client.post(ANALYZE, files={"image": ("meme.png", meme, "image/png")})
    assert response.status_code == 200, response.text
    analysis = Analysis.model_validate(response.json())
    assert analysis.meta.image.width == 600
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    print("\nobserved statuses:", OBSERVED)
