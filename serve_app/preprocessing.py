"""Bytes + context → an engine request (framework-free; the Preprocessor deployment wraps it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.config import AppArgs
from serve_app.context_text import normalise_context, truncate_context
from serve_app.engines.base import EngineRequest
from serve_app.errors import SchemaError
from serve_app.imaging import Limits, decode_image, pixel_key, resize_to_budget, visual_tokens
from serve_app.result_cache import cache_key
from serve_app.schema import ImageInfo


@dataclass(frozen=True)
class Prepared:
    """A validated request ready for the engine, with its cache key."""

    key: str
    request: EngineRequest
    image: ImageInfo
    preprocess_ms: float
    explanation_max_chars: int


@dataclass(frozen=True)
class CacheHit:
    """A stored analysis for an exact repeat, with the level it was produced at."""

    analysis: dict[str, Any]
    level: int
    preprocess_ms: float


def limits_from(args: AppArgs) -> Limits:
    """The imaging limits configured in ``args``."""
    return Limits(
        max_bytes=args.limits.max_bytes,
        max_pixels=args.limits.max_pixels,
        max_frames=args.limits.max_frames,
        max_aspect_ratio=args.limits.max_aspect_ratio,
        sampled_frames=args.limits.sampled_frames,
    )


def model_name(args: AppArgs) -> str:
    """``model_id@model_version``, as engines report it and the cache key uses it."""
    return args.engine.model_name


def prepare(
    data: bytes,
    text: str | None,
    *,
    request_id: str,
    args: AppArgs,
    level: int = 0,
    deadline: float | None = None,
) -> Prepared:
    """Validate and decode the upload, resize it to the level's budget, key it.

    Raises the client errors of :func:`serve_app.imaging.decode_image`, and
    :class:`SchemaError` for an over-long context text.
    """
    started = time.perf_counter()
    if text is not None and len(text) > args.limits.max_text_chars:
        raise SchemaError(
            f"text is {len(text)} characters; the limit is {args.limits.max_text_chars}"
        )
    row = args.level(level)
    decoded = decode_image(data, limits_from(args))
    context = normalise_context(text)
    key = cache_key(pixel_key(decoded.image), context, model_name(args), args.prompt_version)
    resized = resize_to_budget(decoded.image, row.max_visual_tokens)
    request = EngineRequest(
        request_id=request_id,
        image=np.asarray(resized),
        context=truncate_context(context, row.max_context_chars) or None,
        max_output_tokens=row.max_output_tokens,
        max_visual_tokens=row.max_visual_tokens,
        explanation_max_chars=row.explanation_max_chars,
        level=level,
        deadline=deadline,
    )
    info = ImageInfo(
        width=decoded.width,
        height=decoded.height,
        frames=decoded.frames,
        format=decoded.format,
        analysed_width=resized.width,
        analysed_height=resized.height,
        visual_tokens=visual_tokens(resized.width, resized.height),
    )
    return Prepared(
        key=key,
        request=request,
        image=info,
        preprocess_ms=(time.perf_counter() - started) * 1000.0,
        explanation_max_chars=row.explanation_max_chars,
    )
