"""The whole graph (Ingress → Preprocessor → VLM pool → Structurer) over HTTP, lite engine."""

from __future__ import annotations

import base64
import concurrent.futures
from typing import Any

import httpx
import pytest
from PIL import Image

from loadtest.corpus import MemeSpec, corpus, draw_meme, encode, meme_bytes
from serve_app.understanding.analysis import Analysis
from tests.support.memes import png_header_only

MAX_BYTES = 1_000_000


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    return {"limits": {"max_bytes": MAX_BYTES}}


def analyze(
    client: httpx.Client,
    data: bytes,
    text: str | None = None,
    name: str = "meme.png",
    **kwargs: Any,
) -> httpx.Response:
    form = {"text": text} if text is not None else None
    return client.post("/v1/memes/analyze", files={"image": (name, data)}, data=form, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "traceback" not in response.text.lower()
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["message"] and body["error"]["request_id"]
    if code is not None:
        assert body["error"]["code"] == code
    return body


def test_chinese_meme_comes_back_with_its_caption_and_sensible_labels(client: httpx.Client) -> None:
    data = meme_bytes(
        MemeSpec(template=11, top="你说得对，但是", bottom="阴阳怪气"), "JPEG", quality=90
    )
    response = analyze(client, data, name="meme.jpg")
    assert response.status_code == 200, response.text
    analysis = Analysis.model_validate(response.json())
    ocr = " ".join(analysis.evidence.ocr_text)
    assert "你说得对" in ocr and "但是" in ocr and "阴阳怪气" in ocr
    assert {"你说得对但是", "阴阳怪气"} <= set(analysis.evidence.slang)
    assert analysis.emotion == "sarcasm" and analysis.emotion_zh == "讽刺"
    assert analysis.sarcastic is True
    assert analysis.confidence > 0.5
    assert analysis.meta.engine == "lite" and analysis.meta.cache.hit is False
    assert (analysis.meta.image.width, analysis.meta.image.height, analysis.meta.image.frames) == (
        600,
        600,
        1,
    )
    assert analysis.meta.image.analysed_width % 28 == 0
    assert analysis.meta.timings_ms.total >= analysis.meta.timings_ms.engine > 0


def test_context_text_is_read_as_well(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=12, top="今天也要加油"))
    body = analyze(client, data, text="笑死，蚌埠住了").json()
    assert {"笑死", "蚌埠住了"} <= set(body["evidence"]["slang"])


def test_json_base64_input_and_data_urls(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=13, top="绝绝子"))
    encoded = base64.b64encode(data).decode()
    for value in (encoded, f"data:image/png;base64,{encoded}"):
        response = client.post("/v1/memes/analyze", json={"image_base64": value, "text": None})
        assert response.status_code == 200, response.text
        assert "绝绝子" in response.json()["evidence"]["slang"]


def test_animated_gif_reports_frames(client: httpx.Client) -> None:
    frames = [
        draw_meme(MemeSpec(template=14 + i, top="前方高能")).resize((200, 200)) for i in range(5)
    ]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80)
    body = analyze(client, data, name="a.gif").json()
    assert body["meta"]["image"]["frames"] == 5
    assert body["meta"]["image"]["format"] == "GIF"


SVG = b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg>&x;</svg>'


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("truncated.jpg", meme_bytes(MemeSpec(1, "破防了"), "JPEG")[:5000], 400, "bad_input"),
        ("empty.png", b"", 400, "bad_input"),
        ("bomb.png", png_header_only(65535, 65535), 413, "payload_too_large"),
        ("big.bmp", b"BM" + b"\x00" * (MAX_BYTES + 10), 413, "payload_too_large"),
        ("evil.svg", SVG, 415, "unsupported_media_type"),
        ("page.jpg", b"<!doctype html><html><body>hi</body></html>", 415, "unsupported_media_type"),
        ("doc.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_media_type"),
    ],
)
def test_bad_uploads_get_their_status_and_a_json_body(
    client: httpx.Client, name: str, data: bytes, status: int, code: str
) -> None:
    assert_error(analyze(client, data, name=name), status, code)


def test_body_over_the_limit_is_refused_before_it_is_read(client: httpx.Client) -> None:
    response = analyze(client, b"\x89PNG" + b"\x00" * (3 * MAX_BYTES))
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"image_base64": "###not base64###"}}, 400, "bad_input"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_input",
        ),
        ({"json": {"text": "no image"}}, 422, "invalid_request"),
        ({"json": {"image_base64": "aGk=", "extra": 1}}, 422, "invalid_request"),
        (
            {"data": {"text": "no file"}, "files": {"other": ("x.png", b"x")}},
            422,
            "invalid_request",
        ),
        (
            {"content": b"raw", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {
                "content": b"--x\r\nbroken",
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
            422,
            None,
        ),
    ],
)
def test_malformed_requests(
    client: httpx.Client, kwargs: dict[str, Any], status: int, code: str | None
) -> None:
    response = client.post("/v1/memes/analyze", **kwargs)
    if code is None:  # malformed multipart: refused as a client error, never a 500
        assert 400 <= response.status_code < 500, response.text
        assert_error(response, response.status_code)
    else:
        assert_error(response, status, code)


