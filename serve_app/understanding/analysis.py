"""The analysis contract (DESIGN.md §3): what every answer of the service holds.

These pydantic models are the single source of the response schema: the Structurer
builds an :class:`Analysis` so every answer is validated, and the HTTP layer declares
it as ``response_model`` (:mod:`serve_app.http.wire`) so the OpenAPI document matches.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.understanding.labels import Emotion, Intent, RiskAction, RiskLevel


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Risk(_Model):
    level: RiskLevel = Field(description="none / low / medium / high.")
    action: RiskAction = Field(description="pass / throttle / tag / block.")


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
