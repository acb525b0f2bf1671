"""Strict configuration models: the application ``args`` and each deployment's ``user_config``.

Every model forbids unknown keys and describes every field, so a typo in a YAML
profile is an error that names the file and the field instead of a silently ignored
knob. :mod:`serve_app.config_check` loads whole Serve config files against these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.prompts import PROMPT_VERSION


class StrictModel(BaseModel):
    """Base for all config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OcrArgs(StrictModel):
    """OCR used by the lite engine (RapidOCR with the models its wheel ships)."""

    min_score: float = Field(
        0.6, ge=0.0, le=1.0, description="Drop OCR lines recognised with a lower confidence."
    )
    threads: int = Field(
        1, ge=1, le=64, description="onnxruntime intra-op threads per OCR call (per replica)."
    )
    max_side: int = Field(
        1600, ge=64, le=8192, description="Longest image side handed to OCR; larger is shrunk."
    )


class TransformersArgs(StrictModel):
    """The ``transformers`` engine: any Glm4v checkpoint directory, GPU or CPU."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="auto: bfloat16 on GPUs that support it, float16 on others (T4), "
        "float32 on CPU.",
    )
    max_batch_size: int = Field(
        4, ge=1, le=64, description="Requests generated together (Serve @serve.batch)."
    )
    batch_wait_timeout_s: float = Field(
        0.02, ge=0, le=5, description="How long a batch waits to fill before it runs."
    )


class VllmArgs(StrictModel):
    """The ``vllm`` engine (production, GPU)."""

    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed verbatim to vllm.AsyncEngineArgs (model, quantization, dtype, "
        "max_model_len, gpu_memory_utilization, max_num_seqs, limit_mm_per_prompt, "
        "enable_prefix_caching, mm_processor_kwargs …); a contract test builds "
        "AsyncEngineArgs from every shipped profile.",
    )
    structured_output: bool = Field(
        True, description="Constrain decoding to the analysis JSON schema."
    )


class EngineArgs(StrictModel):
    """Which engine each VLM pool replica runs, and the model behind it."""

    kind: Literal["lite", "transformers", "vllm"] = Field(
        "lite",
        description="lite = CPU, OCR + slang lexicon, no weights; transformers = any Glm4v "
        "checkpoint via Hugging Face transformers (GPU or CPU); vllm = production GPU engine.",
    )
    model_id: str = Field(
        "memeserve-lite",
        min_length=1,
        description="Model name reported in responses and /v1/status.",
    )
    model_version: str = Field(
        "lite-1",
        min_length=1,
        description="Model version; part of the cache key, so changing it invalidates results.",
    )
    model_path: Path | None = Field(
        None,
        description="Local checkpoint directory (GLM engines). Never fetched from a hub. "
        "A relative path is taken from the directory the application is started in.",
    )
    lexicon_path: Path | None = Field(
        None, description="Slang lexicon YAML; defaults to the one shipped in the package."
    )
    ocr: OcrArgs = Field(default_factory=OcrArgs, description="OCR settings (lite engine).")
    transformers: TransformersArgs = Field(
        default_factory=TransformersArgs, description="Settings of the transformers engine."
    )
    vllm: VllmArgs = Field(default_factory=VllmArgs, description="Settings of the vllm engine.")

    @property
    def model_name(self) -> str:
        """``model_id@model_version``: how responses name the model; part of the cache key."""
        return f"{self.model_id}@{self.model_version}"

    @field_validator("model_path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Replicas do not share the starting directory: pin the path where it was read.
        return None if value is None else value.expanduser().absolute()

    @model_validator(mode="after")
    def _model_location(self) -> EngineArgs:
        if self.kind == "transformers" and self.model_path is None:
            raise ValueError(
                "engine.kind 'transformers' needs engine.model_path (a local directory)"
            )
        if self.kind == "vllm" and not (self.model_path or self.vllm.engine_kwargs.get("model")):
            raise ValueError(
                "engine.kind 'vllm' needs engine.model_path or vllm.engine_kwargs.model"
            )
        return self


class LimitsArgs(StrictModel):
    """Input limits enforced before any expensive work."""

    max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest accepted upload in bytes (else 413)."
    )
    max_pixels: int = Field(
        40_000_000,
        ge=64 * 64,
        description="Largest width*height read from the header, checked before decoding (413).",
    )
    max_frames: int = Field(
        2000, ge=1, description="Animated images with more frames are refused (413)."
    )
    max_aspect_ratio: float = Field(
        200.0, ge=1.0, description="Longest/shortest side above this is refused (400)."
    )
    max_text_chars: int = Field(
        2000, ge=0, description="Longest accepted context text, in characters (else 422)."
    )
    sampled_frames: int = Field(
        4,
        ge=1,
        le=16,
        description="Frames sampled evenly from an animation and tiled into one image.",
    )
    max_batch_items: int = Field(
        16,
        ge=1,
        le=256,
        description="Most items in one POST /v1/memes/analyze/batch (else 422); the body "
        "limit of a batch is this many times the single-request limit.",
    )


class LevelArgs(StrictModel):
    """One row of the degradation table (DESIGN.md §2)."""

    level: int = Field(ge=0, le=3, description="0 normal, 1 degraded, 2 strained, 3 shed.")
    name: str = Field(description="Human-readable name shown in /v1/status.")
    max_visual_tokens: int = Field(
        ge=4, description="Image budget: (h/28)*(w/28) after GLM-geometry resize."
    )
    max_context_chars: int = Field(
        ge=0, description="Request context text is truncated to this many characters."
    )
    max_output_tokens: int = Field(ge=16, description="Output token cap for the engine.")
    explanation_max_chars: int = Field(
        ge=0, description="The explanation is cut to this many characters."
    )


def _default_levels() -> tuple[LevelArgs, ...]:
    return (
        LevelArgs(
            level=0,
            name="normal",
            max_visual_tokens=1024,
            max_context_chars=2000,
            max_output_tokens=512,
            explanation_max_chars=300,
        ),
        LevelArgs(
            level=1,
            name="degraded",
            max_visual_tokens=256,
            max_context_chars=500,
            max_output_tokens=256,
            explanation_max_chars=120,
        ),
        LevelArgs(
            level=2,
            name="strained",
            max_visual_tokens=64,
            max_context_chars=100,
            max_output_tokens=96,
            explanation_max_chars=40,
        ),
        LevelArgs(
            level=3,
            name="shed",
            max_visual_tokens=64,
            max_context_chars=100,
            max_output_tokens=96,
            explanation_max_chars=40,
        ),
    )


class CacheArgs(StrictModel):
    """Exact-repeat result cache (decoded-pixel hash + normalised context + model version)."""

    enabled: bool = Field(True, description="Answer exact repeats from the store.")
    max_entries: int = Field(100_000, ge=1, description="LRU bound on stored analyses.")
    ttl_s: float = Field(
        24 * 3600.0, gt=0, description="Seconds an analysis stays valid after it is stored."
    )


class AppArgs(StrictModel):
    """The ``args`` of ``serve_app.app:build_app`` in every Serve config."""

    engine: EngineArgs = Field(default_factory=EngineArgs, description="Model engine.")
    limits: LimitsArgs = Field(default_factory=LimitsArgs, description="Input limits.")
    cache: CacheArgs = Field(default_factory=CacheArgs, description="Result cache.")
    levels: tuple[LevelArgs, ...] = Field(
        default_factory=_default_levels,
        description="Degradation table, one row per level 0..3.",
    )
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        60.0, description="Deadline for one analysis end to end (else 504)."
    )
    prompt_version: str = Field(
        PROMPT_VERSION, min_length=1, description="Prompt version; part of the cache key."
    )

    @model_validator(mode="after")
    def _levels_complete(self) -> AppArgs:
        found = sorted(row.level for row in self.levels)
        if found != [0, 1, 2, 3]:
            raise ValueError(f"levels must have exactly one row for each of 0..3, got {found}")
        return self

    @property
    def max_visual_tokens(self) -> int:
        """The largest image budget of any level (engines size their image cap with it)."""
        return max(row.max_visual_tokens for row in self.levels)

    def level(self, number: int) -> LevelArgs:
        """The table row for degradation level ``number``."""
        return next(row for row in self.levels if row.level == number)


class RiskThresholds(StrictModel):
    """Risk tiers from ``offensiveness * confidence`` (0..3)."""

    throttle: float = Field(0.5, ge=0, le=3, description="score >= this: level low, throttle.")
    tag: float = Field(1.2, ge=0, le=3, description="score >= this: level medium, tag.")
    block: float = Field(2.0, ge=0, le=3, description="score >= this: level high, block.")

    @model_validator(mode="after")
    def _ordered(self) -> RiskThresholds:
        if not self.throttle <= self.tag <= self.block:
            raise ValueError("risk thresholds must satisfy throttle <= tag <= block")
        return self


class StructurerUserConfig(StrictModel):
    """``user_config`` of the Structurer deployment (live-reloadable)."""

    risk: RiskThresholds = Field(
        default_factory=RiskThresholds, description="Risk tier thresholds."
    )
    explanation_max_chars: int = Field(
        300, ge=0, le=2000, description="Hard cap on the explanation, whatever the level."
    )