def test_overlong_text_is_422(client: httpx.Client) -> None:
    response = analyze(client, meme_bytes(MemeSpec(2, "典")), text="字" * 2001)
    assert_error(response, 422, "invalid_request")


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.get("/v1/memes/analyze"), 405, "method_not_allowed")


def test_a_good_request_right_after_bad_ones_still_works(client: httpx.Client) -> None:
    for data in (b"", SVG, png_header_only(50000, 50000), b"\xff\xd8\xff" + b"\x00" * 100):
        assert analyze(client, data).status_code in (400, 413, 415)
    response = analyze(client, meme_bytes(MemeSpec(3, "摆烂了")))
    assert response.status_code == 200
    assert "摆烂" in response.json()["evidence"]["slang"]


def test_twenty_concurrent_requests_are_all_answered(base_url: str) -> None:
    payloads = [meme_bytes(spec, "JPEG", quality=85) for spec in corpus(20, seed=42)]

    def one(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=180) as http:
            return analyze(http, data, name="m.jpg")

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(one, payloads))
    assert [r.status_code for r in responses] == [200] * 20
    ids = {r.json()["request_id"] for r in responses}
    assert len(ids) == 20
    for response in responses:
        Analysis.model_validate(response.json())


def test_an_exact_repeat_is_a_cache_hit(client: httpx.Client) -> None:
    img = draw_meme(MemeSpec(template=21, top="我真的会谢", bottom="社死现场"))
    first = analyze(client, encode(img, "PNG"), text="评论：绝了").json()
    assert first["meta"]["cache"]["hit"] is False
    # Same pixels, different bytes (lossless WebP): still the exact same meme.
    again = analyze(
        client, encode(img, "WEBP", lossless=True), text="评论：绝了", name="x.webp"
    ).json()
    assert again["meta"]["cache"] == {"hit": True, "match": "exact", "distance": 0}
    assert again["request_id"] != first["request_id"]
    assert again["meta"]["timings_ms"]["engine"] == 0.0
    for field in (
        "emotion",
        "intent",
        "sarcastic",
        "offensiveness",
        "confidence",
        "explanation",
        "evidence",
    ):
        assert again[field] == first[field]
    other_context = analyze(client, encode(img, "PNG"), text="评论：另一句").json()
    assert other_context["meta"]["cache"]["hit"] is False


def test_request_id_is_honoured(client: httpx.Client) -> None:
    response = analyze(
        client, meme_bytes(MemeSpec(4, "笑死")), headers={"x-request-id": "web-tier-42"}
    )
    assert response.json()["request_id"] == "web-tier-42"
    assert response.headers["x-request-id"] == "web-tier-42"
    error = analyze(client, b"", headers={"x-request-id": "web-tier-43"})
    assert error.json()["error"]["request_id"] == "web-tier-43"


def test_health_readiness_and_status(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["engine"] == "lite"
    status = client.get("/v1/status").json()
    assert status["engine"]["kind"] == "lite" and status["engine"]["ready"] is True
    assert status["degradation"]["level"] == 0 and status["degradation"]["name"] == "normal"
    assert status["cache"]["entries"] >= 1 and status["cache"]["hits"] >= 1
    assert set(status["replicas"]) == {
        "Ingress",
        "Preprocessor",
        "VLMPool",
        "Structurer",
        "FingerprintStore",
        "LoadController",
    }
    assert status["degradation"]["controller"] == "off"  # the integration default
    assert all(d["status"] == "HEALTHY" for d in status["replicas"].values())


def test_openapi_document_describes_the_contract(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    analyze_op = spec["paths"]["/v1/memes/analyze"]["post"]
    assert set(analyze_op["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"200", "400", "413", "415", "422"} <= set(analyze_op["responses"])


def test_small_and_odd_images_are_analysed(client: httpx.Client) -> None:
    tiny = encode(Image.new("RGB", (10, 10), (255, 255, 255)), "PNG")
    body = analyze(client, tiny).json()
    assert body["meta"]["image"]["analysed_width"] >= 28
    assert body["evidence"]["ocr_text"] == [] and body["confidence"] < 0.3
