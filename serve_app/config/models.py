"""Strict configuration models: the application ``args`` and each deployment's ``user_config``.

Every model forbids unknown keys and describes every field, so a typo in a YAML
profile is an error that names the file and the field instead of a silently ignored
knob. :mod:`serve_app.config.check` loads whole Serve config files against these.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DOCS_ASSET_PATHS = ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/favicon.png")
"""The files /docs loads, served by the service itself (public like /docs)."""

PROMPT_VERSION = "glm-v1"
"""Version of the prompts of :mod:`serve_app.understanding.prompts`; bump it with their text
(it is part of the result-cache key, so old answers are not served for new prompts)."""


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
    sampling_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for vllm.SamplingParams (repetition_penalty, "
        "seed, or min_tokens + ignore_eos to force lengths in a benchmark); the level's "
        "max_tokens, greedy temperature and the JSON schema are set over them.",
    )
    json_tokens_per_char: float | None = Field(
        None,
        ge=1.0,
        le=8.0,
        description="With structured_output: the most tokens one character of free text "
        "can cost (4 covers any character on a byte-level tokenizer: xgrammar allows no "
        "escapes in a length-bounded string). Set, the schema bounds the explanation and "
        "the evidence lists so that every answer the grammar allows closes within the level's "
        "max_output_tokens: a model looping inside a string returns shorter valid JSON "
        "instead of a truncated one. Null: only the level's explanation cap bounds text.",
    )


class FaultArgs(StrictModel):
    """Fault injection for drills (:mod:`serve_app.engines.faults`); never in production."""

    error_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction (0..1) of generate/stream calls (batch items each count) that "
        "raise an injected EngineError (HTTP 502) instead of reaching the engine.",
    )
    delay_ms: float = Field(
        0.0,
        ge=0.0,
        le=600_000.0,
        description="Extra latency (ms) added before the engine runs; cancellable, so a "
        "deadline or a client that leaves still stops the request.",
    )
    seed: int = Field(
        0, description="Seed of the fault RNG: the same seed gives the same faults in order."
    )
    slots: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Requests the delay serves at once per replica (a simulated engine's "
        "batch limit, as vLLM's max_num_seqs or a full KV cache); the others wait in a queue "
        "the engine reports as `waiting`, as vLLM's scheduler does. Null: no limit.",
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
    max_visual_tokens: int = Field(
        1024,
        ge=4,
        le=16384,
        description="The largest image budget any degradation level may ask for; engines "
        "size their image cap with it (vLLM's mm_processor_kwargs) and larger level budgets "
        "are clipped to it.",
    )
    ocr: OcrArgs = Field(default_factory=OcrArgs, description="OCR settings (lite engine).")
    transformers: TransformersArgs = Field(
        default_factory=TransformersArgs, description="Settings of the transformers engine."
    )
    vllm: VllmArgs = Field(default_factory=VllmArgs, description="Settings of the vllm engine.")
    faults: FaultArgs | None = Field(
        None,
        description="Fault drills only; leave null in production. Wraps the engine so that "
        "it fails or slows down on purpose (loadtest/fault_drill.py).",
    )

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
    """One row of the degradation table (DESIGN.md §2): when to enter it and what it does."""

    level: int = Field(ge=0, le=3, description="0 normal, 1 degraded, 2 strained, 3 shed.")
    name: str = Field(description="Human-readable name shown in /v1/status.")
    enter_load: float | None = Field(
        None,
        gt=0,
        description="Enter this level when the load (largest signal / its full_at) holds at "
        "or above this for enter_samples samples; 0.8 = 80 %. None (only) for level 0.",
    )
    leave_load: float | None = Field(
        None,
        gt=0,
        description="Leave this level (one step down) when the load holds below this for "
        "leave_samples samples; below enter_load, so the level does not flap. None for level 0.",
    )
    max_visual_tokens: int = Field(
        ge=4,
        description="Image budget: (h/28)*(w/28) after GLM-geometry resize; capped by "
        "engine.max_visual_tokens.",
    )
    max_context_chars: int = Field(
        ge=0, description="Request context text is truncated to this many characters."
    )
    max_output_tokens: int = Field(ge=16, description="Output token cap for the engine.")
    explanation_max_chars: int = Field(
        ge=0, description="The explanation is cut to this many characters."
    )
    route: Literal["engine", "lite", "reject"] = Field(
        "engine",
        description="engine: the configured engine; lite: the lite engine (OCR + lexicon, "
        "no GPU) answers instead; reject: admission control — requests are let in up to "
        "the pool's capacity (and served at this level's budgets), the excess is refused "
        "with reject_status and Retry-After instead of queueing.",
    )
    reject_status: Literal[429, 503] = Field(
        503, description="Status of a refusal when route is reject (503 shed, 429 back off)."
    )
    retry_after_s: int = Field(
        2, ge=1, le=3600, description="Retry-After (seconds) sent with a refusal."
    )

    @model_validator(mode="after")
    def _thresholds(self) -> LevelArgs:
        if self.level == 0:
            if self.enter_load is not None or self.leave_load is not None:
                raise ValueError("level 0 is where the controller rests: no enter/leave_load")
            if self.route != "engine":
                raise ValueError("level 0 must route to the engine")
            return self
        if self.enter_load is None or self.leave_load is None:
            raise ValueError(f"level {self.level} needs enter_load and leave_load")
        if self.leave_load >= self.enter_load:
            raise ValueError(
                f"level {self.level}: leave_load ({self.leave_load}) must be below "
                f"enter_load ({self.enter_load}), or the level flaps"
            )
        return self


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
            enter_load=0.8,
            leave_load=0.6,
            max_visual_tokens=256,
            max_context_chars=500,
            max_output_tokens=256,
            explanation_max_chars=120,
        ),
        LevelArgs(
            level=2,
            name="strained",
            enter_load=0.95,
            leave_load=0.75,
            max_visual_tokens=64,
            max_context_chars=100,
            max_output_tokens=96,
            explanation_max_chars=40,
        ),
        LevelArgs(
            level=3,
            name="shed",
            enter_load=1.5,
            leave_load=1.0,
            max_visual_tokens=64,
            max_context_chars=100,
            max_output_tokens=96,
            explanation_max_chars=40,
            route="lite",
        ),
    )


SignalName = Literal[
    "gpu_util", "gpu_memory", "kv_cache", "engine_waiting", "engine_in_flight", "graph_queue", "cpu"
]


class SignalArgs(StrictModel):
    """How one load signal counts: its value divided by ``full_at`` is its load (1.0 = 100 %)."""

    enabled: bool = Field(True, description="Whether this signal takes part in the load.")
    full_at: float = Field(
        1.0,
        gt=0,
        description="The raw value that counts as 100 % load (a fraction for utilisations, "
        "a request count for queues).",
    )


def _default_signals() -> dict[SignalName, SignalArgs]:
    return {
        # NVML utilisation is a duty cycle (one kernel running = 100 %): real but coarse.
        "gpu_util": SignalArgs(enabled=True, full_at=1.0),
        # vLLM preallocates most of the card, so memory says little there; off by default.
        "gpu_memory": SignalArgs(enabled=False, full_at=0.95),
        "kv_cache": SignalArgs(enabled=True, full_at=1.0),
        "engine_waiting": SignalArgs(enabled=True, full_at=8.0),
        "engine_in_flight": SignalArgs(enabled=True, full_at=1.0),
        "graph_queue": SignalArgs(enabled=True, full_at=1.0),
        "cpu": SignalArgs(enabled=False, full_at=1.0),
    }


class AdmissionArgs(StrictModel):
    """Admission by predicted wait in every ingress replica, in front of the engine path
    (Preprocessor → VLM pool → Structurer), at every level (:mod:`serve_app.load.admission`).

    Part of the LoadController's ``user_config`` (live with ``serve deploy``); in force
    only while the controller is (``enabled: true``).
    """

    enabled: bool = Field(
        True,
        description="Refuse early (503/429 + Retry-After) what cannot finish within its "
        "budget, with a concurrency limit per ingress replica that follows the engine "
        "path's latency. false: only the levels' own admission (route: reject) and Serve's "
        "queues.",
    )
    tolerance: float = Field(
        1.5,
        ge=1.0,
        le=10.0,
        description="The engine-path time a request may take, as a multiple of the "
        "low-load time the replica measures: above it the limit shrinks, and no request "
        "is queued whose predicted wait would take it past this. Symptom → p95 of "
        "answers too high under overload: lower; too many refusals below capacity: raise.",
    )
    max_wait_s: float = Field(
        0.5,
        gt=0.0,
        le=600.0,
        description="Longest a request waits for a place in the engine path: one "
        "predicted to wait longer is refused at once, one that has waited this long is "
        "refused then (CoDel's bounded sojourn time).",
    )
    min_limit: int = Field(
        1,
        ge=1,
        le=100_000,
        description="Fewest requests one ingress replica lets into the engine path at "
        "once; also the concurrency at which the low-load time is measured (a batching "
        "GPU engine: a few).",
    )
    max_limit: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most requests one ingress replica lets in at once; null: its share "
        "of the VLM pool's capacity (replicas x max_ongoing_requests / ingress replicas).",
    )
    probe_samples: int = Field(
        5,
        ge=1,
        le=1000,
        description="The low-load time is the median of the last this many requests that "
        "ran with at most min_limit in the engine path; until there are this many, "
        "admission only counts (the limit is the cap).",
    )
    probe_interval_s: float = Field(
        30.0,
        ge=1.0,
        le=86_400.0,
        description="When no request has run at low load for this long (sustained load), "
        "the limit is held at min_limit for probe_samples requests to measure it again.",
    )
    retry_after_s: int = Field(
        1, ge=1, le=3600, description="Retry-After (seconds) sent with an admission refusal."
    )
    reject_status: Literal[429, 503] = Field(
        503, description="Status of an admission refusal (503 shed, 429 back off)."
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> AdmissionArgs:
        if self.max_limit is not None and self.max_limit < self.min_limit:
            raise ValueError(
                f"max_limit ({self.max_limit}) must be at least min_limit ({self.min_limit})"
            )
        return self


class ControllerUserConfig(StrictModel):
    """``user_config`` of the LoadController deployment (live-reloadable with serve deploy)."""

    enabled: bool = Field(
        True, description="false: stay at level 0 whatever the load (signals still shown)."
    )
    force_level: int | None = Field(
        None, ge=0, le=3, description="Pin this level whatever the load (drills); null: off."
    )
    draining: bool = Field(
        False,
        description="true: every ingress refuses new analyses with 503 + Retry-After while "
        "those already inside finish (resent memes are still answered from the library). "
        "Set before the app is deleted or shut down; `memeserve drain` does it and waits.",
    )
    period_s: float = Field(
        0.25,
        ge=0.05,
        le=60,
        description="Seconds between samples (and replica reports). With enter_samples it "
        "sets how soon a step in load raises the level: about (enter_samples + 2) x this.",
    )
    enter_samples: int = Field(
        2, ge=1, le=1000, description="Samples the load must hold above a level's enter_load."
    )
    leave_samples: int = Field(
        20, ge=1, le=10000, description="Samples the load must hold below leave_load to step down."
    )
    stale_after_s: float = Field(
        5.0, gt=0, description="A replica report older than this no longer counts."
    )
    idle_report_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between the reports (or level reads) of a replica with nothing "
        "in flight, instead of every period_s; a replica with work reports every period_s. "
        "An idle graph's calls took a tenth of a core on 2 cores. At least period_s, and "
        "under half of stale_after_s (an idle replica must still count).",
    )
    signals: dict[SignalName, SignalArgs] = Field(
        default_factory=_default_signals,
        description="Signals that make up the load; the largest normalised one wins. "
        "Missing names keep their defaults.",
    )
    levels: tuple[LevelArgs, ...] = Field(
        default_factory=_default_levels,
        description="Degradation table, one row per level 0..3, thresholds rising with level.",
    )
    admission: AdmissionArgs = Field(
        default_factory=AdmissionArgs,
        description="Admission by predicted wait in every ingress replica, at every level "
        "(in force while enabled is true).",
    )

    @field_validator("signals", mode="before")
    @classmethod
    def _merge_signal_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {
            name: args.model_dump() for name, args in _default_signals().items()
        }
        for name, override in value.items():
            if isinstance(override, dict) and name in merged:
                merged[name] = {**merged[name], **override}
            else:
                merged[name] = override
        return merged

    @model_validator(mode="after")
    def _idle_reports_count(self) -> ControllerUserConfig:
        if self.idle_report_s < self.period_s:
            raise ValueError(
                f"idle_report_s ({self.idle_report_s}) must be at least period_s ({self.period_s})"
            )
        if 2 * self.idle_report_s >= self.stale_after_s:
            raise ValueError(
                f"idle_report_s ({self.idle_report_s}) must be under half of stale_after_s "
                f"({self.stale_after_s}): an idle replica's report would go stale"
            )
        return self

    @model_validator(mode="after")
    def _levels_complete(self) -> ControllerUserConfig:
        found = sorted(row.level for row in self.levels)
        if found != [0, 1, 2, 3]:
            raise ValueError(f"levels must have exactly one row for each of 0..3, got {found}")
        rows = [self.level(number) for number in (1, 2, 3)]
        for lower, upper in itertools.pairwise(rows):
            assert lower.enter_load is not None and upper.enter_load is not None
            if upper.enter_load <= lower.enter_load:
                raise ValueError(
                    f"level {upper.level} enter_load ({upper.enter_load}) must be above "
                    f"level {lower.level}'s ({lower.enter_load})"
                )
        return self

    def level(self, number: int) -> LevelArgs:
        """The table row for degradation level ``number``."""
        return next(row for row in self.levels if row.level == number)


VLM_POOL_AUTOSCALING_POLICY = "serve_app.load.autoscaling:VLMPoolAutoscalingPolicy"
"""``autoscaling_config.policy.policy_function`` of the VLM pool that scales on the
graph's own signals (:mod:`serve_app.load.autoscaling`); its ``policy_kwargs`` are a
:class:`PoolAutoscalingArgs`."""


class PoolAutoscalingArgs(StrictModel):
    """Knobs of the VLM pool's autoscaling policy (``autoscaling_config.policy.policy_kwargs``).

    Scale-up rules act on the replicas' latest figures, scale-down on the look-back
    window's too; Serve's ``upscale_delay_s`` / ``downscale_delay_s`` and
    ``min_replicas`` / ``max_replicas`` of the same ``autoscaling_config`` still apply.
    """

    waiting_per_replica: float | None = Field(
        1.0,
        ge=0.0,
        description="Engine queue (requests waiting inside the engines, mean per replica) "
        "above which the pool is short: it then asks for (running + waiting) / running "
        "times the replicas. Null: the engine queue is ignored.",
    )
    in_flight_target: float | None = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="Share of max_ongoing_requests each replica should hold: the pool asks "
        "for the requests it holds / (this x max_ongoing_requests) replicas. Null: ignored.",
    )
    kv_cache_target: float | None = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="KV-cache usage (mean per replica, vLLM only) above which the pool is "
        "short: it asks for usage / this times the replicas. Null: ignored.",
    )
    scale_up_level: int | None = Field(
        2,
        ge=1,
        le=3,
        description="At or above this degradation level the pool asks for pressure_step more "
        "replicas than it runs (the graph is already degrading). Null: the level is ignored.",
    )
    scale_up_on_refusals: bool = Field(
        True,
        description="Admission refusals at a shedding level (the ingresses' latest reports) "
        "ask for pressure_step more replicas than the pool runs.",
    )
    pressure_step: int = Field(
        1, ge=1, le=64, description="Replicas added at a time for the level or refusals."
    )
    requests_rule: bool = Field(
        True,
        description="Also ask for what Serve's default policy asks for: requests running and "
        "queued for the pool (look-back window) / target_ongoing_requests.",
    )
    scale_down_step: int = Field(
        1,
        ge=1,
        le=64,
        description="Most replicas removed by one decision (each waits downscale_delay_s).",
    )
    engine_headroom: float | None = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="The pool does not shrink below the requests it holds / (this x the "
        "engines' concurrency), the concurrency being what a replica ran at once the last "
        "time its engine queued (ongoing - waiting, kept in Serve's policy state): fewer "
        "replicas would queue again. Null: off.",
    )


class CacheArgs(StrictModel):
    """The fingerprint library: exact and near-duplicate answers, persisted (DESIGN.md §4)."""

    enabled: bool = Field(True, description="Answer repeats from the store.")
    near: bool = Field(
        True,
        description="Also answer near duplicates (re-encoded, resized, bordered, lightly "
        "cropped or watermarked copies); false: exact repeats only.",
    )
    max_entries: int = Field(100_000, ge=1, description="LRU bound on stored analyses.")
    max_memory_mb: float = Field(
        512.0, gt=0, description="Bound on the in-memory index and analyses (LRU evicts)."
    )
    ttl_s: float = Field(
        24 * 3600.0, gt=0, description="Seconds an analysis stays valid after it is stored."
    )
    backend: Literal["memory", "sqlite", "redis"] = Field(
        "sqlite",
        description="memory: lost on restart; sqlite: an embedded file that survives "
        "restarts (one node); redis: shared by every node of a cluster.",
    )
    sqlite_path: Path = Field(
        Path(".memeserve/library.sqlite3"),
        description="SQLite file of the library (relative to the start directory).",
    )
    redis_url: str | None = Field(
        None, description="redis://host:port/db for the redis backend (else required)."
    )
    redis_prefix: str = Field(
        "memeserve:library:", min_length=1, description="Key prefix in Redis."
    )
    sync_period_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds between pulls of what other processes added to the backend "
        "(other nodes on redis, `memeserve library import`).",
    )
    hot_entries: int = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="Per Ingress replica: answers for recently resent bytes kept in the "
        "replica, so a byte-identical repeat needs no hop to the FingerprintStore; 0: off.",
    )
    hot_ttl_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds an Ingress keeps such an answer (a library entry removed or "
        "evicted is still served from a hot copy for at most this long).",
    )
    hot_sync_s: float = Field(
        0.25,
        gt=0,
        le=10,
        description="Seconds between each Ingress's checks of the store's epoch: a review "
        "or list change made through another Ingress replica reaches its hot answers "
        "within this (through the same replica, at once).",
    )

    @field_validator("sqlite_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _backend_location(self) -> CacheArgs:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("cache.backend 'redis' needs cache.redis_url")
        return self


_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

KeyScope = Literal["analyze", "admin"]


class ApiKeyArgs(StrictModel):
    """One accepted API key, configured by its SHA-256 digest (never the plaintext)."""

    name: str = Field(
        min_length=1, max_length=64, description="Name of the key (logs); unique among keys."
    )
    sha256: str = Field(
        description="Hex SHA-256 digest of the key: "
        "python -c \"import hashlib;print(hashlib.sha256(b'KEY').hexdigest())\"."
    )
    rate_per_s: float | None = Field(
        None, gt=0, description="Sustained requests per second for this key; null: no limit."
    )
    burst: int = Field(
        10, ge=1, le=100_000, description="Token bucket size: requests allowed in a burst."
    )
    scopes: tuple[KeyScope, ...] = Field(
        ("analyze",),
        min_length=1,
        description="What the key may do: analyze (the analysis routes, status) and admin "
        "(also term and image lists, reviews, decisions: /v1/lists, /v1/reviews, /v1/decisions).",
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("sha256 must be 64 hexadecimal characters (a SHA-256 digest)")
        return value.lower()


class SecurityArgs(StrictModel):
    """API keys, per-key rate limits and CORS at the ingress (the defaults keep it open)."""

    require_api_key: bool = Field(
        False,
        description="Refuse to start without at least one key. Keys are enforced whenever "
        "any are loaded; with none (and this false) the API is open.",
    )
    api_keys: tuple[ApiKeyArgs, ...] = Field(
        (), description="Accepted keys as SHA-256 digests, each with its own rate limit."
    )
    api_keys_env: str | None = Field(
        None,
        min_length=1,
        description="Name of an environment variable of comma-separated plaintext keys, "
        "hashed when loaded and named env-1, env-2, …; null: none.",
    )
    env_rate_per_s: float | None = Field(
        None, gt=0, description="Requests per second for each key from api_keys_env; null: none."
    )
    env_burst: int = Field(
        10, ge=1, le=100_000, description="Token bucket size for each key from api_keys_env."
    )
    admin_keys_env: str | None = Field(
        None,
        min_length=1,
        description="Name of an environment variable of comma-separated plaintext keys with "
        "the admin scope (named admin-1, admin-2, …; no rate limit); null: none.",
    )
    cors_allow_origins: tuple[str, ...] = Field(
        (),
        description="Origins allowed by CORS (exact, e.g. https://app.example); empty: "
        "no CORS headers at all.",
    )
    public_paths: tuple[str, ...] = Field(
        ("/", "/review", "/healthz", "/readyz", "/docs", *DOCS_ASSET_PATHS, "/openapi.json"),
        description="Exact paths that never need a key.",
    )

    @model_validator(mode="after")
    def _keys_present(self) -> SecurityArgs:
        if (
            self.require_api_key
            and not self.api_keys
            and not self.api_keys_env
            and not self.admin_keys_env
        ):
            raise ValueError(
                "security.require_api_key is true but none of api_keys, api_keys_env and "
                "admin_keys_env is set"
            )
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("security.api_keys names must be unique")
        if any(name.startswith("env-") for name in names) and self.api_keys_env:
            raise ValueError("names starting with 'env-' are reserved for keys from api_keys_env")
        if any(name.startswith("admin-") for name in names) and self.admin_keys_env:
            raise ValueError(
                "names starting with 'admin-' are reserved for keys from admin_keys_env"
            )
        return self


class ScenesArgs(StrictModel):
    """Term and image lists, reviews and decisions: where they persist and how many are kept."""

    enabled: bool = Field(
        True, description="Policies beyond default, lists and reviews; false: default only."
    )
    backend: Literal["memory", "sqlite", "redis"] | None = Field(
        None,
        description="Where the lists and reviews persist (an append-only log); null: the "
        "library's backend (cache.backend, with cache.redis_url for redis).",
    )
    sqlite_path: Path = Field(
        Path(".memeserve/scenes.sqlite3"),
        description="SQLite file of the lists and reviews (relative to the start directory).",
    )
    redis_prefix: str = Field(
        "memeserve:",
        min_length=1,
        description="Key prefix in Redis (cache.redis_url); the log adds scenes: to it.",
    )
    sync_period_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Seconds between pulls of list changes (other writers, the Ingress's copy "
        "of the term lists).",
    )
    decisions_kept: int = Field(
        10_000,
        ge=10,
        le=1_000_000,
        description="Recent decisions kept in memory for /v1/decisions, /review and reviews "
        "by request_id (with a small thumbnail each, ~4 KB).",
    )
    decisions_flush_s: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Seconds an Ingress replica gathers its decisions before sending them to "
        "the FingerprintStore in one call (a call per request took ~30 % of a cached "
        "answer's time on 2 cores). Reads of decisions and reviews through the same replica "
        "send them first; a review by request_id through another replica waits up to twice "
        "this for the decision.",
    )

    @field_validator("sqlite_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()


class JobsArgs(StrictModel):
    """Async jobs (``/v1/jobs``): where they persist, limits, workers and callbacks."""

    enabled: bool = Field(True, description="Serve /v1/jobs and run job workers.")
    backend: Literal["memory", "sqlite", "redis"] | None = Field(
        None,
        description="Where jobs persist; null: the library's backend (cache.backend, with "
        "cache.redis_url for redis). memory: one Ingress replica only, lost on restart.",
    )
    sqlite_path: Path = Field(
        Path(".memeserve/jobs.sqlite3"),
        description="SQLite file of the jobs (relative to the start directory).",
    )
    redis_prefix: str = Field(
        "memeserve:jobs:", min_length=1, description="Key prefix in Redis (cache.redis_url)."
    )
    max_items: int = Field(1000, ge=1, le=100_000, description="Items per job (422 beyond).")
    max_open_jobs: int = Field(
        5, ge=1, le=10_000, description="Unfinished jobs per API key (429 beyond)."
    )
    workers: int = Field(
        2,
        ge=0,
        le=256,
        description="Items each Ingress replica analyses at once for jobs (0: this replica "
        "runs no job work). They go through the same admission control as requests.",
    )
    lease_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Seconds a claimed item stays with a replica; past it (a replica died) "
        "another replica takes it. Above request_timeout_s; null: request_timeout_s + 60.",
    )
    poll_s: float = Field(
        0.5, gt=0, le=60, description="Seconds an idle worker waits before looking again."
    )
    callback_hosts: tuple[str, ...] = Field(
        (),
        description="Hosts a callback_url may name (exact, or *.example.com for its "
        "subdomains); empty: no callbacks.",
    )
    callback_secrets_env: str | None = Field(
        None,
        min_length=1,
        description="Environment variable of comma-separated KEYNAME=SECRET pairs: the "
        "HMAC secret for each API key's callbacks (anonymous on an open service).",
    )
    callback_attempts: int = Field(
        5, ge=1, le=50, description="Deliveries tried before a callback is marked failed."
    )
    callback_backoff_s: float = Field(
        1.0, gt=0, le=3600, description="Wait before the second try; doubles each time."
    )
    callback_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Seconds one delivery may take."
    )
    retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished jobs and their results are kept this long."
    )

    @field_validator("sqlite_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()


class AppArgs(StrictModel):
    """The ``args`` of ``deployments.app:build_app`` in every Serve config."""

    engine: EngineArgs = Field(default_factory=EngineArgs, description="Model engine.")
    limits: LimitsArgs = Field(default_factory=LimitsArgs, description="Input limits.")
    cache: CacheArgs = Field(default_factory=CacheArgs, description="Result cache.")
    security: SecurityArgs = Field(
        default_factory=SecurityArgs, description="API keys, rate limits and CORS."
    )
    scenes: ScenesArgs = Field(
        default_factory=ScenesArgs,
        description="Term and image lists, reviews, decisions (policies: the Ingress's "
        "user_config).",
    )
    jobs: JobsArgs = Field(
        default_factory=JobsArgs, description="Async jobs with signed callbacks (/v1/jobs)."
    )
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        60.0, description="Deadline for one analysis end to end (else 504)."
    )
    prompt_version: str = Field(
        PROMPT_VERSION, min_length=1, description="Prompt version; part of the cache key."
    )

    @model_validator(mode="after")
    def _scenes_backend(self) -> AppArgs:
        for name, backend in (("scenes", self.scenes.backend), ("jobs", self.jobs.backend)):
            if backend == "redis" and not self.cache.redis_url:
                raise ValueError(f"{name}.backend 'redis' needs cache.redis_url")
        if self.jobs.lease_s is not None and self.jobs.lease_s <= self.request_timeout_s:
            raise ValueError(
                f"jobs.lease_s ({self.jobs.lease_s:g}) must be above request_timeout_s "
                f"({self.request_timeout_s:g}): a lease must outlive the analysis it covers"
            )
        return self

    @property
    def jobs_lease_s(self) -> float:
        """Seconds a job item's claim lasts: ``jobs.lease_s``, else the deadline + 60 s."""
        return self.jobs.lease_s or self.request_timeout_s + 60.0


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


