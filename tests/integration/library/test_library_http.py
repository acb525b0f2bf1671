"""The fingerprint library over HTTP: exact and near repeats are answered without the
engine; another caption on the same template, or another context, is a miss."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from loadtest.corpus import MemeSpec, draw_meme, encode

SPEC = MemeSpec(template=4242, top="你说得对，但是", bottom="我真的会谢")
LABELS = ("emotion", "intent", "sarcastic", "offensiveness", "confidence", "explanation", "risk")


@pytest.fixture(scope="module")
def app_args(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    library = tmp_path_factory.mktemp("library") / "library.sqlite3"
    return {"cache": {"backend": "sqlite", "sqlite_path": str(library)}}


def analyse(client: httpx.Client, data: bytes, text: str | None = None) -> dict[str, Any]:
    response = client.post(
        "/v1/memes/analyze",
        files={"image": ("m.bin", data)},
        data={"text": text} if text is not None else None,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def resized_jpeg(img: Image.Image, scale: float, quality: int) -> bytes:
    small = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def original(client: httpx.Client) -> dict[str, Any]:
    first = analyse(client, encode(draw_meme(SPEC), "PNG"))
    assert first["meta"]["cache"] == {"hit": False, "match": None, "distance": None}
    return first


def test_an_exact_repeat_is_an_exact_hit(client: httpx.Client, original: dict[str, Any]) -> None:
    again = analyse(client, encode(draw_meme(SPEC), "PNG"))
    assert again["meta"]["cache"] == {"hit": True, "match": "exact", "distance": 0}
    assert {k: again[k] for k in LABELS} == {k: original[k] for k in LABELS}
    assert again["request_id"] != original["request_id"]


def test_a_reencoded_resized_copy_is_a_near_hit(
    client: httpx.Client, original: dict[str, Any]
) -> None:
    data = resized_jpeg(draw_meme(SPEC), 0.5, 60)
    copy = analyse(client, data)
    cache = copy["meta"]["cache"]
    assert cache["hit"] is True and cache["match"] == "near"
    assert isinstance(cache["distance"], int) and cache["distance"] >= 0
    assert {k: copy[k] for k in LABELS} == {k: original[k] for k in LABELS}
    assert copy["meta"]["timings_ms"]["engine"] == 0.0
    # The same copy sent again is known by its bytes: the same answer, the same match.
    assert analyse(client, data)["meta"]["cache"] == cache


def test_the_same_template_with_another_caption_is_a_miss(
    client: httpx.Client, original: dict[str, Any]
) -> None:
    other = MemeSpec(template=SPEC.template, top=SPEC.top, bottom="今天也要加油")
    answer = analyse(client, encode(draw_meme(other), "PNG"))
    assert answer["meta"]["cache"]["hit"] is False
    # ... and a re-encoded copy of *that* meme finds that meme, not the first one.
    copy = analyse(client, resized_jpeg(draw_meme(other), 0.75, 80))
    assert copy["meta"]["cache"]["match"] == "near"
    assert copy["explanation"] == answer["explanation"]


def test_another_context_is_a_miss_and_then_its_own_hit(
    client: httpx.Client, original: dict[str, Any]
) -> None:
    data = encode(draw_meme(SPEC), "PNG")
    with_text = analyse(client, data, text="楼主说得对")
    assert with_text["meta"]["cache"]["hit"] is False
    assert analyse(client, data, text="楼主说得对")["meta"]["cache"]["match"] == "exact"
    # Context is normalised (NFKC, spacing) before it is part of the key.
    assert analyse(client, data, text=" 楼主说得对 ")["meta"]["cache"]["match"] == "exact"


def test_status_shows_the_library_figures(client: httpx.Client, app_args: dict[str, Any]) -> None:
    cache = client.get("/v1/status").json()["cache"]
    assert cache["enabled"] is True and cache["near"] is True
    assert cache["exact_hits"] >= 3 and cache["near_hits"] >= 2
    assert cache["misses"] >= 3 and cache["entries"] >= 3
    assert cache["hits"] == cache["exact_hits"] + cache["near_hits"]
    assert cache["upload_hits"] >= 3  # resent bytes answered before any decoding
    assert 0 < cache["hit_ratio"] < 1
    assert cache["backend"]["kind"] == "sqlite"
    assert Path(app_args["cache"]["sqlite_path"]).exists()
