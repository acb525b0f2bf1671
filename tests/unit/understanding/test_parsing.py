"""Malformed and odd model output through the parser and field normaliser.

Every case states the fields the Structurer must end up with and the exact warnings
it records, so a change in how a repair is reported is a visible test change.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from serve_app.understanding.labels import EMOTIONS, INTENTS
from serve_app.understanding.parsing import extract_object
from serve_app.understanding.structuring import (
    FALLBACK_EXPLANATION,
    MISSING_EXPLANATION,
    Fields,
    normalise_fields,
    parse_model_text,
)

# The canonical answer most cases wrap, break or rewrite.
BODY = (
    '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
    '"offensiveness": 1, "confidence": 0.8, "explanation": "阴阳怪气地吐槽加班"}'
)
SARCASM = ("sarcasm", "complaint", True, 1, 0.8)
FALLBACK = ("neutral", "other", False, 0, 0.0)
# What the missing-field warnings look like when only emotion and intent are given.
ONLY_LABELS = [
    "sarcastic_inferred",
    "offensiveness_missing",
    "confidence_missing",
    "explanation_missing",
]


@dataclass(frozen=True)
class Case:
    """One model text, the fields it must give and the exact warnings recorded."""

    id: str
    text: object
    expected: tuple[str, str, bool, int, float]
    warnings: list[str]


def _check(case: Case) -> Fields:
    fields, warnings = parse_model_text(case.text)
    emotion, intent, sarcastic, offensiveness, confidence = case.expected
    assert fields.emotion == emotion
    assert fields.intent == intent
    assert fields.sarcastic is sarcastic
    assert fields.offensiveness == offensiveness
    assert fields.confidence == pytest.approx(confidence)
    assert warnings == case.warnings
    # Whatever came in, the fields are inside the schema's closed sets and ranges.
    assert fields.emotion in EMOTIONS and fields.intent in INTENTS
    assert 0 <= fields.offensiveness <= 3 and 0.0 <= fields.confidence <= 1.0
    assert fields.explanation
    return fields


# --------------------------------------------------------------------------------------
# Wrappers around the JSON: prose, fences, think blocks, boxes, special tokens
# --------------------------------------------------------------------------------------

WRAPPER_CASES = [
    Case("clean_json", BODY, SARCASM, []),
    Case(
        "clean_json_pretty", json.dumps(json.loads(BODY), indent=2, ensure_ascii=False), SARCASM, []
    ),
    Case("prose_before", "Here is my analysis of the meme: " + BODY, SARCASM, []),
    Case("prose_after", BODY + "\nHope this helps! Let me know.", SARCASM, []),
    Case("prose_around_zh", "分析如下：\n" + BODY + "\n以上是我的判断。", SARCASM, []),
    Case("fence_json", "```json\n" + BODY + "\n```", SARCASM, []),
    Case("fence_plain", "```\n" + BODY + "\n```", SARCASM, []),
    Case("fence_inline", "```json" + BODY + "```", SARCASM, []),
    Case("fence_unclosed", "结果：\n```json\n" + BODY + "\n", SARCASM, []),
    Case(
        "fence_second_has_json",
        "先看代码 ```python\nprint('hi')\n``` 然后 ```json\n" + BODY + "\n```",
        SARCASM,
        [],
    ),
    Case(
        "think_closed",
        '<think>用户给了一张图，也许是 {"emotion": "love"} 吧</think>\n' + BODY,
        SARCASM,
        ["removed_think_block"],
    ),
    Case("think_unclosed", "<think>嗯，我认为答案是 " + BODY, SARCASM, ["removed_think_block"]),
    Case(
        "think_closing_only",
        'reasoning... maybe {"emotion": "love", "intent": "other"}?</think>' + BODY,
        SARCASM,
        ["removed_think_block"],
    ),
    Case("think_upper_case", "<THINK>x</THINK>" + BODY, SARCASM, ["removed_think_block"]),
    Case(
        "think_without_answer",
        '<think>{"emotion": "love", "intent": "other"}</think>',
        FALLBACK,
        ["removed_think_block", "empty_model_output", "unparseable_model_output"],
    ),
    Case("box_closed", "<|begin_of_box|>" + BODY + "<|end_of_box|>", SARCASM, []),
    Case("box_unclosed", "<|begin_of_box|>" + BODY, SARCASM, []),
    Case(
        "box_preferred_over_later_object",
        "<|begin_of_box|>" + BODY + '<|end_of_box|> P.S. {"emotion": "anger", '
        '"intent": "offensive", "explanation": "a much longer object after the box"}',
        SARCASM,
        [],
    ),
    Case(
        "think_then_box",
        "<think>先想一想</think><|begin_of_box|>" + BODY + "<|end_of_box|>",
        SARCASM,
        ["removed_think_block"],
    ),
    Case("special_tokens", "<|assistant|>\n" + BODY + "<|user|><|endoftext|>", SARCASM, []),
    Case("glm_prefix_tokens", "[gMASK]<sop>" + BODY + "<eop>", SARCASM, []),
    Case("top_level_array", "[" + BODY + "]", SARCASM, []),
    Case(
        "two_objects_larger_wins",
        'Format example: {"emotion": "love"}. Answer: ' + BODY,
        SARCASM,
        [],
    ),
    Case("two_objects_answer_first", BODY + ' (schema: {"emotion": "string"})', SARCASM, []),
    Case(
        "braces_inside_strings",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": 0.8, "explanation": "图中有 } 和 { 符号"}',
        SARCASM,
        [],
    ),
    Case(
        "escaped_quotes_inside_string",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": 0.8, "explanation": "他说\\"好的\\"，其实在骂"}',
        SARCASM,
        [],
    ),
]


@pytest.mark.parametrize("case", WRAPPER_CASES, ids=[c.id for c in WRAPPER_CASES])
def test_wrapped_output(case: Case) -> None:
    """Prose, fences, think blocks, boxes and tokens around the answer are removed."""
    _check(case)


# --------------------------------------------------------------------------------------
# Near-JSON: the syntax repairs
# --------------------------------------------------------------------------------------

SYNTAX_CASES = [
    Case("trailing_comma_object", BODY[:-1] + ",}", SARCASM, ["repaired_json"]),
    Case(
        "trailing_comma_list",
        '{"emotion": ["sarcasm",], "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": 0.8, "explanation": "x",\n}',
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "single_quotes",
        "{'emotion': 'sarcasm', 'intent': 'complaint', 'sarcastic': true, "
        "'offensiveness': 1, 'confidence': 0.8, 'explanation': '阴阳怪气'}",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "single_quoted_keys_double_quoted_apostrophe",
        "{'emotion': 'sarcasm', 'intent': 'complaint', 'sarcastic': true, "
        "'offensiveness': 1, 'confidence': 0.8, 'explanation': \"it's ironic\"}",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "bare_keys",
        "{emotion: sarcasm, intent: complaint, sarcastic: true, offensiveness: 1, "
        "confidence: 0.8, explanation: '阴阳怪气'}",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "python_literals",
        "{'emotion': 'sarcasm', 'intent': 'complaint', 'sarcastic': True, "
        "'offensiveness': 1, 'confidence': 0.8, 'explanation': None}",
        SARCASM,
        ["repaired_json", "explanation_missing"],
    ),
    Case(
        "python_false",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": False, '
        '"offensiveness": 1, "confidence": 0.8, "explanation": "x"}',
        ("sarcasm", "complaint", False, 1, 0.8),
        ["repaired_json"],
    ),
    Case(
        "js_line_comment",
        '{"emotion": "sarcasm", // the label\n "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": 0.8, "explanation": "x"}',
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "fullwidth_punctuation",
        "{“emotion”：“sarcasm”，“intent”：“complaint”，“sarcastic”：true，"
        "“offensiveness”：1，“confidence”：0.8，“explanation”：“阴阳怪气”}",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "fullwidth_braces",
        "｛“情绪”：“讽刺”，“意图”：“吐槽”，“是否讽刺”：“是”，“冒犯程度”：1，"
        "“置信度”：0.8，“解释”：“阴阳怪气”｝",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "chinese_bare_keys_and_values",
        "{情绪：讽刺，意图：吐槽，是否讽刺：是，冒犯程度：1，置信度：0.8，解释：阴阳怪气}",
        SARCASM,
        ["repaired_json"],
    ),
    Case(
        "nan_confidence_is_missing",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": NaN, "explanation": "x"}',
        ("sarcasm", "complaint", True, 1, 0.5),
        ["confidence_missing"],
    ),
    Case(
        "infinity_offensiveness_is_missing",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": Infinity, "confidence": 0.8, "explanation": "x"}',
        ("sarcasm", "complaint", True, 0, 0.8),
        ["offensiveness_missing"],
    ),
    Case(
        "negative_infinity_confidence",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": -Infinity, "explanation": "x"}',
        ("sarcasm", "complaint", True, 1, 0.5),
        ["confidence_missing"],
    ),
]


@pytest.mark.parametrize("case", SYNTAX_CASES, ids=[c.id for c in SYNTAX_CASES])
def test_near_json_is_repaired(case: Case) -> None:
    """Trailing commas, quotes, bare keys, literals and full-width punctuation."""
    _check(case)


# --------------------------------------------------------------------------------------
# Truncated output
# --------------------------------------------------------------------------------------

TRUNCATED_CASES = [
    Case("cut_mid_string", BODY[: BODY.index("加班")], SARCASM, ["closed_truncated_json"]),
    Case(
        "cut_after_last_key",
        BODY[: BODY.index(': "阴阳')],
        SARCASM,
        ["closed_truncated_json", "explanation_missing"],
    ),
    Case(
        "cut_after_comma",
        BODY[: BODY.index('"explanation"')],
        SARCASM,
        ["closed_truncated_json", "explanation_missing"],
    ),
    Case(
        "cut_after_colon",
        BODY[: BODY.index("0.8")],
        ("sarcasm", "complaint", True, 1, 0.5),
        ["closed_truncated_json", "confidence_missing", "explanation_missing"],
    ),
    Case(
        "cut_mid_key",
        '{"emotion": "anger", "intent": "offensive", "expl',
        ("anger", "offensive", False, 0, 0.5),
        ["closed_truncated_json", *ONLY_LABELS],
    ),
    Case(
        "cut_inside_nested_list",
        '{"emotion": "sarcasm", "intent": "complaint", "ocr_text": ["加班", "福报",',
        ("sarcasm", "complaint", True, 0, 0.5),
        ["closed_truncated_json", *ONLY_LABELS],
    ),
    Case(
        "cut_inside_fence",
        "```json\n" + BODY[: BODY.index("加班")],
        SARCASM,
        ["closed_truncated_json"],
    ),
    Case(
        "cut_mid_literal",
        '{"emotion": "anger", "intent": "offensive", "sarcastic": tr',
        ("anger", "offensive", False, 0, 0.5),
        ["repaired_json", "closed_truncated_json", *ONLY_LABELS],
    ),
]


@pytest.mark.parametrize("case", TRUNCATED_CASES, ids=[c.id for c in TRUNCATED_CASES])
def test_truncated_output_is_closed(case: Case) -> None:
    """Output cut by the token budget keeps every field written before the cut."""
    _check(case)


def test_truncated_explanation_keeps_its_text() -> None:
    """The part of a string written before the cut survives."""
    fields, warnings = parse_model_text(BODY[: BODY.index("加班")])
    assert fields.explanation == "阴阳怪气地吐槽"
    assert warnings == ["closed_truncated_json"]


# --------------------------------------------------------------------------------------
# Keys and label values: Chinese, synonyms, lists, dicts, wrappers
# --------------------------------------------------------------------------------------

KEY_CASES = [
    Case(
        "chinese_keys",
        '{"情绪": "讽刺", "意图": "吐槽", "是否讽刺": "是", "冒犯程度": "1", '
        '"置信度": "0.8", "解释": "阴阳怪气"}',
        SARCASM,
        [],
    ),
    Case(
        "chinese_key_synonyms",
        '{"情感": "嘲讽", "目的": "抱怨", "反讽": true, "攻击性": 1, "可信度": 0.8, "理由": "x"}',
        SARCASM,
        [],
    ),
    Case(
        "english_key_synonyms",
        '{"sentiment": "ironic", "purpose": "complain", "is_sarcastic": "yes", '
        '"toxicity": 1, "certainty": 0.8, "reason": "x"}',
        SARCASM,
        [],
    ),
    Case(
        "capitalised_and_hyphenated_keys",
        '{"Emotion": "Sarcastic", "Intent": "Complaint", "Is-Sarcastic": "Yes", '
        '"Offensiveness": "1", "Confidence": "0.8", "Explanation": "x"}',
        SARCASM,
        [],
    ),
    Case(
        "labels_in_lists",
        '{"emotion": ["joy", "anger"], "intent": ["fun"], "sarcastic": [false], '
        '"offensiveness": [0], "confidence": [0.9], "explanation": ["好笑", "玩梗"]}',
        ("happiness", "entertaining", False, 0, 0.9),
        [],
    ),
    Case(
        "labels_in_dicts",
        '{"emotion": {"label": "angry", "score": 0.9}, "intent": {"value": "辱骂"}, '
        '"sarcastic": {"name": "否"}, "offensiveness": {"label": "高"}, '
        '"confidence": {"value": 0.9}, "explanation": "x"}',
        ("anger", "offensive", False, 3, 0.9),
        [],
    ),
    Case(
        "label_with_annotation",
        '{"emotion": "sarcasm (讽刺)", "intent": "吐槽/抱怨", '
        '"sarcastic": true, "offensiveness": 1, "confidence": 0.8, "explanation": "x"}',
        SARCASM,
        [],
    ),
    Case("wrapper_analysis", '{"analysis": ' + BODY + "}", SARCASM, []),
    Case("wrapper_result", '{"result": ' + BODY + "}", SARCASM, []),
    Case("wrapper_chinese", '{"结果": ' + BODY + "}", SARCASM, []),
    Case("wrapper_three_deep", '{"data": {"result": {"analysis": ' + BODY + "}}}", SARCASM, []),
    Case(
        "analysis_as_explanation_text",
        '{"emotion": "sarcasm", "intent": "complaint", "sarcastic": true, '
        '"offensiveness": 1, "confidence": 0.8, "analysis": "这是分析文字"}',
        SARCASM,
        [],
    ),
    Case(
        "extra_unknown_fields_ignored",
        BODY[:-1] + ', "foo": 1, "bar": [1, 2, {"baz": null}], "模型": "glm"}',
        SARCASM,
        [],
    ),
    Case(
        "deeply_nested_extra_value",
        BODY[:-1] + ', "debug": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
        SARCASM,
        [],
    ),
    Case(
        "deep_non_wrapper_nesting",
        '{"a": {"b": {"c": ' + BODY + "}}}",
        FALLBACK,
        ["no_known_fields", "unparseable_model_output"],
    ),
]


@pytest.mark.parametrize("case", KEY_CASES, ids=[c.id for c in KEY_CASES])
def test_keys_and_label_shapes(case: Case) -> None:
    """Chinese/English key names, lists, ``{"label": …}`` dicts and wrapper objects."""
    _check(case)


def test_wrapper_analysis_keeps_the_explanation() -> None:
    """``{"analysis": {...}}`` is a wrapper, not the explanation (regression)."""
    fields, _ = parse_model_text('{"analysis": ' + BODY + "}")
    assert fields.explanation == "阴阳怪气地吐槽加班"


def test_explanation_list_is_joined() -> None:
    """A list explanation becomes one string joined with "；"."""
    fields, _ = parse_model_text(KEY_CASES[4].text)
    assert fields.explanation == "好笑；玩梗"


def _labelled(emotion: str, intent: str = "other") -> str:
    return json.dumps(
        {
            "emotion": emotion,
            "intent": intent,
            "sarcastic": False,
            "offensiveness": 0,
            "confidence": 0.9,
            "explanation": "x",
        },
        ensure_ascii=False,
    )


@pytest.mark.parametrize(
    ("word", "emotion"),
    [
        ("讽刺", "sarcasm"),
        ("阴阳怪气", "sarcasm"),
        ("嘲讽", "sarcasm"),
        ("sarcastic", "sarcasm"),
        ("Irony", "sarcasm"),
        ("开心", "happiness"),
        ("joy", "happiness"),
        ("高兴", "happiness"),
        ("愤怒", "anger"),
        ("生气", "anger"),
        ("angry", "anger"),
        ("MAD", "anger"),
        ("难过", "sorrow"),
        ("害怕", "fear"),
        ("恶心", "disgust"),
        ("震惊", "surprise"),
        ("兴奋", "excitement"),
        ("可爱", "love"),
        ("平静", "neutral"),
        ("ｊｏｙ", "happiness"),
        ("  sarcasm  ", "sarcasm"),
    ],
)
def test_emotion_synonyms(word: str, emotion: str) -> None:
    """Chinese, English, upper-case and full-width spellings map to the closed set."""
    fields, warnings = parse_model_text(_labelled(word))
    assert fields.emotion == emotion
    assert fields.confidence == pytest.approx(0.9)
    assert warnings == []


@pytest.mark.parametrize(
    ("word", "intent"),
    [
        ("吐槽", "complaint"),
        ("抱怨", "complaint"),
        ("complain", "complaint"),
        ("攻击", "offensive"),
        ("辱骂", "offensive"),
        ("insult", "offensive"),
        ("玩梗", "entertaining"),
        ("humor", "entertaining"),
        ("互动", "interactive"),
        ("表达", "expressive"),
        ("其他", "other"),
        ("Complaint", "complaint"),
    ],
)
def test_intent_synonyms(word: str, intent: str) -> None:
    """Intent spellings map to the closed set."""
    fields, warnings = parse_model_text(_labelled("neutral", word))
    assert fields.intent == intent
    assert warnings == []


# --------------------------------------------------------------------------------------
# Missing fields and unknown labels
# --------------------------------------------------------------------------------------


def _without(key: str) -> str:
    data = json.loads(BODY)
    del data[key]
    return json.dumps(data, ensure_ascii=False)


MISSING_CASES = [
    Case(
        "emotion_missing",
        _without("emotion"),
        ("neutral", "complaint", True, 1, 0.0),
        ["emotion_missing"],
    ),
    Case(
        "intent_missing", _without("intent"), ("sarcasm", "other", True, 1, 0.0), ["intent_missing"]
    ),
    Case("sarcastic_missing_inferred_true", _without("sarcastic"), SARCASM, ["sarcastic_inferred"]),
    Case(
        "offensiveness_missing",
        _without("offensiveness"),
        ("sarcasm", "complaint", True, 0, 0.8),
        ["offensiveness_missing"],
    ),
    Case(
        "confidence_missing",
        _without("confidence"),
        ("sarcasm", "complaint", True, 1, 0.5),
        ["confidence_missing"],
    ),
    Case("explanation_missing", _without("explanation"), SARCASM, ["explanation_missing"]),
    Case(
        "explanation_blank",
        BODY.replace('"阴阳怪气地吐槽加班"', '"   "'),
        SARCASM,
        ["explanation_missing"],
    ),
    Case(
        "only_emotion",
        '{"emotion": "anger"}',
        ("anger", "other", False, 0, 0.0),
        ["intent_missing", *ONLY_LABELS],
    ),
    Case(
        "unknown_emotion",
        BODY.replace('"sarcasm"', '"confused"'),
        ("neutral", "complaint", True, 1, 0.0),
        ["emotion_unknown"],
    ),
    Case(
        "unknown_intent",
        BODY.replace('"complaint"', '"world domination"'),
        ("sarcasm", "other", True, 1, 0.0),
        ["intent_unknown"],
    ),
    Case(
        "null_emotion",
        BODY.replace('"sarcasm"', "null"),
        ("neutral", "complaint", True, 1, 0.0),
        ["emotion_unknown"],
    ),
    Case(
        "numeric_emotion",
        BODY.replace('"sarcasm"', "7"),
        ("neutral", "complaint", True, 1, 0.0),
        ["emotion_unknown"],
    ),
    Case(
        "no_known_fields",
        '{"foo": 1, "bar": "baz"}',
        FALLBACK,
        ["no_known_fields", "unparseable_model_output"],
    ),
    Case("empty_object", "{}", FALLBACK, ["no_json_object", "unparseable_model_output"]),
]


@pytest.mark.parametrize("case", MISSING_CASES, ids=[c.id for c in MISSING_CASES])
def test_missing_and_unknown_fields(case: Case) -> None:
    """Each missing field has its warning; an unknown label forces confidence 0."""
    fields = _check(case)
    if "explanation_missing" in case.warnings:
        assert fields.explanation == MISSING_EXPLANATION


# --------------------------------------------------------------------------------------
# Numbers and booleans in odd shapes
# --------------------------------------------------------------------------------------


def _with(**values: Any) -> str:
    data = json.loads(BODY)
    data.update(values)
    return json.dumps(data, ensure_ascii=False)


@pytest.mark.parametrize(
    ("value", "expected", "warnings"),
    [
        (0, 0, []),
        (3, 3, []),
        (2.0, 2, []),
        (2.6, 3, []),
        (7, 3, ["offensiveness_clamped"]),
        (-1, 0, ["offensiveness_clamped"]),
        (0.4, 1, ["offensiveness_rescaled"]),  # 0.4 * 3 = 1.2
        (0.9, 3, ["offensiveness_rescaled"]),  # 0.9 * 3 = 2.7
        ("2", 2, []),
        ("2/3", 2, []),
        ("高", 3, []),
        ("中等", 2, []),
        ("low", 1, []),
        ("none", 0, []),
        ("严重", 3, []),
        (True, 1, []),
        ("unknown", 0, ["offensiveness_missing"]),
    ],
)
def test_offensiveness_values(value: object, expected: int, warnings: list[str]) -> None:
    """Offensiveness from numbers, strings and words, rescaled and clamped onto 0..3."""
    fields, found = parse_model_text(_with(offensiveness=value))
    assert fields.offensiveness == expected
    assert found == warnings


@pytest.mark.parametrize(
    ("value", "expected", "warnings"),
    [
        (0.8, 0.8, []),
        (1, 1.0, []),
        (0, 0.0, []),
        (87, 0.87, ["confidence_rescaled"]),  # 1 < v <= 100 is a percentage
        ("87%", 0.87, []),
        ("87 %", 0.87, []),
        (100, 1.0, ["confidence_rescaled"]),
        (1.7, 0.017, ["confidence_rescaled"]),  # documented: read as 1.7 %
        (150, 1.0, ["confidence_clamped"]),
        (-0.2, 0.0, ["confidence_clamped"]),
        ("0.65", 0.65, []),
        ("high", 0.85, []),
        ("高", 0.85, []),
        ("very high", 0.95, []),
        ("low", 0.3, []),
        ("中等", 0.6, []),
        ("sure", 0.5, ["confidence_missing"]),
        (None, 0.5, ["confidence_missing"]),
    ],
)
def test_confidence_values(value: object, expected: float, warnings: list[str]) -> None:
    """Confidence from numbers, percentages and words, clamped onto 0..1."""
    fields, found = parse_model_text(_with(confidence=value))
    assert fields.confidence == pytest.approx(expected)
    assert found == warnings


@pytest.mark.parametrize(
    ("value", "expected", "inferred"),
    [
        (True, True, False),
        (False, False, False),
        ("是", True, False),
        ("否", False, False),
        ("yes", True, False),
        ("Yes.", True, False),
        ("false", False, False),
        ("不是", False, False),
        ("是的。", True, False),
        (1, True, False),
        (0, False, False),
        ("讽刺", True, False),
        ("maybe", True, True),
        (None, True, True),
    ],
)
def test_sarcastic_values(value: object, expected: bool, inferred: bool) -> None:
    """Booleans as strings; an unreadable value is inferred from emotion == sarcasm."""
    fields, warnings = parse_model_text(_with(sarcastic=value))
    assert fields.sarcastic is expected
    assert ("sarcastic_inferred" in warnings) is inferred


def test_sarcastic_inferred_false_for_other_emotions() -> None:
    """Without a sarcastic field a non-sarcasm emotion means not sarcastic."""
    data = json.loads(_without("sarcastic"))
    data["emotion"] = "anger"
    fields, warnings = parse_model_text(json.dumps(data))
    assert fields.sarcastic is False
    assert warnings == ["sarcastic_inferred"]


# --------------------------------------------------------------------------------------
# Not JSON at all
# --------------------------------------------------------------------------------------

FALLBACK_CASES = [
    Case("empty_string", "", FALLBACK, ["empty_model_output", "unparseable_model_output"]),
    Case(
        "whitespace_only",
        " \n\t  \r\n",
        FALLBACK,
        ["empty_model_output", "unparseable_model_output"],
    ),
    Case(
        "only_special_tokens",
        "<|assistant|><|endoftext|>",
        FALLBACK,
        ["empty_model_output", "unparseable_model_output"],
    ),
    Case("none", None, FALLBACK, ["model_output_not_text", "unparseable_model_output"]),
    Case("int", 42, FALLBACK, ["model_output_not_text", "unparseable_model_output"]),
    Case("bytes", BODY.encode(), FALLBACK, ["model_output_not_text", "unparseable_model_output"]),
    Case(
        "dict_not_text",
        json.loads(BODY),
        FALLBACK,
        ["model_output_not_text", "unparseable_model_output"],
    ),
    Case(
        "garbage",
        "asdkjh qwe 12312 !!! ???",
        FALLBACK,
        ["no_json_object", "unparseable_model_output"],
    ),
    Case(
        "binary_ish",
        "\x00\x01\x02\xff\xfe\ufffd\ufffd}{\x7f\x1b[31m",
        FALLBACK,
        ["no_json_object", "unparseable_model_output"],
    ),
    Case("unbalanced_closers", "}}}]]]", FALLBACK, ["no_json_object", "unparseable_model_output"]),
    Case("json_scalar", "0.95", FALLBACK, ["no_json_object", "unparseable_model_output"]),
    Case(
        "json_array_of_scalars",
        '["sarcasm", "complaint"]',
        FALLBACK,
        ["no_json_object", "unparseable_model_output"],
    ),
    Case(
        "refusal",
        "抱歉，我无法分析这张图片。",
        FALLBACK,
        ["no_json_object", "unparseable_model_output"],
    ),
    Case(
        "prose_zh_lines",
        "情绪：讽刺\n意图：吐槽\n是否讽刺：是\n冒犯程度：1\n置信度：0.8\n解释：阴阳怪气",
        SARCASM,
        ["parsed_from_prose"],
    ),
    Case(
        "prose_en_commas",
        "emotion: sarcasm, intent: complaint, sarcastic: yes, offensiveness: 1, "
        "confidence: 0.8, explanation: mocking overtime",
        SARCASM,
        ["parsed_from_prose"],
    ),
    Case(
        "prose_mixed_separators",
        "The meme's emotion = sarcastic; intent = 抱怨\nconfidence = 80%",
        ("sarcasm", "complaint", True, 0, 0.8),
        ["parsed_from_prose", "sarcastic_inferred", "offensiveness_missing", "explanation_missing"],
    ),
]


@pytest.mark.parametrize("case", FALLBACK_CASES, ids=[c.id for c in FALLBACK_CASES])
def test_not_json(case: Case) -> None:
    """Non-text, empty and garbage give the zero-confidence fallback; prose is read."""
    fields = _check(case)
    if "unparseable_model_output" in case.warnings:
        assert fields.explanation == FALLBACK_EXPLANATION
        assert fields.ocr_text == [] and fields.slang == []


def test_prose_explanation_value() -> None:
    """A prose "解释：" line becomes the explanation."""
    fields, _ = parse_model_text(FALLBACK_CASES[13].text)
    assert fields.explanation == "阴阳怪气"


# --------------------------------------------------------------------------------------
# Size and robustness
# --------------------------------------------------------------------------------------


def test_very_long_output_answer_first() -> None:
    """Over 200k characters: the scan is cut, an answer at the start still parses."""
    fields, warnings = parse_model_text(BODY + "哈" * 250_000)
    assert (fields.emotion, fields.intent, fields.confidence) == ("sarcasm", "complaint", 0.8)
    assert warnings == ["model_output_truncated_for_parsing"]


def test_very_long_output_answer_beyond_limit() -> None:
    """An answer past the scan limit is not found; the fallback is returned."""
    fields, warnings = parse_model_text("a" * 250_000 + BODY)
    assert fields.confidence == 0.0
    assert warnings == [
        "model_output_truncated_for_parsing",
        "no_json_object",
        "unparseable_model_output",
    ]


def test_very_long_explanation_is_cut_and_closed() -> None:
    """A huge explanation string cut by the scan limit is closed and kept."""
    text = BODY.replace("阴阳怪气地吐槽加班", "很" * 300_000)
    fields, warnings = parse_model_text(text)
    assert fields.emotion == "sarcasm" and fields.offensiveness == 1
    assert set(fields.explanation) == {"很"}
    assert warnings == ["model_output_truncated_for_parsing", "closed_truncated_json"]


@pytest.mark.parametrize(
    "text",
    [
        "{" * 250_000,
        '{"a":' * 60_000,
        '{"a":' + "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '"' * 250_000,
        "'" * 250_000,
        '{"a":1}' * 40_000,
        "情绪：讽刺\n" * 30_000,
        "<think>" * 2_000,  # the think-block regex is quadratic in unclosed tags
        "```" * 60_000,
    ],
    ids=[
        "open_braces",
        "nested_keys",
        "nested_lists",
        "balanced_lists",
        "double_quotes",
        "single_quotes",
        "many_small_objects",
        "repeated_prose",
        "think_tags",
        "fences",
    ],
)
def test_pathological_inputs_do_not_crash(text: str) -> None:
    """Deep nesting and repetition are handled without raising."""
    fields, warnings = parse_model_text(text)
    assert fields.emotion in EMOTIONS and 0.0 <= fields.confidence <= 1.0
    assert warnings


def test_random_text_never_raises() -> None:
    """Random mixtures of JSON punctuation, CJK and tokens never raise."""
    alphabet = [
        *"{}[]\":,'“”：，｛｝ \n\\<>|/ttrue情绪讽刺emotion0.8-",
        "<think>",
        "</think>",
        "<|begin_of_box|>",
        "```json",
        "NaN",
        "None",
    ]
    rng = random.Random(1234)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        fields, warnings = parse_model_text(text)
        assert fields.emotion in EMOTIONS and fields.intent in INTENTS
        assert 0 <= fields.offensiveness <= 3 and 0.0 <= fields.confidence <= 1.0
        assert isinstance(warnings, list)


# --------------------------------------------------------------------------------------
# extract_object directly
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "warnings"),
    [
        ('{"a": 1}', {"a": 1}, []),
        ("prefix {'a': True} suffix", {"a": True}, ["repaired_json"]),
        ("{a: yes, b: no, c: none}", {"a": True, "b": False, "c": None}, ["repaired_json"]),
        ('{"a": [1, 2,], }', {"a": [1, 2]}, ["repaired_json"]),
        ('{"a": "b', {"a": "b"}, ["closed_truncated_json"]),
        ('{"a": {"b": [1, {"c": "d', {"a": {"b": [1, {"c": "d"}]}}, ["closed_truncated_json"]),
        ('{"a": 1, "b"', {"a": 1}, ["closed_truncated_json"]),
        ('{"s": "x"} {"a": 1, "b": 2}', {"a": 1, "b": 2}, []),
        ('<think>{"x": 1}</think>{"y": 2}', {"y": 2}, ["removed_think_block"]),
        ('<|begin_of_box|>{"y": 2}<|end_of_box|>', {"y": 2}, []),
        ('```\n{"y": 2}\n```', {"y": 2}, []),
        ("｛“键”：“值”｝", {"键": "值"}, ["repaired_json"]),
        ('[1, 2, {"k": [3]}]', {"k": [3]}, []),
        ("情绪：讽刺。\n置信度：0.9", {"情绪": "讽刺", "置信度": "0.9"}, ["parsed_from_prose"]),
        ("**emotion**: `sarcasm`", None, ["no_json_object"]),
        ("emotion: **sarcasm**", {"emotion": "sarcasm"}, ["parsed_from_prose"]),
        ("no object here", None, ["no_json_object"]),
        ("{}", None, ["no_json_object"]),
        ("", None, ["empty_model_output"]),
        ("<think>only</think>", None, ["removed_think_block", "empty_model_output"]),
        (None, None, ["model_output_not_text"]),
        (['{"a": 1}'], None, ["model_output_not_text"]),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, str) else None,
)
def test_extract_object(text: object, value: dict[str, Any] | None, warnings: list[str]) -> None:
    """The raw object found and the repairs reported."""
    result = extract_object(text)
    assert result.value == value
    assert result.warnings == warnings


def test_normalise_fields_none_and_empty() -> None:
    """No object means no fields and no warnings of its own."""
    assert normalise_fields(None) == (None, [])
    assert normalise_fields({}) == (None, [])
    assert normalise_fields({"unrelated": 1}) == (None, ["no_known_fields"])


def test_evidence_lists_are_cleaned() -> None:
    """ocr_text/slang accept strings or lists; blanks and nulls are dropped, items capped."""
    fields, _ = parse_model_text(
        _with(ocr_text="第一行\n\n第二行 ", slang=["yyds", None, 3, " ", "x" * 500])
    )
    assert fields.ocr_text == ["第一行", "第二行"]
    assert fields.slang == ["yyds", "3", "x" * 200]
    fields, _ = parse_model_text(_with(ocr_text=[str(i) for i in range(80)]))
    assert len(fields.ocr_text) == 50
