"""Streaming, batch, the Python client and `memeserve analyze` over real HTTP (lite engine)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.http.client import ApiError, AsyncMemeServeClient, MemeServeClient, SseParser
from serve_app.http.wire import BatchResponse
from serve_app.understanding.analysis import Analysis

SVG = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    return {"limits": {"max_batch_items": 6, "max_text_chars": 100}}


def sarcastic_meme(template: int) -> bytes:
    return meme_bytes(MemeSpec(template=template, top="你说得对，但是", bottom="阴阳怪气"))


def stream_events(client: httpx.Client, data: bytes, text: str | None = None) -> list[Any]:
    form = {"text": text} if text is not None else None
    parser, events = SseParser(), []
    with client.stream(
        "POST", "/v1/memes/analyze/stream", files={"image": ("m.png", data)}, data=form
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is not None:
                events.append(event)
    return events


def test_stream_events_come_in_order_and_deltas_spell_the_explanation(
    client: httpx.Client,
) -> None:
    events = stream_events(client, sarcastic_meme(21), text="笑死")
    names = [event.event for event in events]
    assert names[:2] == ["accepted", "cache"] and names[-1] == "result"
    assert set(names[2:-1]) == {"delta"}
    assert events[1].data == {"hit": False, "match": None, "distance": None}
    result = Analysis.model_validate(events[-1].data)
    assert events[0].data["request_id"] == result.request_id
    assert result.emotion == "sarcasm"
    deltas = "".join(event.data["text"] for event in events if event.event == "delta")
    assert deltas == result.explanation


def test_stream_of_a_repeat_is_a_cache_hit_without_deltas(client: httpx.Client) -> None:
    data = sarcastic_meme(22)
    stream_events(client, data)
    events = stream_events(client, data)
    assert [event.event for event in events] == ["accepted", "cache", "result"]
    assert events[1].data["hit"] is True and events[1].data["match"] == "exact"
    assert events[2].data["meta"]["cache"]["hit"] is True


def test_stream_refuses_what_the_header_shows_before_accepting(client: httpx.Client) -> None:
    response = client.post("/v1/memes/analyze/stream", files={"image": ("evil.jpg", SVG)})
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_stream_error_after_acceptance_is_an_error_event(client: httpx.Client) -> None:
    """A good header over broken pixel data is only found decoding: an ``error`` event."""
    whole = sarcastic_meme(31)
    events = stream_events(client, whole[: len(whole) // 2])
    assert [event.event for event in events] == ["accepted", "error"]
    assert events[1].data["status"] == 400
    assert events[1].data["error"]["code"] == "bad_input"
    assert events[1].data["error"]["request_id"] == events[0].data["request_id"]


def test_stream_refuses_a_malformed_request_before_accepting_it(client: httpx.Client) -> None:
    response = client.post(
        "/v1/memes/analyze/stream", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_batch_mixed_items_each_get_their_own_outcome_in_order(client: httpx.Client) -> None:
    good = sarcastic_meme(23)
    items = [
        {"id": "good-1", "image_base64": b64(good), "text": "笑死"},
        {"id": "svg", "image_base64": b64(SVG)},
        {"id": "not-base64", "image_base64": "%%%"},
        {"id": "long-text", "image_base64": b64(good), "text": "长" * 101},
        {"id": "empty", "image_base64": b64(b"\x00" * 16)},
        {"id": "good-2", "image_base64": b64(meme_bytes(MemeSpec(template=24, top="破防了")))},
    ]
    response = client.post("/v1/memes/analyze/batch", json={"items": items})
    assert response.status_code == 200, response.text
    batch = BatchResponse.model_validate(response.json())
    assert [item.id for item in batch.items] == [item["id"] for item in items]
    assert [item.status for item in batch.items] == [200, 415, 400, 422, 415, 200]
    assert (batch.succeeded, batch.failed) == (2, 4)
    for item in batch.items:
        assert (item.result is None) == (item.status != 200)
        assert (item.error is None) == (item.status == 200)
        if item.error is not None:
            assert item.error.request_id.startswith(batch.request_id)
    first = batch.items[0].result
    assert first is not None and first.emotion == "sarcasm"
    assert first.request_id == f"{batch.request_id}:0"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"items": []}, None, 422),
        ({"items": [{"id": str(i), "image_base64": "AA=="} for i in range(7)]}, None, 422),
        ({"items": [{"id": "x", "image_base64": "AA=="}] * 2}, None, 422),
        ({"items": [{"id": "x", "image_base64": "AA==", "extra": 1}]}, None, 422),
        (b"{not json", {"content-type": "application/json"}, 400),
        (b"items", {"content-type": "text/plain"}, 415),
    ],
    ids=["empty", "too-many", "duplicate-ids", "unknown-field", "bad-json", "not-json"],
)
def test_a_malformed_batch_is_refused_whole(
    client: httpx.Client, body: object, headers: dict[str, str] | None, status: int
) -> None:
    if isinstance(body, bytes):
        response = client.post("/v1/memes/analyze/batch", content=body, headers=headers)
    else:
        response = client.post("/v1/memes/analyze/batch", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}


def test_python_client_sync_and_async(base_url: str, tmp_path: Path) -> None:
    path = tmp_path / "meme.png"
    path.write_bytes(sarcastic_meme(25))
    with MemeServeClient(base_url) as client:
        analysis = client.analyze(path, text="笑死")
        assert isinstance(analysis, Analysis) and analysis.emotion == "sarcasm"
        batch = client.analyze_batch([("a", path, None), ("b", SVG, None)])
        assert [item.status for item in batch.items] == [200, 415]
        events = [event.event for event in client.stream(sarcastic_meme(26))]
        assert events[0] == "accepted" and events[-1] == "result"
        with pytest.raises(ApiError) as refused:
            client.analyze(SVG)
        assert refused.value.status == 415 and refused.value.code == "unsupported_media_type"
        assert client.status()["engine"]["kind"] == "lite"

    async def run_async() -> tuple[Analysis, list[str]]:
        async with AsyncMemeServeClient(base_url) as aclient:
            analysis = await aclient.analyze(path.read_bytes())
            events = [event.event async for event in aclient.stream(sarcastic_meme(27))]
            return analysis, events

    analysis, events = asyncio.run(run_async())
    assert analysis.meta.cache.hit is True  # the sync call above stored it
    assert events[0] == "accepted" and events[-1] == "result"


def test_memeserve_analyze_command(base_url: str, tmp_path: Path) -> None:
    path = tmp_path / "meme.jpg"
    path.write_bytes(meme_bytes(MemeSpec(template=28, top="绝绝子"), "JPEG", quality=90))
    command = [sys.executable, "-m", "serve_app.ops.cli", "analyze", str(path), "--url", base_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "绝绝子" in json.loads(done.stdout)["evidence"]["slang"]
    streamed = subprocess.run(
        [*command, "--stream", "--text", "笑死"], capture_output=True, text=True, timeout=120
    )
    assert streamed.returncode == 0, streamed.stderr
    assert json.loads(streamed.stdout)["explanation"] in streamed.stderr
    svg = tmp_path / "evil.jpg"
    svg.write_bytes(SVG)
    refused = subprocess.run(
        [sys.executable, "-m", "serve_app.ops.cli", "analyze", str(svg), "--url", base_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "415" in refused.stderr
