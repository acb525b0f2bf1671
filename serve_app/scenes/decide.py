"""The one decision of a scene policy: an answer's labels, list hits and reviews → its risk.

:func:`decide` is applied at the Ingress to every answer (fresh, cached or answered
without the engine), so the stored analysis stays policy-free and one image can be
judged by several scenes. Order, the first that applies decides the action:

0. a **review** of the image or a near copy (when the policy obeys reviews) is
   authoritative: the reviewer's labels go through the rules and levels of step 3, and
   list hits are only reported (a person has looked at this image);
1. a **pass-list** hit (term or image) → the policy's mildest action;
2. a **block-list** hit → ``list_actions.block``;
3. the model's labels through the policy's **rules** (first with an action), else its
   ``level_actions`` for the risk level;
4. a **review-list** hit raises the action to at least ``list_actions.review``.

Every answer's ``risk.reasons`` lists what took part, the deciding reason first.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from serve_app.config.models import PolicyArgs, PolicyRule, RiskThresholds
from serve_app.scenes.state import ImageListHit, Marks, ReviewHit
from serve_app.understanding.analysis import Analysis, Reason
from serve_app.understanding.labels import EMOTION_ZH, INTENT_ZH
from serve_app.understanding.risk import assess_risk
from serve_app.understanding.terms import TermHit

LABEL_FIELDS = ("emotion", "intent", "sarcastic", "offensiveness")
"""The labels a reviewer sets (confidence becomes 1.0)."""

_LEVEL_RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}


def labels_of(analysis: dict[str, Any]) -> dict[str, Any]:
    """The reviewable labels of an analysis."""
    return {name: analysis[name] for name in LABEL_FIELDS}


def decide(
    analysis: dict[str, Any],
    policy_name: str,
    policy: PolicyArgs,
    *,
    term_hits: Sequence[TermHit] = (),
    marks: Marks | None = None,
) -> dict[str, Any]:
    """``analysis`` judged by ``policy``: a new dict with ``risk`` (and reviewed labels)."""
    result = copy.deepcopy(analysis)
    marks = marks or Marks()
    review = marks.review if policy.obey_reviews else None
    if review is not None:
        _apply_review(result, review)
    level = _risk_level(result, analysis, policy.thresholds, reviewed=review is not None)

    images = [hit for hit in marks.images if hit.list_name in policy.image_lists]
    terms = [hit for hit in term_hits if hit.list_name in policy.term_lists]
    listed = [*(_image_reason(h) for h in images), *(_term_reason(h) for h in terms)]
    # A reviewed image: the lists are reported, the reviewer's labels decide.
    obeyed = [] if review is not None else listed
    passes = [r for r, a in obeyed if a == "pass"]
    blocks = [r for r, a in obeyed if a == "block"]
    reviews = [r for r, a in obeyed if a == "review"]
    reported = [r for r, _ in listed] if review is not None else []

    matching = [(i, rule) for i, rule in enumerate(policy.rules) if _matches(rule, result, level)]
    tags = list(dict.fromkeys(tag for _, rule in matching for tag in rule.tags))
    labels_reason = _labels_reason(result, level, review)
    rule_reasons = [_rule_reason(i, rule) for i, rule in matching]

    if passes:
        action, level = policy.actions[0], "none"
        deciding = passes[0]
        others = [*passes[1:], *blocks, *reviews, labels_reason, *rule_reasons]
    elif blocks:
        action, level = policy.list_actions.block, "high"
        deciding = blocks[0]
        others = [*blocks[1:], *reviews, labels_reason, *rule_reasons]
    else:
        deciding_rule = next(((i, r) for i, r in matching if r.action is not None), None)
        if deciding_rule is not None:
            assert deciding_rule[1].action is not None
            action = deciding_rule[1].action
            deciding = _rule_reason(*deciding_rule)
            others = [labels_reason, *(r for r in rule_reasons if r != deciding)]
        else:
            action = policy.level_actions[level]
            deciding = labels_reason
            others = list(rule_reasons)
        floor = policy.list_actions.review
        if reviews and policy.rank(floor) > policy.rank(action):
            others = [deciding, *others]
            action, deciding = floor, reviews[0]
            others = [*reviews[1:], *others]
            level = max(level, "medium", key=_LEVEL_RANK.__getitem__)
        else:
            others = [*others, *reviews]
    others = [*others, *reported]
    result["risk"] = {
        "level": level,
        "action": action,
        "policy": policy_name,
        "tags": tags,
        "decided_by": deciding.kind,
        "reasons": [r.model_dump(exclude_none=True) for r in (deciding, *others)],
    }
    return Analysis.model_validate(result).model_dump(mode="json")


def answer_without_engine(
    marks: Marks,
    policy: PolicyArgs,
    *,
    request_id: str,
    image: dict[str, Any],
    level: int,
    preprocess_ms: float,
) -> dict[str, Any] | None:
    """An analysis for an image the policy judges without the model, or None.

    A reviewed image (when the policy obeys reviews) is answered with the reviewer's
    labels; a block-listed one (a list of this policy, and no pass-list entry) with
    offensiveness 3. :func:`decide` then judges it like any other answer.
    """
    images = [hit for hit in marks.images if hit.list_name in policy.image_lists]
    if any(hit.action == "pass" for hit in images):
        return None
    review = marks.review if policy.obey_reviews else None
    if review is not None:
        labels = review.labels
        engine = "review"
        explanation = f"人工复核结论（{review.reviewer}）：{_labels_zh(labels)}"
    else:
        blocked = next((hit for hit in images if hit.action == "block"), None)
        if blocked is None:
            return None
        labels = {"emotion": "neutral", "intent": "offensive", "sarcastic": False}
        labels["offensiveness"] = 3
        engine = "image_list"
        explanation = f"图像命中屏蔽名单 {blocked.list_name}（条目 {blocked.entry_id}）"
    analysis = {
        "request_id": request_id,
        "emotion": labels["emotion"],
        "emotion_zh": EMOTION_ZH[labels["emotion"]],
        "intent": labels["intent"],
        "sarcastic": bool(labels["sarcastic"]),
        "offensiveness": int(labels["offensiveness"]),
        "confidence": 1.0,
        "explanation": explanation,
        "risk": {"level": "none", "action": policy.actions[0]},
        "evidence": {"ocr_text": [], "slang": []},
        "meta": {
            "engine": engine,
            "model": engine,
            "cache": {"hit": False, "match": None, "distance": None},
            "degradation_level": level,
            "image": image,
            "timings_ms": {
                "preprocess": round(preprocess_ms, 2),
                "engine": 0.0,
                "structure": 0.0,
                "total": 0.0,
            },
        },
    }
    return Analysis.model_validate(analysis).model_dump(mode="json")


def _apply_review(result: dict[str, Any], review: ReviewHit) -> None:
    before = labels_of(result)
    for name in LABEL_FIELDS:
        result[name] = review.labels[name]
    result["emotion_zh"] = EMOTION_ZH[result["emotion"]]
    result["confidence"] = 1.0
    if labels_of(result) != before:
        result["explanation"] = (
            f"人工复核（{review.reviewer}）更正了模型的判断，结论：{_labels_zh(review.labels)}"
        )


def _labels_zh(labels: dict[str, Any]) -> str:
    sarcastic = "，反讽" if labels["sarcastic"] else ""
    return (
        f"{EMOTION_ZH[labels['emotion']]}、{INTENT_ZH[labels['intent']]}{sarcastic}，"
        f"冒犯程度 {labels['offensiveness']}"
    )


def _risk_level(
    result: dict[str, Any],
    model_answer: dict[str, Any],
    thresholds: RiskThresholds | None,
    *,
    reviewed: bool,
) -> str:
    """The policy's thresholds, else the Structurer's level (recomputed for reviewed labels)."""
    if thresholds is None and not reviewed:
        return str(model_answer["risk"]["level"])
    risk = assess_risk(
        result["offensiveness"], result["confidence"], thresholds or RiskThresholds()
    )
    return risk.level


def _matches(rule: PolicyRule, result: dict[str, Any], level: str) -> bool:
    when = rule.when
    checks: Iterable[bool] = (
        when.emotion is None or result["emotion"] in when.emotion,
        when.intent is None or result["intent"] in when.intent,
        when.sarcastic is None or result["sarcastic"] == when.sarcastic,
        when.min_offensiveness is None or result["offensiveness"] >= when.min_offensiveness,
        when.max_offensiveness is None or result["offensiveness"] <= when.max_offensiveness,
        when.min_confidence is None or result["confidence"] >= when.min_confidence,
        when.risk_level is None or level in when.risk_level,
    )
    return all(checks)


def _rule_reason(index: int, rule: PolicyRule) -> Reason:
    name = rule.name or f"rule {index + 1}"
    what = f"action {rule.action}" if rule.action else "tags " + ", ".join(rule.tags)
    return Reason(kind="policy_rule", detail=f"{name}: {what}", rule=name, action=rule.action)


def _labels_reason(result: dict[str, Any], level: str, review: ReviewHit | None) -> Reason:
    if review is not None:
        return Reason(
            kind="review",
            detail=f"reviewed by {review.reviewer}: risk level {level}",
            reviewer=review.reviewer,
            review_id=review.review_id,
            match=review.match,
            distance=review.distance,
        )
    score = result["offensiveness"] * result["confidence"]
    return Reason(
        kind="model_thresholds",
        detail=f"offensiveness {result['offensiveness']} × confidence "
        f"{result['confidence']:.2f} = {score:.2f}: risk level {level}",
    )


def _image_reason(hit: ImageListHit) -> tuple[Reason, str]:
    reason = Reason(
        kind="image_list",
        detail=f"image on {hit.action} list {hit.list_name!r} ({hit.match}, distance "
        f"{hit.distance})",
        list=hit.list_name,
        action=hit.action,
        entry_id=hit.entry_id,
        match=hit.match,
        distance=hit.distance,
    )
    return reason, hit.action


def _term_reason(hit: TermHit) -> tuple[Reason, str]:
    where = "ocr" if hit.where == "ocr" else "context"
    reason = Reason(
        kind="term_list",
        detail=f"term {hit.term!r} of {hit.action} list {hit.list_name!r} in the {where} text",
        list=hit.list_name,
        action=hit.action,
        term=hit.term,
        where=where,
    )
    return reason, hit.action
