"""A client that leaves a stream stops the engine's work (transformers engine, tiny GLM).

The random model never stops by itself, so without cancellation each request would
generate its full, very large output budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.levels import level_table

BUDGET = 6000


@pytest.fixture(scope="module")
def controller_config() -> dict[str, Any]:
    levels = level_table(
        max_visual_tokens=64,
        max_context_chars=100,
        max_output_tokens=BUDGET,
        explanation_max_chars=100,
    )
    return {"enabled": False, "levels": levels}


@pytest.fixture(scope="module")
def app_args(tiny_glm4v_dir: Path) -> dict[str, Any]:
    return {
        "engine": {
            "kind": "transformers",
            "model_path": str(tiny_glm4v_dir),
            "transformers": {"device": "cpu"},
        },
        "request_timeout_s": 300,
    }


def engine_figures(client: httpx.Client) -> dict[str, Any]:
    engine: dict[str, Any] = client.get("/v1/status").json()["engine"]
    return engine


def test_leaving_the_stream_aborts_generation(client: httpx.Client, base_url: str) -> None:
    assert engine_figures(client)["aborted"] == 0
    data = meme_bytes(MemeSpec(template=9, top="急了急了"))
    with (
        httpx.Client(base_url=base_url, timeout=60) as leaving,
        leaving.stream(
            "POST", "/v1/memes/analyze/stream", files={"image": ("m.png", data)}
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "event: accepted"
        # Wait until the engine is generating for us, then hang up.
        deadline = time.monotonic() + 60
        while engine_figures(client)["in_flight"] == 0:
            assert time.monotonic() < deadline, "the engine never started"
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while True:
        figures = engine_figures(client)
        if figures["aborted"] == 1 and figures["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, f"generation was not aborted: {figures}"
        time.sleep(0.1)
    # The worker is free again: a fresh request is served.
    follow_up = client.get("/readyz")
    assert follow_up.status_code == 200


def assert_generation_stopped(client: httpx.Client, aborted_before: int) -> None:
    """The engine stopped this request early (its deadline check or the ingress's cancel()).

    Decided by the engine's ``aborted`` counter, which counts a request stopped before
    its end once, not by how long generation takes on this machine.
    """
    deadline = time.monotonic() + 60
    while True:
        figures = engine_figures(client)
        idle = not figures["in_flight"] and not figures["waiting"]
        if idle and figures["aborted"] >= aborted_before + 1:
            break
        assert time.monotonic() < deadline, f"generation was not stopped early: {figures}"
        time.sleep(0.1)
    assert figures["aborted"] == aborted_before + 1, figures


def test_a_callers_deadline_gives_504_and_aborts_generation(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=10, top="破防了"))
    aborted_before = engine_figures(client)["aborted"]
    started = time.monotonic()
    response = client.post(
        "/v1/memes/analyze",
        files={"image": ("m.png", data)},
        headers={"x-request-timeout-seconds": "1.5", "x-request-id": "deadline-1"},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert response.json()["error"]["request_id"] == "deadline-1"
    assert elapsed < 1.5, f"answered after {elapsed:.2f} s, past the caller's deadline"
    # The engine stopped generating: without the deadline it would run its 6000 tokens.
    assert_generation_stopped(client, aborted_before)
    assert client.get("/readyz").status_code == 200


def test_a_callers_deadline_ends_a_stream_with_a_504_event(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=11, top="绷不住了"))
    aborted_before = engine_figures(client)["aborted"]
    response = client.post(
        "/v1/memes/analyze/stream",
        files={"image": ("m.png", data)},
        headers={"x-request-timeout-seconds": "1.5"},
    )
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "event: accepted" and events[-1] == "event: error"
    assert '"status": 504' in response.text or '"status":504' in response.text
    assert_generation_stopped(client, aborted_before)


def test_a_malformed_deadline_header_is_a_400(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=12, top="好家伙"))
    response = client.post(
        "/v1/memes/analyze",
        files={"image": ("m.png", data)},
        headers={"x-request-timeout-seconds": "soon"},
    )
    assert response.status_code == 400
    assert "x-request-timeout-seconds" in response.json()["error"]["message"]
