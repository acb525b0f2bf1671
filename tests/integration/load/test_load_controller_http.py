"""The load controller over HTTP: load raises the level and idling lowers it; a forced
level changes what the engine is actually given; refusals carry Retry-After.

The signals here are the in-flight ones (requests inside the graph and ongoing
requests per VLM replica), which a burst drives deterministically; the host-CPU
signal is left off because this machine is shared with the test run itself.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, corpus, meme_bytes
from serve_app.config.models import ControllerUserConfig
from tests.support.app import deploy, serve_config, start_declarative, with_own_library
from tests.support.levels import level_table

PERIOD_S = 0.1


def controller(**changes: Any) -> dict[str, Any]:
    levels = level_table()
    levels[3].update(route="reject", reject_status=503, retry_after_s=1)
    config: dict[str, Any] = {
        "enabled": True,
        "period_s": PERIOD_S,
        # Idle replicas hear a live change within idle_report_s (1 s by default): at the
        # period here, a drill's first request already meets the new level everywhere.
        "idle_report_s": PERIOD_S,
        "enter_samples": 2,
        "leave_samples": 3,
        "signals": {"cpu": {"enabled": False}, "gpu_util": {"enabled": False}},
        "levels": levels,
    }
    config.update(changes)
    ControllerUserConfig.model_validate(config)  # a typo here should fail loudly
    return config


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The app's config document; tests change its user_config and deploy it again."""
    return serve_config(with_own_library({}), controller())


@pytest.fixture(scope="module")
def base_url(document: dict[str, Any]) -> Iterator[str]:
    yield from start_declarative(document)


def reconfigure(document: dict[str, Any], config: dict[str, Any]) -> None:
    """``serve deploy`` with only the LoadController's user_config changed."""
    document["applications"][0]["deployments"][0]["user_config"] = config
    deploy(document)


