"""Model text → a guaranteed-valid :class:`~serve_app.understanding.analysis.Analysis`.

:func:`normalise_fields` maps the keys and values a model may write (English or
Chinese names, synonyms, strings for numbers, percentages, out-of-range values) onto
the schema, recording each repair. :func:`build_analysis` adds risk, the filtered
explanation and the meta block. Malformed output never becomes a client error: it
becomes a valid analysis with confidence 0 and a warning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from serve_app.config.models import StructurerUserConfig
from serve_app.engines.base import EngineOutput
from serve_app.media.imaging import visual_tokens
from serve_app.understanding.analysis import (
    Analysis,
    CacheInfo,
    Evidence,
    ImageInfo,
    Meta,
    Timings,
    Usage,
)
from serve_app.understanding.labels import EMOTION_ZH, normalise_emotion, normalise_intent
from serve_app.understanding.parsing import extract_object
from serve_app.understanding.risk import assess_risk
from serve_app.understanding.safety import clean_explanation

FALLBACK_EXPLANATION = "模型输出无法解析，返回默认的低置信度结果。"
MISSING_EXPLANATION = "模型未给出解释。"
_MAX_EVIDENCE_ITEMS = 50
_MAX_EVIDENCE_CHARS = 200

_KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "emotion": (
        "emotion",
        "emotions",
        "emotion_label",
        "sentiment",
        "mood",
        "feeling",
        "情绪",
        "情感",
        "情绪标签",
    ),
    "intent": ("intent", "intention", "intent_label", "purpose", "意图", "目的", "意图标签"),
    "sarcastic": (
        "sarcastic",
        "sarcasm",
        "is_sarcastic",
        "is_sarcasm",
        "irony",
        "ironic",
        "是否讽刺",
        "讽刺",
        "反讽",
    ),
    "offensiveness": (
        "offensiveness",
        "offensive_level",
        "offensiveness_level",
        "offense",
        "offence",
        "offensive",
        "toxicity",
        "冒犯程度",
        "冒犯性",
        "攻击性",
        "冒犯",
    ),
    "confidence": (
        "confidence",
        "confidence_score",
        "certainty",
        "probability",
        "score",
        "置信度",
        "可信度",
        "把握",
    ),
    "explanation": (
        "explanation",
        "reason",
        "reasoning",
        "rationale",
        "analysis",
        "summary",
        "解释",
        "理由",
        "说明",
        "分析",
        "原因",
    ),
    "ocr_text": (
        "ocr_text",
        "ocr",
        "text_in_image",
        "image_text",
        "caption",
        "图中文字",
        "文字",
        "识别文字",
    ),
    "slang": ("slang", "slang_terms", "memes", "梗", "网络用语", "流行语"),
}
_ALIAS_TO_FIELD = {alias: name for name, aliases in _KEY_ALIASES.items() for alias in aliases}
_WRAPPER_KEYS = ("analysis", "result", "output", "answer", "data", "response", "结果", "分析结果")

_TRUE = {"true", "yes", "y", "1", "是", "有", "对", "真", "sarcastic", "讽刺", "是的"}
_FALSE = {"false", "no", "n", "0", "否", "无", "没有", "不是", "假", "none", "null", "不"}
_LEVEL_WORDS = {
    "none": 0,
    "无": 0,
    "没有": 0,
    "不冒犯": 0,
    "no": 0,
    "low": 1,
    "mild": 1,
    "slight": 1,
    "低": 1,
    "轻微": 1,
    "较低": 1,
    "medium": 2,
    "moderate": 2,
    "中": 2,
    "中等": 2,
    "一般": 2,
    "high": 3,
    "severe": 3,
    "高": 3,
    "严重": 3,
    "很高": 3,
    "极高": 3,
}
_CONFIDENCE_WORDS = {
    "low": 0.3,
    "低": 0.3,
    "medium": 0.6,
    "中": 0.6,
    "中等": 0.6,
    "high": 0.85,
    "高": 0.85,
    "very high": 0.95,
    "很高": 0.95,
}


@dataclass(frozen=True)
class Fields:
    """The schema's judgement fields after normalisation."""

    emotion: str
    intent: str
    sarcastic: bool
    offensiveness: int
    confidence: float
    explanation: str
    ocr_text: list[str]
    slang: list[str]


@dataclass(frozen=True)
class StructureContext:
    """What the Structurer needs besides the model text."""

    request_id: str
    degradation_level: int
    image: ImageInfo
    preprocess_ms: float
    explanation_max_chars: int


