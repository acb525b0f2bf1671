"""Text on the image, read with RapidOCR and the PP-OCR models its wheel ships.

No model is downloaded: the wheel carries the detection, direction and Chinese/English
recognition models. Construction is cheap; the ONNX sessions load on :meth:`OcrReader.load`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OcrLine:
    """One recognised line of text, top-to-bottom order, with its confidence."""

    text: str
    score: float
    top: float


def _is_text(text: str) -> bool:
    """Drop what detectors read off shapes: lone Latin letters, digits or punctuation."""
    if any("\u3400" <= ch <= "\u9fff" for ch in text):
        return True
    return sum(ch.isalnum() for ch in text) >= 2


def _reading_order(fragments: list[tuple[float, float, float, str, float]]) -> list[OcrLine]:
    """Group fragments whose vertical centres are close into rows; read rows left to right.

    The detector often splits one caption at its punctuation ("你说得对" / "但是"); the
    pieces of a row are joined with a space so the caption reads as written.
    """
    rows: list[list[tuple[float, float, float, str, float]]] = []
    for fragment in sorted(fragments, key=lambda f: (f[0] + f[1]) / 2):
        centre, height = (fragment[0] + fragment[1]) / 2, fragment[1] - fragment[0]
        if rows:
            last = rows[-1][0]
            if abs(centre - (last[0] + last[1]) / 2) < 0.5 * max(height, last[1] - last[0]):
                rows[-1].append(fragment)
                continue
        rows.append([fragment])
    lines = []
    for row in rows:
        row.sort(key=lambda f: f[2])
        lines.append(
            OcrLine(
                text=" ".join(f[3] for f in row),
                score=round(min(f[4] for f in row), 4),
                top=min(f[0] for f in row),
            )
        )
    return lines


class OcrReader:
    """Thread-safe wrapper around one RapidOCR instance."""

    def __init__(self, *, min_score: float = 0.6, threads: int = 1, max_side: int = 1600) -> None:
        self.min_score = min_score
        self.threads = threads
        self.max_side = max_side
        self._engine: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Create the ONNX sessions (about half a second); idempotent."""
        if self._engine is not None:
            return
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        self._engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                "Global.max_side_len": self.max_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        logger.info("OCR loaded (threads=%d, min_score=%.2f)", self.threads, self.min_score)

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def read(self, image: np.ndarray | Image.Image) -> list[OcrLine]:
        """Recognised lines at or above ``min_score``, top to bottom."""
        if self._engine is None:
            raise RuntimeError("OcrReader.read() called before load()")
        array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        # RapidOCR expects OpenCV's BGR channel order for arrays.
        bgr = np.ascontiguousarray(array[:, :, ::-1])
        with self._lock:
            result = self._engine(bgr)
        texts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        boxes = getattr(result, "boxes", None)
        fragments: list[tuple[float, float, float, str, float]] = []
        for i, (text, score) in enumerate(zip(texts, scores, strict=False)):
            text = str(text).strip()
            if float(score) < self.min_score or not _is_text(text):
                continue
            if boxes is not None:
                box = np.asarray(boxes[i])
                top, bottom, left = (
                    float(box[:, 1].min()),
                    float(box[:, 1].max()),
                    float(box[:, 0].min()),
                )
            else:
                top, bottom, left = float(i), float(i) + 1.0, 0.0
            fragments.append((top, bottom, left, text, float(score)))
        return _reading_order(fragments)

    def close(self) -> None:
        """Drop the ONNX sessions."""
        self._engine = None