# --------------------------------------------------------------------------- scenes
# Policies (issue "Scenes"): the Ingress's user_config, live through `serve deploy`.

ListAction = Literal["block", "review", "pass"]
_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DEFAULT_POLICY = "default"
_LEVELS: tuple[str, ...] = ("none", "low", "medium", "high")
_EMOTIONS = (
    "happiness",
    "excitement",
    "love",
    "anger",
    "sorrow",
    "fear",
    "disgust",
    "surprise",
    "sarcasm",
    "neutral",
)
_INTENTS = ("interactive", "expressive", "entertaining", "offensive", "complaint", "other")


class RuleCondition(StrictModel):
    """What an answer must show for a rule to apply; every field given must hold."""

    emotion: tuple[str, ...] | None = Field(None, description="Any of these emotions.")
    intent: tuple[str, ...] | None = Field(None, description="Any of these intents.")
    sarcastic: bool | None = Field(None, description="Sarcastic (true) or not (false).")
    min_offensiveness: int | None = Field(None, ge=0, le=3, description="Offensiveness ≥ this.")
    max_offensiveness: int | None = Field(None, ge=0, le=3, description="Offensiveness ≤ this.")
    min_confidence: float | None = Field(None, ge=0, le=1, description="Confidence ≥ this.")
    risk_level: tuple[str, ...] | None = Field(
        None, description="Any of these risk levels (none/low/medium/high)."
    )

    @model_validator(mode="after")
    def _known_labels(self) -> RuleCondition:
        for field, allowed in (
            ("emotion", _EMOTIONS),
            ("intent", _INTENTS),
            ("risk_level", _LEVELS),
        ):
            unknown = [v for v in getattr(self, field) or () if v not in allowed]
            if unknown:
                raise ValueError(f"{field}: unknown {unknown}; known: {list(allowed)}")
        return self