@dataclass(frozen=True)
class StructuredAnswer:
    """What the Structurer deployment answers: the analysis (policy-free, as the library
    keeps it) and whether the library kept it (then the Ingress may answer resent bytes
    with it, see :mod:`serve_app.library.hot`)."""

    analysis: dict[str, Any]
    stored: bool = False


def _canonical_key(key: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _unwrap(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"analysis": {...}}`` and similar single wrappers are opened."""
    for _ in range(3):
        wrappers = [
            k for k in raw if _canonical_key(k) in _WRAPPER_KEYS and isinstance(raw[k], dict)
        ]
        inner = [raw[k] for k in wrappers]
        # "analysis" is both a wrapper and an explanation alias: a dict under it is a wrapper.
        known = any(_canonical_key(k) in _ALIAS_TO_FIELD for k in raw if k not in wrappers)
        if inner and not known:
            raw = inner[0]
        else:
            break
    return raw


def _pick(raw: dict[str, Any]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIAS_TO_FIELD.get(_canonical_key(key))
        if name is not None and name not in picked:
            picked[name] = value
    return picked


def _first(value: Any) -> Any:
    if isinstance(value, list | tuple) and value:
        return value[0]
    if isinstance(value, dict):
        for key in ("label", "value", "name", "type"):
            if key in value:
                return value[key]
    return value


def _as_bool(value: Any) -> bool | None:
    value = _first(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return bool(value) if math.isfinite(value) else None
    if isinstance(value, str):
        word = value.strip().lower().rstrip("。.!")
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _as_number(value: Any, words: dict[str, float] | dict[str, int]) -> float | None:
    value = _first(value)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in words:
            return float(words[text])
        match = re.search(r"-?\d+(?:\.\d+)?", text)
        if match:
            number = float(match.group())
            if text.endswith("%") or "%" in text[match.end() : match.end() + 2]:
                number /= 100.0
            return number
    return None


def _as_text_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items = [line for line in re.split(r"[\n\r]+", value)]
    elif isinstance(value, list | tuple):
        items = [item if isinstance(item, str) else str(item) for item in value if item is not None]
    else:
        items = [str(value)]
    cleaned = [item.strip()[:_MAX_EVIDENCE_CHARS] for item in items if item and item.strip()]
    return cleaned[:_MAX_EVIDENCE_ITEMS]


def normalise_fields(raw: dict[str, Any] | None) -> tuple[Fields | None, list[str]]:
    """Map a parsed object onto the schema fields; ``None`` when nothing usable is there."""
    if not raw:
        return None, []
    warnings: list[str] = []
    fields = _pick(_unwrap(raw))
    if not fields:
        return None, ["no_known_fields"]

    emotion = normalise_emotion(_first(fields.get("emotion")))
    if emotion is None:
        warnings.append("emotion_missing" if "emotion" not in fields else "emotion_unknown")
    intent = normalise_intent(_first(fields.get("intent")))
    if intent is None:
        warnings.append("intent_missing" if "intent" not in fields else "intent_unknown")

    sarcastic = _as_bool(fields.get("sarcastic"))
    if sarcastic is None:
        sarcastic = emotion == "sarcasm"
        warnings.append("sarcastic_inferred")

    offensiveness_raw = _as_number(fields.get("offensiveness"), _LEVEL_WORDS)
    if offensiveness_raw is None:
        offensiveness = 0
        warnings.append("offensiveness_missing")
    else:
        if 0 < offensiveness_raw < 1 and offensiveness_raw != round(offensiveness_raw):
            offensiveness_raw *= 3  # a 0..1 probability, rescaled to the 0..3 scale
            warnings.append("offensiveness_rescaled")
        offensiveness = round(offensiveness_raw)
        if not 0 <= offensiveness <= 3:
            warnings.append("offensiveness_clamped")
            offensiveness = max(0, min(3, offensiveness))

    confidence_raw = _as_number(fields.get("confidence"), _CONFIDENCE_WORDS)
    if confidence_raw is None:
        confidence = 0.5
        warnings.append("confidence_missing")
    else:
        if 1.0 < confidence_raw <= 100.0:
            confidence_raw /= 100.0
            warnings.append("confidence_rescaled")
        confidence = confidence_raw
        if not 0.0 <= confidence <= 1.0:
            warnings.append("confidence_clamped")
            confidence = max(0.0, min(1.0, confidence))

    explanation_value = fields.get("explanation")
    if isinstance(explanation_value, list | tuple):
        explanation = "；".join(str(item) for item in explanation_value if item)
    elif explanation_value is None:
        explanation = ""
    else:
        explanation = str(explanation_value)
    if not explanation.strip():
        warnings.append("explanation_missing")
        explanation = MISSING_EXPLANATION

    if emotion is None or intent is None:
        # A guessed label is not a judgement: say so with zero confidence.
        confidence = 0.0
    return (
        Fields(
            emotion=emotion or "neutral",
            intent=intent or "other",
            sarcastic=sarcastic,
            offensiveness=offensiveness,
            confidence=round(confidence, 4),
            explanation=explanation,
            ocr_text=_as_text_list(fields.get("ocr_text")),
            slang=_as_text_list(fields.get("slang")),
        ),
        warnings,
    )


UNPARSEABLE = "unparseable_model_output"
"""The warning on an analysis that is the fallback, not anything the model said."""


def parse_model_text(text: object) -> tuple[Fields, list[str]]:
    """Model text → fields, always; unusable text gives the zero-confidence fallback."""
    parsed = extract_object(text)
    fields, warnings = normalise_fields(parsed.value)
    warnings = [*parsed.warnings, *warnings]
    if fields is None:
        warnings.append(UNPARSEABLE)
        fields = Fields(
            emotion="neutral",
            intent="other",
            sarcastic=False,
            offensiveness=0,
            confidence=0.0,
            explanation=FALLBACK_EXPLANATION,
            ocr_text=[],
            slang=[],
        )
    return fields, warnings


def _analysed(image: ImageInfo, size: tuple[int, int] | None) -> ImageInfo:
    """The image facts with the size the engine was really given (a level may shrink it)."""
    if size is None or size == (image.analysed_width, image.analysed_height):
        return image
    width, height = size
    return image.model_copy(
        update={
            "analysed_width": width,
            "analysed_height": height,
            "visual_tokens": visual_tokens(width, height),
        }
    )


@dataclass(frozen=True)
class Structured:
    """An analysis and whether it says what the model said (else it is the fallback)."""

    analysis: Analysis
    from_model: bool
    """False when the model's text could not be read: such an answer is not worth storing."""


def build_analysis(
    output: EngineOutput,
    context: StructureContext,
    config: StructurerUserConfig,
    structure_ms: float = 0.0,
) -> Analysis:
    """The complete, validated analysis for one engine output."""
    return structure(output, context, config, structure_ms).analysis


def structure(
    output: EngineOutput,
    context: StructureContext,
    config: StructurerUserConfig,
    structure_ms: float = 0.0,
) -> Structured:
    """:func:`build_analysis`, telling a reading of the model's text from the fallback."""
    fields, warnings = parse_model_text(output.text)
    from_model = UNPARSEABLE not in warnings
    cap = min(config.explanation_max_chars, context.explanation_max_chars)
    if output.explanation_max_chars is not None:
        cap = min(cap, output.explanation_max_chars)
    explanation, fired = clean_explanation(fields.explanation, cap)
    warnings.extend(f"explanation_filtered:{name}" for name in fired)
    if not explanation:
        explanation = MISSING_EXPLANATION[:cap] if cap else ""
    analysis = Analysis(
        request_id=context.request_id,
        emotion=fields.emotion,
        emotion_zh=EMOTION_ZH[fields.emotion],
        intent=fields.intent,
        sarcastic=fields.sarcastic,
        offensiveness=fields.offensiveness,
        confidence=fields.confidence,
        explanation=explanation,
        risk=assess_risk(fields.offensiveness, fields.confidence, config.risk),
        evidence=Evidence(ocr_text=fields.ocr_text, slang=fields.slang),
        meta=Meta(
            engine=output.engine,
            model=output.model,
            cache=CacheInfo(hit=False),
            degradation_level=(context.degradation_level if output.level is None else output.level),
            image=_analysed(context.image, output.analysed_size),
            timings_ms=Timings(
                preprocess=round(context.preprocess_ms, 2),
                engine=round(output.elapsed_ms, 2),
                structure=round(structure_ms, 2),
            ),
            warnings=warnings,
            usage=_usage(output),
        ),
    )
    return Structured(analysis=analysis, from_model=from_model)


def _usage(output: EngineOutput) -> Usage | None:
    if output.prompt_tokens is None and output.output_tokens is None:
        return None
    return Usage(prompt_tokens=output.prompt_tokens, output_tokens=output.output_tokens)
