"""Scenes over HTTP: policies, term and image lists, reviews, admin keys (lite engine).

One app for the module, with an admin key and a read key, and the policies of the
shipped CPU profile (autoscale_configs/dev-cpu.yaml's Ingress user_config), so the test
judges what `make run` serves.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from loadtest.corpus import MemeSpec, draw_meme, encode
from serve_app.config.models import RiskThresholds
from serve_app.understanding.analysis import Analysis
from serve_app.understanding.risk import assess_risk
from tests.support.paths import ROOT

ADMIN = "admin-key-for-tests"
READER = "read-key-for-tests"
ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
READ_H = {"authorization": f"Bearer {READER}"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    return {
        "security": {
            "api_keys": [
                {"name": "moderator", "sha256": _sha(ADMIN), "scopes": ["analyze", "admin"]},
                {"name": "webtier", "sha256": _sha(READER)},
            ]
        }
    }


@pytest.fixture(scope="module")
def ingress_config() -> dict[str, Any]:
    profile = yaml.safe_load((ROOT / "autoscale_configs" / "dev-cpu.yaml").read_text("utf-8"))
    deployments = profile["applications"][0]["deployments"]
    config: dict[str, Any] = next(d for d in deployments if d["name"] == "Ingress")["user_config"]
    return config


def _png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def analyze(
    client: httpx.Client,
    data: bytes,
    text: str | None = None,
    policy: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    form = {k: v for k, v in (("text", text), ("policy", policy)) if v is not None}
    return client.post(
        "/v1/memes/analyze",
        files={"image": ("meme.png", data)},
        data=form or None,
        headers=headers or READ_H,
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = Analysis.model_validate(response.json()).model_dump(mode="json")
    return body


def meme(template: int, top: str, bottom: str) -> Image.Image:
    return draw_meme(MemeSpec(template=template, top=top, bottom=bottom))


# -- policies ---------------------------------------------------------------------------


def test_default_answers_as_before_and_says_why(client: httpx.Client) -> None:
    body = ok(analyze(client, _png(meme(31, "今天天气不错", "出去走走"))))
    risk = body["risk"]
    expected = assess_risk(body["offensiveness"], body["confidence"], RiskThresholds())
    assert (risk["level"], risk["action"]) == (expected.level, expected.action)
    assert risk["policy"] == "default" and risk["decided_by"] == "model_thresholds"
    assert risk["reasons"][0]["kind"] == "model_thresholds" and risk["tags"] == []
    # The header picks a policy too; the body's field wins over it.
    by_header = ok(
        analyze(
            client,
            _png(meme(31, "今天天气不错", "出去走走")),
            headers={**READ_H, "x-memeserve-policy": "support"},
        )
    )
    assert by_header["risk"]["policy"] == "support"
    assert by_header["risk"]["action"] in ("auto_reply", "escalate")


def test_an_unknown_policy_is_a_422_naming_the_known_ones(client: httpx.Client) -> None:
    data = _png(meme(32, "你好", "世界"))
    for response in (
        analyze(client, data, policy="nope"),
        client.post(
            "/v1/memes/analyze/stream",
            files={"image": ("m.png", data)},
            data={"policy": "nope"},
            headers=READ_H,
        ),
        client.post(
            "/v1/memes/analyze/batch",
            json={"items": [{"id": "a", "image_base64": base64.b64encode(data).decode()}]},
            headers={**READ_H, "x-memeserve-policy": "nope"},
        ),
    ):
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert "nope" in message
        for known in ("default", "moderation", "support", "recommendation"):
            assert known in message


def test_support_escalates_a_complaint_and_recommendation_tags_fun(client: httpx.Client) -> None:
    complaint = ok(
        analyze(client, _png(meme(33, "退款三天了还没到账", "客服也不回")), policy="support")
    )
    assert complaint["intent"] == "complaint", complaint
    assert complaint["risk"]["action"] == "escalate"
    assert complaint["risk"]["decided_by"] == "policy_rule"
    assert complaint["risk"]["reasons"][0]["rule"] == "complaint"
    fun = ok(analyze(client, _png(meme(34, "笑死我了", "哈哈哈哈")), policy="recommendation"))
    assert fun["risk"]["action"] == "recommend"
    assert "humour" in fun["risk"]["tags"] or "highlight" in fun["risk"]["tags"], fun["risk"]


# -- admin keys -------------------------------------------------------------------------


def test_a_read_key_cannot_write_and_no_key_is_401(client: httpx.Client) -> None:
    writes = [
        ("/v1/lists/banned/terms", {"action": "block", "terms": ["坏词"]}),
        ("/v1/lists/banned/terms/remove", {"terms": ["坏词"]}),
        ("/v1/lists/blocked-images/images/remove", {"entry_id": "x"}),
        ("/v1/reviews", {"request_id": "r", "labels": {"offensiveness": 0}}),
        ("/v1/decisions/r/accept", {}),
    ]
    for path, body in writes:
        assert client.post(path, json=body, headers=READ_H).status_code == 403, path
        assert client.post(path, json=body).status_code == 401, path
    for path in ("/v1/lists", "/v1/reviews", "/v1/decisions", "/v1/lists/banned/terms"):
        response = client.get(path, headers=READ_H)
        assert response.status_code == 403, path
        assert "admin" in response.json()["error"]["message"]
    assert client.get("/v1/policies", headers=READ_H).status_code == 200


# -- term lists -------------------------------------------------------------------------


def test_a_listed_term_is_found_however_it_is_written(client: httpx.Client) -> None:
    added = client.post(
        "/v1/lists/banned/terms",
        json={"action": "block", "terms": ["你说得对但是"]},
        headers=ADMIN_H,
    )
    assert added.status_code == 200, added.text
    listed = client.get("/v1/lists/banned/terms", headers=ADMIN_H).json()
    assert listed["terms"] == {"你说得对但是": "block"}
    image = _png(meme(35, "风景", "很好看"))
    spellings = [
        "你说得对，但是",
        "你說得對，但是",  # traditional
        "nsdd，但是",  # pinyin initials
        "ＮＳＤＤ但是",  # full width
        "你\u200b说\u200b得\u200b对但是",  # zero-width characters
        "你🙂说🙂得🙂对，但是",  # emoji between characters
        "你.说.得.对 但是",  # separators
        "N S D D 但是",  # spaced letters
    ]
    for text in spellings:
        body = ok(analyze(client, image, text=text, policy="moderation"))
        risk = body["risk"]
        assert risk["action"] == "block", (text, risk)
        assert risk["decided_by"] == "term_list", (text, risk)
        reason = risk["reasons"][0]
        assert (reason["term"], reason["where"], reason["list"]) == (
            "你说得对但是",
            "context",
            "banned",
        ), text
    # Not under default (it consults no list), nor for an unrelated text.
    assert ok(analyze(client, image, text="你說得對，但是"))["risk"]["decided_by"] != "term_list"
    clean = ok(analyze(client, image, text="说得很对", policy="moderation"))
    assert clean["risk"]["decided_by"] != "term_list"


def test_a_term_in_the_image_text_is_found_by_ocr(client: httpx.Client) -> None:
    added = client.post(
        "/v1/lists/watch/terms", json={"action": "review", "terms": ["周末加班"]}, headers=ADMIN_H
    )
    assert added.status_code == 200, added.text
    body = ok(analyze(client, _png(meme(36, "周末加班", "开心吗")), policy="moderation"))
    reasons = [r for r in body["risk"]["reasons"] if r["kind"] == "term_list"]
    assert reasons and reasons[0]["where"] == "ocr" and reasons[0]["term"] == "周末加班"
    assert body["risk"]["action"] in ("tag", "block")
    removed = client.post(
        "/v1/lists/watch/terms/remove", json={"terms": ["周末加班"]}, headers=ADMIN_H
    )
    assert removed.status_code == 200
    again = ok(analyze(client, _png(meme(36, "周末加班", "开心吗")), policy="moderation"))
    assert all(r["kind"] != "term_list" for r in again["risk"]["reasons"])


# -- image lists ------------------------------------------------------------------------


def _copies(image: Image.Image) -> dict[str, bytes]:
    """Re-encoded, half-size and lightly cropped (2 % a side) copies: what the library
    matches as near copies (its crop tolerance is the fingerprint's; see make bench-dedupe)."""
    w, h = image.size
    dx, dy = int(w * 0.02), int(h * 0.02)
    return {
        "jpeg": encode(image, "JPEG", quality=70),
        "half": _png(image.resize((w // 2, h // 2), Image.Resampling.BILINEAR)),
        "crop": _png(image.crop((dx, dy, w - dx, h - dy))),
    }


def test_a_blocked_image_blocks_its_copies_not_the_template_with_another_caption(
    client: httpx.Client,
) -> None:
    listed = meme(37, "这张图被屏蔽", "任何复制都一样")
    added = client.post(
        "/v1/lists/blocked-images/images",
        files={"image": ("x.png", _png(listed))},
        data={"action": "block", "label": "test entry"},
        headers=ADMIN_H,
    )
    assert added.status_code == 200, added.text
    entry_id = added.json()["entry_id"]
    images = client.get("/v1/lists/blocked-images/images", headers=ADMIN_H).json()["images"]
    assert [e["entry_id"] for e in images] == [entry_id]
    for name, data in _copies(listed).items():
        body = ok(analyze(client, data, policy="moderation"))
        risk = body["risk"]
        assert risk["action"] == "block" and risk["decided_by"] == "image_list", (name, risk)
        assert risk["reasons"][0]["entry_id"] == entry_id
        assert body["meta"]["engine"] == "image_list", name  # answered without the engine
    other = ok(analyze(client, _png(meme(37, "同一个模板", "另一句话")), policy="moderation"))
    assert other["risk"]["decided_by"] != "image_list"
    assert other["meta"]["engine"] == "lite"
    # Another scene that consults no image list is not affected.
    support = ok(analyze(client, _copies(listed)["jpeg"], policy="support"))
    assert support["risk"]["decided_by"] != "image_list"


# -- reviews ----------------------------------------------------------------------------


def test_a_review_changes_the_answer_for_the_image_and_its_copies(client: httpx.Client) -> None:
    image = meme(38, "你说得对，但是", "阴阳怪气")
    first = client.post(
        "/v1/memes/analyze",
        files={"image": ("m.png", _png(image))},
        data={"policy": "moderation"},
        headers={**READ_H, "x-request-id": "review-me-1"},
    )
    before = ok(first)
    assert before["emotion"] == "sarcasm"
    decisions = client.get("/v1/decisions?actions=all", headers=ADMIN_H).json()["decisions"]
    kept = next(d for d in decisions if d["request_id"] == "review-me-1")
    assert kept["thumbnail"].startswith("data:image/jpeg;base64,")
    assert kept["emotion"] == "sarcasm" and kept["policy"] == "moderation"

    review = client.post(
        "/v1/reviews",
        json={
            "request_id": "review-me-1",
            "labels": {"emotion": "neutral", "intent": "other", "offensiveness": 0},
            "reviewer": "alice",
            "note": "a quote, not sarcasm",
        },
        headers=ADMIN_H,
    )
    assert review.status_code == 201, review.text
    made = review.json()["review"]
    assert made["before"]["emotion"] == "sarcasm" and made["after"]["emotion"] == "neutral"
    assert made["after"]["sarcastic"] == before["sarcastic"]  # not given: kept

    for name, data in {"same": _png(image), **_copies(image)}.items():
        body = ok(analyze(client, data, policy="moderation"))
        assert (body["emotion"], body["intent"], body["offensiveness"]) == (
            "neutral",
            "other",
            0,
        ), name
        assert body["confidence"] == 1.0
        assert body["risk"]["decided_by"] == "review", name
        assert body["risk"]["reasons"][0]["reviewer"] == "alice"
    # Under default too: a review is authoritative for the image across scenes.
    assert ok(analyze(client, _png(image)))["emotion"] == "neutral"

    audit = client.get("/v1/reviews", headers=ADMIN_H).json()["reviews"]
    entry = next(r for r in audit if r["review_id"] == made["review_id"])
    assert entry["reviewer"] == "alice" and entry["key"] == "moderator"
    assert entry["before"]["emotion"] == "sarcasm" and entry["after"]["emotion"] == "neutral"
    assert entry["note"] == "a quote, not sarcasm"


def test_accept_and_review_errors(client: httpx.Client) -> None:
    response = client.post(
        "/v1/memes/analyze",
        files={"image": ("m.png", _png(meme(39, "好耶", "太棒了")))},
        headers={**READ_H, "x-request-id": "accept-me-1"},
    )
    ok(response)
    accepted = client.post("/v1/decisions/accept-me-1/accept", headers=ADMIN_H)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["review"]["reviewer"] == "moderator"
    assert accepted.json()["review"]["before"] == accepted.json()["review"]["after"]
    missing = client.post("/v1/decisions/never-seen/accept", headers=ADMIN_H)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = client.post(
        "/v1/reviews",
        json={"request_id": "accept-me-1", "labels": {"emotion": "joyish"}},
        headers=ADMIN_H,
    )
    assert bad.status_code == 422
    bad_term = client.post(
        "/v1/lists/banned/terms", json={"action": "ban", "terms": ["x"]}, headers=ADMIN_H
    )
    assert bad_term.status_code == 422
    bad_name = client.post(
        "/v1/lists/Bad%20Name/terms", json={"action": "block", "terms": ["x"]}, headers=ADMIN_H
    )
    assert bad_name.status_code == 422
    stats = client.get("/v1/lists", headers=ADMIN_H).json()["lists"]
    assert "banned" in stats and "blocked-images" in stats


def test_resent_bytes_answered_by_the_ingress_keep_their_decision_and_see_a_review(
    client: httpx.Client,
) -> None:
    """The hot path (cache.hot_entries): a byte-identical resend is answered inside the
    Ingress, its decision still reaches the moderators with the image, and a review
    made through the Ingress applies to the very next resend."""
    data = _png(meme(40, "热门表情包", "转发了一万次"))
    hot_before = client.get("/v1/status", headers=READ_H).json()["cache"]["hot"]["hits"]
    ok(analyze(client, data, policy="moderation"))  # the engine answers, the store keeps it
    time.sleep(0.6)  # the Ingress has heard the store's epoch (hot_sync_s 0.25)
    for n in range(3):
        response = client.post(
            "/v1/memes/analyze",
            files={"image": ("m.png", data)},
            data={"policy": "moderation"},
            headers={**READ_H, "x-request-id": f"hot-{n}"},
        )
        assert ok(response)["meta"]["cache"]["match"] == "exact"
    status = client.get("/v1/status", headers=READ_H).json()["cache"]
    assert status["hot"]["hits"] >= hot_before + 2, status
    assert status["hot"]["entries"] >= 1

    review = client.post(
        "/v1/reviews",
        json={"request_id": "hot-2", "labels": {"emotion": "happiness"}, "reviewer": "bob"},
        headers=ADMIN_H,
    )
    assert review.status_code == 201, review.text  # the hot answer's decision was kept
    body = ok(analyze(client, data, policy="moderation"))
    assert body["risk"]["decided_by"] == "review" and body["emotion"] == "happiness"