class PolicyRule(StrictModel):
    """``when`` the answer matches, decide ``action`` (first such rule wins) and add ``tags``."""

    when: RuleCondition = Field(description="The condition.")
    action: str | None = Field(None, description="The action it decides (of the policy's).")
    tags: tuple[str, ...] = Field((), description="Tags it adds (every matching rule adds).")
    name: str | None = Field(None, description="Shown in the reasons; default: rule N.")

    @model_validator(mode="after")
    def _does_something(self) -> PolicyRule:
        if self.action is None and not self.tags:
            raise ValueError("a rule needs an action, tags or both")
        return self


class ListActions(StrictModel):
    """The policy's action for a block-list hit and for a review-list hit."""

    block: str = Field("block", description="Action when a block-list term or image matches.")
    review: str = Field("tag", description="Least action when a review-list term or image matches.")


class PolicyArgs(StrictModel):
    """One scene's policy: its action vocabulary, thresholds, rules and lists."""

    description: str = Field("", description="What the scene is (shown in /v1/policies).")
    actions: tuple[str, ...] = Field(
        ("pass", "throttle", "tag", "block"),
        min_length=1,
        description="The action vocabulary, mildest first (the first is what a pass-list hit "
        "gives).",
    )
    level_actions: dict[str, str] = Field(
        default_factory=lambda: {
            "none": "pass",
            "low": "throttle",
            "medium": "tag",
            "high": "block",
        },
        description="Action for each risk level (none/low/medium/high) when no rule decides.",
    )
    thresholds: RiskThresholds | None = Field(
        None,
        description="Risk levels from offensiveness × confidence for this policy; null: the "
        "Structurer's (the answer's own risk level).",
    )
    rules: tuple[PolicyRule, ...] = Field(
        (), description="Checked in order: the first with an action decides; all add tags."
    )
    term_lists: tuple[str, ...] = Field((), description="Term lists this policy consults.")
    image_lists: tuple[str, ...] = Field((), description="Image lists this policy consults.")
    list_actions: ListActions = Field(
        default_factory=ListActions, description="Actions for list hits."
    )
    obey_reviews: bool = Field(
        True, description="A reviewer's labels replace the model's for the image and its copies."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PolicyArgs:
        if len(set(self.actions)) != len(self.actions):
            raise ValueError("actions must be unique")
        if set(self.level_actions) != set(_LEVELS):
            raise ValueError(f"level_actions needs exactly the levels {list(_LEVELS)}")
        used = {
            **{f"level_actions.{k}": v for k, v in self.level_actions.items()},
            "list_actions.block": self.list_actions.block,
            "list_actions.review": self.list_actions.review,
            **{f"rules[{i}].action": r.action for i, r in enumerate(self.rules) if r.action},
        }
        for where, action in used.items():
            if action not in self.actions:
                raise ValueError(f"{where}: {action!r} is not one of actions {list(self.actions)}")
        for name in (*self.term_lists, *self.image_lists):
            if not re.match(_NAME, name):
                raise ValueError(f"list name {name!r} must match {_NAME}")
        return self

    def rank(self, action: str) -> int:
        """Position of ``action`` in the vocabulary (0 = mildest)."""
        return self.actions.index(action)


class IngressUserConfig(StrictModel):
    """``user_config`` of the Ingress deployment (live-reloadable): the scene policies."""

    policies: dict[str, PolicyArgs] = Field(
        default_factory=dict,
        validate_default=True,
        description="Named policies a request picks with `policy`; `default` (today's "
        "behaviour) is added when absent.",
    )

    @field_validator("policies")
    @classmethod
    def _names(cls, value: dict[str, PolicyArgs]) -> dict[str, PolicyArgs]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"policy name {name!r} must match {_NAME}")
        if DEFAULT_POLICY not in value:
            value = {DEFAULT_POLICY: PolicyArgs(), **value}
        return value
