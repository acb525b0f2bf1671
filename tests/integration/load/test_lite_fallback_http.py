"""The top level's `route: lite` on a model replica: the lite engine answers instead.

The pool runs the transformers engine on the tiny GLM checkpoint; with level 3 forced
(its default route is `lite`), answers come from the lite engine the replica starts
on first use, under the lite engine's own model name, at degradation level 3.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, corpus, meme_bytes


@pytest.fixture(scope="module")
def controller_config() -> dict[str, Any]:
    return {"force_level": 3}


@pytest.fixture(scope="module")
def app_args(tiny_glm4v_dir: Path) -> dict[str, Any]:
    return {
        "engine": {
            "kind": "transformers",
            "model_id": "tiny-glm4v-random",
            "model_version": "tiny-1",
            "model_path": str(tiny_glm4v_dir),
            "transformers": {"device": "cpu"},
        },
    }


def test_forced_level_three_is_answered_by_the_lite_engine(
    client: httpx.Client, base_url: str
) -> None:
    status = client.get("/v1/status").json()
    assert status["engine"]["kind"] == "transformers"
    assert status["degradation"]["route"] == "lite"

    def post(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=120) as own:
            return own.post("/v1/memes/analyze", files={"image": ("m.png", data)})

    # Several at once: the replica must start exactly one fallback engine for them.
    memes = [meme_bytes(spec) for spec in corpus(4, seed=808)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(memes)) as pool:
        responses = list(pool.map(post, memes))
    for response in responses:
        assert response.status_code == 200, response.text
        meta = response.json()["meta"]
        assert meta["engine"] == "lite" and meta["model"] == "memeserve-lite@lite-1"
        assert meta["degradation_level"] == 3
    # The lite engine really read the caption (a model with random weights could not).
    data = meme_bytes(MemeSpec(template=9, top="你说得对，但是", bottom="破防了"))
    answer = post(data).json()
    assert "你说得对但是" in answer["evidence"]["slang"]
    assert client.get("/v1/status").json()["engine"]["last_request"]["route"] == "lite"
