"""Lists and reviews outlive the app: SQLite (one node) and Redis (clusters).

Each case starts the graph, writes a term, an image entry and a review, stops it, starts
a new graph on the same store and checks they still decide answers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, draw_meme, encode
from tests.support.app import start_app
from tests.support.redis_server import running_redis

POLICY = {
    "policies": {
        "moderation": {"term_lists": ["banned"], "image_lists": ["blocked-images"]},
    }
}
LISTED = encode(draw_meme(MemeSpec(template=41, top="名单里的图", bottom="重启以后还在")), "PNG")
REVIEWED = encode(draw_meme(MemeSpec(template=42, top="复核过的图", bottom="重启以后还算")), "PNG")
PLAIN = encode(draw_meme(MemeSpec(template=43, top="普通的图", bottom="没有问题")), "PNG")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _args(backend: str, redis_url: str, directory: Path) -> dict[str, Any]:
    if backend == "redis":
        return {"cache": {"backend": "redis", "redis_url": redis_url}}
    return {
        "cache": {"sqlite_path": str(directory / "library.db")},
        "scenes": {"sqlite_path": str(directory / "scenes.db")},
    }


def _analyze(client: httpx.Client, data: bytes, text: str | None = None) -> dict[str, Any]:
    form = {"policy": "moderation", **({"text": text} if text else {})}
    response = client.post("/v1/memes/analyze", files={"image": ("m.png", data)}, data=form)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_lists_and_reviews_survive_a_restart(backend: str, redis_url: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="memeserve-scenes-"))
    args = _args(backend, redis_url, directory)
    for url in start_app(args, {"enabled": False}, POLICY):
        with httpx.Client(base_url=url, timeout=120) as client:
            terms = {"action": "block", "terms": ["重启测试词"]}
            assert client.post("/v1/lists/banned/terms", json=terms).status_code == 200
            added = client.post(
                "/v1/lists/blocked-images/images",
                files={"image": ("x.png", LISTED)},
                data={"action": "block"},
            )
            assert added.status_code == 200, added.text
            review = client.post(
                "/v1/reviews",
                files={"image": ("r.png", REVIEWED)},
                data={
                    "emotion": "love",
                    "intent": "expressive",
                    "offensiveness": "0",
                    "sarcastic": "false",
                    "reviewer": "bob",
                },
            )
            assert review.status_code == 201, review.text
    for url in start_app(args, {"enabled": False}, POLICY):
        with httpx.Client(base_url=url, timeout=120) as client:
            by_term = _analyze(client, PLAIN, text="重 启 测 试 词")
            assert by_term["risk"]["decided_by"] == "term_list"
            by_image = _analyze(client, LISTED)
            assert by_image["risk"]["decided_by"] == "image_list"
            reviewed = _analyze(client, REVIEWED)
            assert (reviewed["emotion"], reviewed["risk"]["decided_by"]) == ("love", "review")
            audit = client.get("/v1/reviews").json()["reviews"]
            assert [r["reviewer"] for r in audit] == ["bob"]
