"""Bytes + context → a keyed upload → an engine request (framework-free).

The Preprocessor deployment runs this in two steps around the library lookup:
:func:`key_upload` (validate, decode, fingerprint) and, only on a miss,
:func:`build_request` (resize to the level's budget, the engine request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serve_app.config.models import AppArgs, LevelArgs
from serve_app.engines.base import EngineRequest
from serve_app.errors import ClientError
from serve_app.library.store import StoreKey, scope_of
from serve_app.load.degradation import image_budget
from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.media.imaging import (
    DecodedImage,
    Limits,
    decode_image,
    resize_to_budget,
    visual_tokens,
)
from serve_app.scenes.state import Marks
from serve_app.understanding.analysis import ImageInfo
from serve_app.understanding.context_text import (
    check_context_length,
    normalise_context,
    truncate_context,
)
from serve_app.understanding.structuring import StructureContext


@dataclass(frozen=True)
class Keyed:
    """A validated, decoded upload with its library key (not yet resized)."""

    decoded: DecodedImage
    context: str
    key: StoreKey
    started: float
    """``time.perf_counter()`` when preprocessing began."""


@dataclass(frozen=True)
class Prepared:
    """A validated request ready for the engine, with its library key."""

    key: StoreKey
    request: EngineRequest
    image: ImageInfo
    preprocess_ms: float
    explanation_max_chars: int
    marks: Marks = field(default_factory=Marks)
    """The image's list entries and review (scenes), from the same lookup."""
    epoch: str | None = None
    """The store's epoch when it looked the image up (its marks are valid at it)."""

    def structure_context(self, request_id: str) -> StructureContext:
        """What the Structurer needs besides the model's text, for this request."""
        return StructureContext(
            request_id=request_id,
            degradation_level=self.request.level,
            image=self.image,
            preprocess_ms=self.preprocess_ms,
            explanation_max_chars=self.explanation_max_chars,
        )


@dataclass(frozen=True)
class Refused:
    """The upload was refused (a client error): returned, not raised, across deployments.

    A client's bad input is not a server failure; raised inside a replica, Serve would
    log it at ERROR with a traceback. The ingress raises :attr:`error` as the response.
    """

    error: ClientError


@dataclass(frozen=True)
class Fingerprinted:
    """An image for a list entry or a review: its fingerprint and a thumbnail."""

    fingerprint: bytes
    """:meth:`~serve_app.media.fingerprint.Fingerprint.to_bytes`."""
    thumbnail: bytes | None


@dataclass(frozen=True)
class CacheHit:
    """A stored analysis answering this request, and how it matched."""

    analysis: dict[str, Any]
    level: int
    preprocess_ms: float
    match: Literal["exact", "near"] = "exact"
    distance: int = 0
    marks: Marks = field(default_factory=Marks)
    """The image's list entries and review (scenes), from the same lookup."""
    unseen: bytes | None = None
    """The image's fingerprint when the store has not seen this request (a hot answer
    from the Ingress's copy): the decision record carries it to the store."""
    fingerprint: Fingerprint | None = None
    """The fingerprint the hit is kept under, and the store's epoch at the lookup (the
    Ingress keeps the answer for resent bytes only at the epoch it heard)."""
    epoch: str | None = None


def limits_from(args: AppArgs) -> Limits:
    """The imaging limits configured in ``args``."""
    return Limits(
        max_bytes=args.limits.max_bytes,
        max_pixels=args.limits.max_pixels,
        max_frames=args.limits.max_frames,
        max_aspect_ratio=args.limits.max_aspect_ratio,
        sampled_frames=args.limits.sampled_frames,
    )


def request_scope(text: str | None, args: AppArgs) -> str:
    """The library scope of a request: its normalised context, the model, the prompt."""
    return scope_of(normalise_context(text), args.engine.model_name, args.prompt_version)


def key_upload(
    data: bytes,
    text: str | None,
    *,
    args: AppArgs,
    fingerprinter: Fingerprinter,
    upload: str | None = None,
) -> Keyed:
    """Validate and decode the upload and fingerprint it.

    Raises the client errors of :func:`serve_app.media.imaging.decode_image`, and
    :class:`SchemaError` for an over-long context text.
    """
    started = time.perf_counter()
    check_context_length(text, args.limits.max_text_chars)
    decoded = decode_image(data, limits_from(args))
    context = normalise_context(text)
    key = StoreKey(
        fingerprint=fingerprinter.fingerprint(decoded.image),
        scope=scope_of(context, args.engine.model_name, args.prompt_version),
        upload=upload,
    )
    return Keyed(decoded=decoded, context=context, key=key, started=started)


def build_request(
    keyed: Keyed,
    *,
    request_id: str,
    args: AppArgs,
    row: LevelArgs,
    deadline: float | None = None,
) -> Prepared:
    """The engine request for ``keyed`` at ``row``'s level: image resized, context cut."""
    budget = image_budget(row, args.engine.max_visual_tokens)
    decoded = keyed.decoded
    resized = resize_to_budget(decoded.image, budget)
    request = EngineRequest(
        request_id=request_id,
        image=np.asarray(resized),
        context=truncate_context(keyed.context, row.max_context_chars) or None,
        max_output_tokens=row.max_output_tokens,
        max_visual_tokens=budget,
        explanation_max_chars=row.explanation_max_chars,
        level=row.level,
        route=row.route,
        deadline=deadline,
        # The resized image is a function of the decoded pixels and its size.
        image_key=f"{keyed.key.fingerprint.exact}@{resized.width}x{resized.height}",
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
        key=keyed.key,
        request=request,
        image=info,
        preprocess_ms=(time.perf_counter() - keyed.started) * 1000.0,
        explanation_max_chars=row.explanation_max_chars,
    )
