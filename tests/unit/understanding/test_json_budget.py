"""The constrained answer's worst case fits the level's output-token budget."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.understanding.labels import EMOTIONS, INTENTS
from serve_app.understanding.prompts import (
    SKELETON_CHARS,
    analysis_json_schema,
    fit_text_bounds,
    text_bound,
)

WIDE = "\U0001f923"  # four UTF-8 bytes: four byte-level tokens at worst


def bound(field: dict[str, Any]) -> int:
    value = text_bound(field)
    assert value is not None
    return value


def worst_answer(schema: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The longest answer ``schema`` allows, and its free-text character count."""
    props = schema["properties"]
    explanation = WIDE * bound(props["explanation"])
    items = props["ocr_text"]["maxItems"]
    item = WIDE * bound(props["ocr_text"]["items"])
    answer = {
        "emotion": max(EMOTIONS, key=len),
        "intent": max(INTENTS, key=len),
        "sarcastic": False,
        "offensiveness": 3,
        "confidence": 0.123456,  # xgrammar's longest number in [0, 1]
        "explanation": explanation,
        "ocr_text": [item] * items,
        "slang": [item] * items,
    }
    return answer, len(explanation) + 2 * items * len(item)


@settings(max_examples=300, deadline=None)  # a shared, noisy machine
@given(
    max_tokens=st.integers(16, 4096),
    explanation_cap=st.integers(1, 600),
    tokens_per_char=st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0, 6.0]),
)
def test_every_allowed_answer_closes_within_the_budget(
    max_tokens: int, explanation_cap: int, tokens_per_char: float
) -> None:
    schema = analysis_json_schema(
        explanation_cap, max_output_tokens=max_tokens, tokens_per_char=tokens_per_char
    )
    answer, free_chars = worst_answer(schema)
    jsonschema.validate(answer, schema)
    text = json.dumps(answer, ensure_ascii=False)  # ", " and ": " as xgrammar writes them
    fixed_chars = len(text) - free_chars  # ASCII: at most one token each
    worst_tokens = fixed_chars + free_chars * tokens_per_char
    # A budget below the skeleton cannot hold any answer: there the bounds are minimal.
    if max_tokens >= SKELETON_CHARS + 2 + 6 * tokens_per_char:
        assert worst_tokens <= max_tokens
    assert bound(schema["properties"]["explanation"]) <= explanation_cap
    # vLLM refuses a string schema with both a pattern and a length bound (xgrammar).
    for field in (schema["properties"]["explanation"], schema["properties"]["slang"]["items"]):
        assert "maxLength" not in field


def test_bounds_grow_with_the_budget_and_keep_the_level_cap() -> None:
    small = fit_text_bounds(max_output_tokens=320, explanation_max_chars=120, tokens_per_char=4)
    large = fit_text_bounds(max_output_tokens=1024, explanation_max_chars=120, tokens_per_char=4)
    assert small.explanation_chars < large.explanation_chars == 120
    assert large.list_items >= small.list_items >= 1
    tight = fit_text_bounds(max_output_tokens=96, explanation_max_chars=40, tokens_per_char=4)
    assert tight.list_items == 0 and tight.explanation_chars == 1


def test_unbounded_schema_is_unchanged_without_a_budget() -> None:
    schema = analysis_json_schema(300)
    props = schema["properties"]
    assert text_bound(props["explanation"]) == 300
    assert props["ocr_text"] == {"type": "array", "items": {"type": "string"}, "maxItems": 20}
    bounded = analysis_json_schema(300, max_output_tokens=512, tokens_per_char=4)
    assert bound(bounded["properties"]["ocr_text"]["items"]) <= 32
    assert bounded["properties"]["confidence"] == props["confidence"]


def test_bounded_text_refuses_what_would_break_strict_json() -> None:
    schema = analysis_json_schema(8, max_output_tokens=512, tokens_per_char=4)
    explanation = schema["properties"]["explanation"]
    for good in ("笑死我了", "", "🤣 nb", "abcdefgh"):
        jsonschema.validate(good, explanation)
    for bad in ("a\x13b", 'say "hi"', "back\\slash", "abcdefghi", "line\nbreak"):
        try:
            jsonschema.validate(bad, explanation)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"{bad!r} passed the bounded explanation")
