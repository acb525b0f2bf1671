"""Image facts and a Structurer context for tests of the structurer."""

from __future__ import annotations

from serve_app.understanding.analysis import ImageInfo
from serve_app.understanding.structuring import StructureContext

IMAGE = ImageInfo(
    width=640,
    height=480,
    frames=1,
    format="PNG",
    analysed_width=616,
    analysed_height=448,
    visual_tokens=352,
)


def structure_context(
    *, level: int = 0, cap: int = 300, preprocess_ms: float = 3.14159
) -> StructureContext:
    """A context for request ``req-123`` about :data:`IMAGE`."""
    return StructureContext(
        request_id="req-123",
        degradation_level=level,
        image=IMAGE,
        preprocess_ms=preprocess_ms,
        explanation_max_chars=cap,
    )
