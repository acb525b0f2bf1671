"""The whole graph over HTTP with the transformers engine on the tiny random GLM-4.xV.

A real ``generate`` through the real processor and chat template, inside the VLM
pool's replica, batched by ``@serve.batch``; the random model's gibberish must come
back as a valid, low-confidence analysis.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, corpus, meme_bytes
from serve_app.understanding.analysis import Analysis
from tests.support.levels import level_table

MAX_OUTPUT_TOKENS = 24


@pytest.fixture(scope="module")
def controller_config() -> dict[str, Any]:
    rows = level_table(max_context_chars=200, max_output_tokens=MAX_OUTPUT_TOKENS)
    for row, tokens in zip(rows, (256, 64, 16, 16), strict=True):
        row.update(max_visual_tokens=tokens, explanation_max_chars=100)
    return {"enabled": False, "levels": rows}


@pytest.fixture(scope="module")
def app_args(tiny_glm4v_dir: Path) -> dict[str, Any]:
    return {
        "engine": {
            "kind": "transformers",
            "model_id": "tiny-glm4v-random",
            "model_version": "tiny-1",
            "model_path": str(tiny_glm4v_dir),
            "transformers": {"device": "cpu", "max_batch_size": 4, "batch_wait_timeout_s": 0.1},
        },
    }


def analyze(client: httpx.Client, data: bytes, text: str | None = None) -> httpx.Response:
    form = {"text": text} if text is not None else None
    return client.post("/v1/memes/analyze", files={"image": ("m.png", data)}, data=form)


def test_ready_and_status_name_the_engine(client: httpx.Client) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["engine"] == "transformers"
    status = client.get("/v1/status").json()
    assert status["engine"]["kind"] == "transformers"
    assert status["model"] == "tiny-glm4v-random@tiny-1"


def test_gibberish_comes_back_as_a_valid_low_confidence_analysis(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=5, top="你说得对，但是", bottom="就这？"))
    response = analyze(client, data, text="笑死")
    assert response.status_code == 200, response.text
    analysis = Analysis.model_validate(response.json())
    assert analysis.meta.engine == "transformers"
    assert analysis.meta.model == "tiny-glm4v-random@tiny-1"
    assert analysis.confidence == 0.0 and analysis.risk.action == "pass"
    assert "unparseable_model_output" in analysis.meta.warnings
    image = analysis.meta.image
    assert image.visual_tokens is not None and image.visual_tokens <= 256
    assert image.analysed_width % 28 == 0 and image.analysed_height % 28 == 0
    assert analysis.meta.timings_ms.engine > 0


def test_unparseable_answers_are_not_cached(client: httpx.Client) -> None:
    data = meme_bytes(MemeSpec(template=6, top="摆烂了"))
    first = analyze(client, data).json()
    again = analyze(client, data).json()
    assert first["meta"]["cache"]["hit"] is False and again["meta"]["cache"]["hit"] is False


def test_concurrent_requests_are_all_answered(client: httpx.Client, base_url: str) -> None:
    payloads = [meme_bytes(spec) for spec in corpus(8, seed=31)]

    def one(data: bytes) -> int:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            return analyze(http, data).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, payloads))
    assert codes == [200] * len(payloads)


def test_bad_input_is_still_refused_before_the_model(client: httpx.Client) -> None:
    response = analyze(client, b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    good = analyze(client, meme_bytes(MemeSpec(template=7, top="绝绝子")))
    assert good.status_code == 200