def degradation(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/v1/status").json()["degradation"]
    return status


def wait_for(
    client: httpx.Client, done: Callable[[dict[str, Any]], bool], timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status = degradation(client)
    while not done(status):
        if time.monotonic() > deadline:
            raise AssertionError(f"controller did not get there in {timeout_s}s: {status}")
        time.sleep(PERIOD_S)
        status = degradation(client)
    return status


def test_an_idle_graph_rests_at_level_zero(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    status = wait_for(client, lambda s: s["reporters"]["vlm"] >= 1 and s["reporters"]["ingress"])
    assert status["level"] == 0 and status["controller"] == "on"
    assert status["name"] == "normal" and status["max_visual_tokens"] == 1024
    assert "engine_in_flight" in status["signals"] and "graph_queue" in status["signals"]


def test_a_burst_raises_the_level_and_idling_lowers_it(client: httpx.Client, base_url: str) -> None:
    levels_seen: list[int] = []
    memes = [meme_bytes(spec) for spec in corpus(24, seed=501)]

    def post(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=120) as own:
            return own.post("/v1/memes/analyze", files={"image": ("m.png", data)})

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(memes)) as pool:
        futures = [pool.submit(post, data) for data in memes]
        while not all(f.done() for f in futures):
            levels_seen.append(degradation(client)["level"])
            time.sleep(PERIOD_S)
        responses = [f.result() for f in futures]

    assert max(levels_seen) >= 2, levels_seen
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            body = response.json()["error"]
            assert body["code"] == "unavailable" and "shedding load" in body["message"]
            assert response.headers["retry-after"] == "1"
    served = [r.json()["meta"]["degradation_level"] for r in responses if r.status_code == 200]
    assert served and (max(served) >= 1 or 503 in statuses)

    idle = wait_for(client, lambda s: s["level"] == 0, timeout_s=60)
    steps = [(t["from"], t["to"]) for t in idle["transitions"]]
    assert steps[-1][1] == 0 and any(to >= 2 for _, to in steps), steps
    # Down one level at a time, each after leave_samples quiet samples.
    downs = [(a, b) for a, b in steps if b < a]
    assert all(a - b == 1 for a, b in downs), steps


def analyse_at(client: httpx.Client, level: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh (uncached) meme with a long context; the answer and what the engine got."""
    data = meme_bytes(MemeSpec(template=7000 + level, top="前方高能", bottom="急了急了"))
    response = client.post(
        "/v1/memes/analyze", files={"image": ("m.png", data)}, data={"text": "弹幕" * 600}
    )
    assert response.status_code == 200, response.text
    engine = client.get("/v1/status").json()["engine"]
    return response.json(), engine["last_request"]


def test_a_forced_level_changes_what_the_engine_is_given(
    client: httpx.Client, document: dict[str, Any]
) -> None:
    table = ControllerUserConfig.model_validate(controller()).levels
    before = client.get("/v1/status").json()
    seen = {}
    for level in (2, 0):
        reconfigure(document, controller(force_level=level))
        wait_for(client, lambda s, n=level: s["level"] == n and s["controller"] == "forced")
        # Replicas follow within a refresh period; poll until an answer shows the level.
        deadline = time.monotonic() + 30
        while True:
            analysis, given = analyse_at(client, level)
            if analysis["meta"]["degradation_level"] == level or time.monotonic() > deadline:
                break
        row = table[level]
        assert analysis["meta"]["degradation_level"] == level
        assert given["level"] == level and given["max_output_tokens"] == row.max_output_tokens
        assert given["max_visual_tokens"] == row.max_visual_tokens
        assert given["context_chars"] == min(1200, row.max_context_chars)
        width, height = given["image"]
        assert (width // 28) * (height // 28) <= row.max_visual_tokens
        assert [width, height] == [
            analysis["meta"]["image"]["analysed_width"],
            analysis["meta"]["image"]["analysed_height"],
        ]
        assert len(analysis["explanation"]) <= row.explanation_max_chars
        seen[level] = width * height
    assert seen[2] * 4 <= seen[0]  # 64 vs ≥ 256 visual tokens: the image really shrank
    # Changed live: the same replicas, the controller's history kept (no restart).
    after = client.get("/v1/status").json()
    assert after["engine"]["replica"] == before["engine"]["replica"]
    assert after["degradation"]["replica"] == before["degradation"]["replica"]
    assert len(after["degradation"]["transitions"]) > len(before["degradation"]["transitions"])
    assert after["degradation"]["transitions"][0] == before["degradation"]["transitions"][0]


def test_a_shedding_level_admits_what_the_pool_holds_and_refuses_the_rest(
    client: httpx.Client, base_url: str, document: dict[str, Any]
) -> None:
    reconfigure(document, controller(force_level=3))
    status = wait_for(client, lambda s: s["level"] == 3 and s["admit_per_ingress"])
    admit = status["admit_per_ingress"]
    memes = [meme_bytes(spec) for spec in corpus(admit * 4, seed=503)]

    def post(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=120) as own:
            return own.post("/v1/memes/analyze", files={"image": ("m.png", data)})

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(memes)) as pool:
        responses = list(pool.map(post, memes))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 503]
    assert len(served) + len(refused) == len(responses), [r.status_code for r in responses]
    assert served and refused, [r.status_code for r in responses]
    assert all(r.json()["meta"]["degradation_level"] == 3 for r in served)
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["request_id"]
    # A resent meme is still answered from the library while shedding.
    again = post(memes[responses.index(served[0])])
    assert again.status_code == 200 and again.json()["meta"]["cache"]["hit"] is True
    # After the drill the graph serves normally again.
    reconfigure(document, controller(enabled=False))
    wait_for(client, lambda s: s["level"] == 0 and s["controller"] == "off")
    assert client.get("/healthz").status_code == 200
    fresh = post(meme_bytes(MemeSpec(template=7100, top="退钱！客服呢")))
    assert fresh.status_code == 200 and fresh.json()["meta"]["degradation_level"] == 0
