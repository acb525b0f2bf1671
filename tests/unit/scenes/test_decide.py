"""The one decision of a scene policy (serve_app.scenes.decide), on plain answers."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.config.models import IngressUserConfig, PolicyArgs, RiskThresholds
from serve_app.scenes.decide import answer_without_engine, decide
from serve_app.scenes.state import ImageListHit, Marks, ReviewHit
from serve_app.understanding.analysis import Analysis
from serve_app.understanding.risk import assess_risk
from serve_app.understanding.terms import TermHit


def answer(
    offensiveness: int = 0,
    confidence: float = 0.8,
    emotion: str = "neutral",
    intent: str = "other",
    ocr: tuple[str, ...] = (),
) -> dict[str, Any]:
    risk = assess_risk(offensiveness, confidence, RiskThresholds())
    return {
        "request_id": "r1",
        "emotion": emotion,
        "emotion_zh": "中性",
        "intent": intent,
        "sarcastic": False,
        "offensiveness": offensiveness,
        "confidence": confidence,
        "explanation": "模型的解释",
        "risk": {"level": risk.level, "action": risk.action},
        "evidence": {"ocr_text": list(ocr), "slang": []},
        "meta": {
            "engine": "lite",
            "model": "m",
            "cache": {"hit": False, "match": None, "distance": None},
            "degradation_level": 0,
            "image": {"width": 10, "height": 10, "frames": 1},
            "timings_ms": {"preprocess": 1.0, "engine": 2.0, "structure": 0.5, "total": 4.0},
        },
    }


MODERATION = PolicyArgs(term_lists=("banned", "watch", "allow"), image_lists=("img",))
SUPPORT = PolicyArgs.model_validate(
    {
        "actions": ["auto_reply", "escalate"],
        "level_actions": {
            "none": "auto_reply",
            "low": "auto_reply",
            "medium": "escalate",
            "high": "escalate",
        },
        "list_actions": {"block": "escalate", "review": "escalate"},
        "rules": [{"name": "complaint", "when": {"intent": ["complaint"]}, "action": "escalate"}],
    }
)
REVIEW = ReviewHit(
    review_id="rv1",
    labels={"emotion": "anger", "intent": "offensive", "sarcastic": True, "offensiveness": 3},
    reviewer="alice",
    at=1.0,
    match="near",
    distance=5,
)


def term(list_name: str, action: str, where: str = "context") -> TermHit:
    return TermHit(term="坏词", list_name=list_name, action=action, where=where, matched="坏词")  # type: ignore[arg-type]


def image(action: str, list_name: str = "img") -> ImageListHit:
    return ImageListHit(
        list_name=list_name, action=action, entry_id="e1", label=None, match="exact", distance=0
    )


@pytest.mark.parametrize("offensiveness,confidence", [(0, 0.9), (1, 0.6), (2, 0.8), (3, 0.95)])
def test_default_keeps_the_structurers_level_and_action(
    offensiveness: int, confidence: float
) -> None:
    # As the Structurer stores it: every field of the schema present.
    model = Analysis.model_validate(answer(offensiveness, confidence)).model_dump(mode="json")
    judged = decide(model, "default", PolicyArgs())
    assert judged["risk"]["level"] == model["risk"]["level"]
    assert judged["risk"]["action"] == model["risk"]["action"]
    assert judged["risk"]["decided_by"] == "model_thresholds"
    assert {k: v for k, v in judged.items() if k != "risk"} == {
        k: v for k, v in model.items() if k != "risk"
    }
    Analysis.model_validate(judged)


def test_default_policy_ignores_lists_it_does_not_name() -> None:
    judged = decide(
        answer(),
        "default",
        PolicyArgs(),
        term_hits=[term("banned", "block")],
        marks=Marks(images=(image("block"),)),
    )
    assert judged["risk"]["action"] == "pass"
    assert judged["risk"]["decided_by"] == "model_thresholds"


def test_list_order_pass_then_block_then_labels_then_review_floor() -> None:
    both = decide(
        answer(3, 0.95),
        "m",
        MODERATION,
        term_hits=[term("banned", "block"), term("allow", "pass")],
    )
    assert both["risk"]["action"] == "pass" and both["risk"]["decided_by"] == "term_list"
    assert both["risk"]["level"] == "none"
    assert [r["kind"] for r in both["risk"]["reasons"]][:2] == ["term_list", "term_list"]

    blocked = decide(answer(), "m", MODERATION, marks=Marks(images=(image("block"),)))
    assert blocked["risk"]["action"] == "block" and blocked["risk"]["level"] == "high"
    assert blocked["risk"]["reasons"][0]["entry_id"] == "e1"

    floor = decide(answer(), "m", MODERATION, term_hits=[term("watch", "review", "ocr")])
    assert floor["risk"]["action"] == "tag" and floor["risk"]["decided_by"] == "term_list"
    assert floor["risk"]["reasons"][0]["where"] == "ocr"
    already = decide(answer(3, 0.95), "m", MODERATION, term_hits=[term("watch", "review")])
    assert already["risk"]["action"] == "block"
    assert already["risk"]["decided_by"] == "model_thresholds"


def test_a_review_is_authoritative_over_model_and_lists() -> None:
    judged = decide(
        answer(0, 0.9),
        "m",
        MODERATION,
        term_hits=[term("allow", "pass")],
        marks=Marks(review=REVIEW),
    )
    assert (judged["emotion"], judged["offensiveness"], judged["confidence"]) == ("anger", 3, 1.0)
    assert judged["emotion_zh"] == "愤怒"
    assert judged["risk"]["decided_by"] == "review" and judged["risk"]["action"] == "block"
    assert "alice" in judged["explanation"]
    kinds = [r["kind"] for r in judged["risk"]["reasons"]]
    assert kinds[0] == "review" and "term_list" in kinds  # reported, not obeyed
    ignoring = PolicyArgs(obey_reviews=False)
    assert decide(answer(), "x", ignoring, marks=Marks(review=REVIEW))["emotion"] == "neutral"


def test_rules_decide_first_and_every_matching_rule_tags() -> None:
    complaint = decide(answer(0, 0.9, intent="complaint"), "support", SUPPORT)
    assert complaint["risk"]["action"] == "escalate"
    assert complaint["risk"]["decided_by"] == "policy_rule"
    assert complaint["risk"]["reasons"][0]["rule"] == "complaint"
    calm = decide(answer(0, 0.9), "support", SUPPORT)
    assert calm["risk"]["action"] == "auto_reply"
    tagging = PolicyArgs.model_validate(
        {
            "actions": ["recommend", "skip"],
            "level_actions": {
                "none": "recommend",
                "low": "recommend",
                "medium": "skip",
                "high": "skip",
            },
            "list_actions": {"block": "skip", "review": "skip"},
            "rules": [
                {"when": {"emotion": ["excitement"]}, "tags": ["highlight"]},
                {"when": {"max_offensiveness": 1}, "tags": ["humour", "highlight"]},
            ],
        }
    )
    tagged = decide(answer(0, 0.9, emotion="excitement"), "rec", tagging)
    assert tagged["risk"]["tags"] == ["highlight", "humour"]
    assert tagged["risk"]["action"] == "recommend"


def test_policy_thresholds_override_the_structurers() -> None:
    strict = PolicyArgs(thresholds=RiskThresholds(throttle=0.1, tag=0.2, block=0.3))
    judged = decide(answer(1, 0.5), "strict", strict)
    assert judged["risk"]["level"] == "high" and judged["risk"]["action"] == "block"


def test_answers_without_the_engine() -> None:
    kwargs: dict[str, Any] = {
        "request_id": "r9",
        "image": {"width": 5, "height": 5, "frames": 1},
        "level": 1,
        "preprocess_ms": 3.0,
    }
    reviewed = answer_without_engine(Marks(review=REVIEW), MODERATION, **kwargs)
    assert reviewed is not None and reviewed["meta"]["engine"] == "review"
    assert reviewed["emotion"] == "anger" and reviewed["confidence"] == 1.0
    blocked = answer_without_engine(Marks(images=(image("block"),)), MODERATION, **kwargs)
    assert blocked is not None and blocked["meta"]["engine"] == "image_list"
    assert blocked["meta"]["degradation_level"] == 1
    passed = Marks(images=(image("block"), image("pass", "img")))
    assert answer_without_engine(passed, MODERATION, **kwargs) is None
    assert (
        answer_without_engine(Marks(images=(image("block", "other"),)), MODERATION, **kwargs)
        is None
    )
    assert answer_without_engine(Marks(images=(image("review"),)), MODERATION, **kwargs) is None


def test_policy_config_is_strict() -> None:
    with pytest.raises(ValueError, match="not one of actions"):
        PolicyArgs.model_validate({"actions": ["a", "b"]})
    with pytest.raises(ValueError, match="unknown"):
        PolicyArgs.model_validate({"rules": [{"when": {"emotion": ["joyish"]}, "action": "tag"}]})
    with pytest.raises(ValueError, match="policy name"):
        IngressUserConfig.model_validate({"policies": {"Bad Name": {}}})
    assert list(IngressUserConfig().policies) == ["default"]
