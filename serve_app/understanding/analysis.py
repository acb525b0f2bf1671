"""The analysis contract (DESIGN.md §3): what every answer of the service holds.

These pydantic models are the single source of the response schema: the Structurer
builds an :class:`Analysis` so every answer is validated, and the HTTP layer declares
it as ``response_model`` (:mod:`serve_app.http.wire`) so the OpenAPI document matches.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.understanding.labels import Emotion, Intent, RiskLevel

DecidedBy = Literal["model_thresholds", "policy_rule", "term_list", "image_list", "review"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reason(_Model):
    """One rule that took part in the decision, and where it matched."""

    kind: DecidedBy = Field(description="Which kind of rule.")
    detail: str = Field(description="The rule in words.")
    list: str | None = Field(None, description="term_list / image_list: the list's name.")
    action: str | None = Field(None, description="The action this reason asks for.")
    term: str | None = Field(None, description="term_list: the listed term.")
    where: Literal["ocr", "context"] | None = Field(
        None, description="term_list: found in the OCR text or the request's context."
    )
    entry_id: str | None = Field(None, description="image_list: the list entry.")
    match: Literal["exact", "near"] | None = Field(
        None, description="image_list / review: how the image matched."
    )
    distance: int | None = Field(None, description="image_list / review: fingerprint distance.")
    reviewer: str | None = Field(None, description="review: who reviewed the image.")
    review_id: str | None = Field(None, description="review: the review in the audit.")
    rule: str | None = Field(None, description="policy_rule: the rule's name.")


class Risk(_Model):
    level: RiskLevel = Field(description="none / low / medium / high.")
    action: str = Field(
        description="The policy's action: pass / throttle / tag / block under `default`; "
        "each policy names its own vocabulary."
    )
    policy: str = Field("default", description="The scene policy that decided.")
    tags: list[str] = Field(default_factory=list, description="Tags the policy's rules added.")
    decided_by: DecidedBy = Field(
        "model_thresholds", description="Which kind of rule decided the action."
    )
    reasons: list[Reason] = Field(
        default_factory=list, description="Every rule that took part, the deciding one first."
    )


class Evidence(_Model):
    ocr_text: list[str] = Field(default_factory=list, description="Text read off the image.")
    slang: list[str] = Field(default_factory=list, description="Slang lexicon terms found.")


class CacheInfo(_Model):
    hit: bool = Field(description="Answered from the result store.")
    match: Literal["exact", "near"] | None = Field(None, description="Kind of match on a hit.")
    distance: int | None = Field(None, description="Fingerprint distance on a near hit.")


class ImageInfo(_Model):
    width: int = Field(description="Width of the uploaded image (after EXIF rotation).")
    height: int = Field(description="Height of the uploaded image (after EXIF rotation).")
    frames: int = Field(description="Frame count (1 for still images).")
    format: str | None = Field(None, description="Detected format, e.g. JPEG, PNG, GIF.")
    analysed_width: int | None = Field(None, description="Width sent to the engine.")
    analysed_height: int | None = Field(None, description="Height sent to the engine.")
    visual_tokens: int | None = Field(None, description="GLM visual tokens of the sent image.")


class Timings(_Model):
    preprocess: float = 0.0
    engine: float = 0.0
    structure: float = 0.0
    total: float = 0.0


class Usage(_Model):
    prompt_tokens: int | None = Field(
        None, ge=0, description="Prompt tokens the engine read (text and image)."
    )
    output_tokens: int | None = Field(None, ge=0, description="Tokens the engine generated.")


class Meta(_Model):
    engine: str = Field(description="Engine that produced the analysis.")
    model: str = Field(description="Model id and version.")
    cache: CacheInfo
    degradation_level: int = Field(ge=0, le=3)
    image: ImageInfo
    timings_ms: Timings
    warnings: list[str] = Field(
        default_factory=list, description="Repairs the Structurer had to make, if any."
    )
    usage: Usage | None = Field(
        None,
        description="Tokens this answer cost the model engine; null for a cache hit, "
        "the lite engine, a list or review decision, and streams.",
    )


class Analysis(_Model):
    """One meme's judgement; the Structurer guarantees every field."""

    request_id: str
    emotion: Emotion
    emotion_zh: str
    intent: Intent
    sarcastic: bool
    offensiveness: int = Field(ge=0, le=3, description="MET-Meme scale 0..3.")
    confidence: float = Field(ge=0.0, le=1.0)
    explanation: str
    risk: Risk
    evidence: Evidence
    meta: Meta
