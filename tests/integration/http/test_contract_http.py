"""The HTTP contract where the README was found untrue: every error JSON, one request id.

Runs behind Serve's proxy with ``serve_app.http.edge`` installed, as ``memeserve run``
installs it: the proxy's own refusals, a malformed request line and CORS refusals are
checked to carry the JSON error body too.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.memes import png_header_only

ORIGIN = "https://web.example"
MAX_BYTES = 200_000
MAX_TEXT = 100


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    return {
        "limits": {"max_bytes": MAX_BYTES, "max_text_chars": MAX_TEXT, "max_pixels": 4_000_000},
        "security": {"cors_allow_origins": [ORIGIN]},
    }


def meme(seed: int) -> bytes:
    return meme_bytes(MemeSpec(template=seed % 20, top=f"第{seed}张", bottom="笑死"))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"] and error["request_id"]
    assert response.headers["x-request-id"] == error["request_id"]
    return error


def events_of(text: str) -> list[str]:
    return [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event:")]


def test_a_stream_refuses_an_overlong_text_before_it_opens(client: httpx.Client) -> None:
    response = client.post(
        "/v1/memes/analyze/stream",
        files={"image": ("m.png", meme(1))},
        data={"text": "长" * (MAX_TEXT + 1)},
    )
    error = assert_error(response, 422, "invalid_request")
    assert f"the limit is {MAX_TEXT}" in error["message"]


def test_a_stream_refuses_an_image_over_max_bytes_inside_the_body_limit(
    client: httpx.Client,
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES + 10_000)  # under the body limit (4/3 + 64 KB)
    response = client.post("/v1/memes/analyze/stream", files={"image": ("m.png", big)})
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_media_type"),
        (png_header_only(4000, 4000), 413, "payload_too_large"),
    ],
    ids=["svg", "pixels"],
)
def test_a_stream_refuses_what_the_header_shows_before_it_opens(
    client: httpx.Client, payload: bytes, status: int, code: str
) -> None:
    response = client.post("/v1/memes/analyze/stream", files={"image": ("m.png", payload)})
    assert_error(response, status, code)


def test_a_huge_header_names_the_configured_pixel_limit(client: httpx.Client) -> None:
    response = client.post(
        "/v1/memes/analyze", files={"image": ("m.png", png_header_only(65535, 65535))}
    )
    error = assert_error(response, 413, "payload_too_large")
    assert error["message"] == "image is 4294836225 pixels; the limit is 4000000"


@pytest.mark.parametrize("value", ["0.05", "0.1", "0.2", "0.3", "0.5", "0.9"])
@pytest.mark.parametrize("route", ["/v1/memes/analyze", "/v1/memes/analyze/stream", "/healthz"])
def test_a_deadline_under_the_floor_is_a_json_400_on_every_route(
    client: httpx.Client, route: str, value: str
) -> None:
    headers = {"x-request-timeout-seconds": value}
    if route == "/healthz":
        response = client.get(route, headers=headers)
    else:
        response = client.post(route, files={"image": ("m.png", meme(2))}, headers=headers)
    error = assert_error(response, 400, "bad_input")
    assert "at least 1 s" in error["message"]


@pytest.mark.parametrize("route", ["/healthz", "/readyz", "/v1/status", "/"])
def test_a_malformed_deadline_is_a_400_on_every_route(client: httpx.Client, route: str) -> None:
    response = client.get(route, headers={"x-request-timeout-seconds": "soon"})
    assert_error(response, 400, "bad_input")


def test_every_stream_that_opens_ends_with_one_result_or_error(base_url: str) -> None:
    """Deadlines just over the floor: each stream still ends with its own last event."""
    endings: list[list[str]] = []

    def one(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            response = http.post(
                "/v1/memes/analyze/stream",
                files={"image": ("m.png", meme(100 + index))},
                headers={"x-request-timeout-seconds": f"{1.0 + 0.03 * index:.2f}"},
            )
            assert response.status_code == 200, response.text
            endings.append(events_of(response.text))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(endings) == 10
    for events in endings:
        assert events[0] == "accepted", events
        assert events[-1] in ("result", "error"), events
        assert events.count("result") + events.count("error") == 1, events


@pytest.mark.parametrize("sent", ["has a space", "x" * 129, "semi;colon"])
def test_an_unsafe_request_id_is_replaced_by_one_id_everywhere(
    client: httpx.Client, sent: str
) -> None:
    response = client.post(
        "/v1/memes/analyze", files={"image": ("m.png", meme(3))}, headers={"x-request-id": sent}
    )
    assert response.status_code == 200, response.text
    body_id = response.json()["request_id"]
    assert body_id != sent and response.headers["x-request-id"] == body_id
    assert response.headers.get_list("x-request-id") == [body_id]


def test_a_safe_request_id_is_kept_everywhere(client: httpx.Client) -> None:
    response = client.get("/v1/nope", headers={"x-request-id": "caller-id-1"})
    error = assert_error(response, 404, "not_found")
    assert error["request_id"] == "caller-id-1"


def test_a_cors_refusal_is_the_json_error(client: httpx.Client) -> None:
    response = client.options(
        "/v1/memes/analyze",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    error = assert_error(response, 400, "cors_refused")
    assert "origin" in error["message"].lower()


def _connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 10)


def _raw(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(base_url) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/memes/analyze HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    ],
    ids=["content-length", "header-line"],
)
def test_a_request_the_server_cannot_parse_gets_the_json_400(
    base_url: str, request_bytes: bytes
) -> None:
    status, headers, body = _raw(base_url, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and error["request_id"] == headers["x-request-id"]


def test_unknown_paths_and_methods_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/v2/whatever"), 404, "not_found")
    assert_error(client.delete("/v1/memes/analyze"), 405, "method_not_allowed")
    assert_error(client.put("/v1/status"), 405, "method_not_allowed")


def test_a_client_that_leaves_counts_as_aborted_on_the_lite_engine(
    client: httpx.Client, base_url: str
) -> None:
    before = client.get("/v1/status").json()["engine"]["aborted"]
    big = meme_bytes(MemeSpec(template=5, top="你说得对，但是" * 3, bottom="急了急了" * 3))
    leaving = threading.Thread(
        target=lambda: _leave_during_the_engine(base_url, big, client), daemon=True
    )
    leaving.start()
    leaving.join(60)
    deadline = time.monotonic() + 30
    while (engine := client.get("/v1/status").json()["engine"])["aborted"] < before + 1:
        assert time.monotonic() < deadline, f"the left request was not counted: {engine}"
        time.sleep(0.1)
    assert engine["aborted"] >= before + 1


def _leave_during_the_engine(base_url: str, data: bytes, status: httpx.Client) -> None:
    """Send one analysis on a raw socket, wait until the engine works on it, then hang up."""
    request = httpx.Request(
        "POST", f"{base_url}/v1/memes/analyze", files={"image": ("m.png", data)}
    )
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    sock = _connect(base_url)
    try:
        sock.sendall(f"POST /v1/memes/analyze HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body)
        deadline = time.monotonic() + 30
        while status.get("/v1/status").json()["engine"]["in_flight"] == 0:
            assert time.monotonic() < deadline, "the engine never started on the request"
            time.sleep(0.005)
    finally:
        sock.close()  # mid-request: the proxy sees the client leave
