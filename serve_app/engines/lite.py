"""The ``lite`` engine: OCR + slang lexicon, no model weights, CPU only.

It is the CPU default and the last degradation tier. It reads the caption with
OCR, looks the caption and the request context up in the curated lexicon, and
writes its judgement as model-style JSON text so that the Structurer handles it
exactly like a VLM's output. It is a heuristic: its confidence says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from serve_app.config.models import EngineArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats
from serve_app.errors import DeadlineExceeded, EngineError, MemeServeError, ServiceUnavailable
from serve_app.media.ocr import OcrReader
from serve_app.understanding.labels import EMOTION_ZH, INTENT_ZH
from serve_app.understanding.lexicon import Lexicon, LexiconHit

logger = logging.getLogger(__name__)

# Ties between equally weighted emotions go to the more specific reading.
_EMOTION_PRIORITY = (
    "sarcasm",
    "anger",
    "disgust",
    "sorrow",
    "fear",
    "love",
    "excitement",
    "surprise",
    "happiness",
    "neutral",
)


def judge(
    ocr_text: Sequence[str], context: str | None, hits: Sequence[LexiconHit]
) -> dict[str, Any]:
    """Turn OCR lines, context and lexicon hits into a model-style judgement dict."""
    has_text = bool(ocr_text) or bool(context and context.strip())
    result: dict[str, Any]
    if not hits:
        result = {
            "emotion": "neutral",
            "intent": "expressive" if has_text else "other",
            "sarcastic": False,
            "offensiveness": 0,
            "confidence": 0.3 if has_text else 0.15,
            "explanation": (
                "未命中已知网络用语，按字面判断为中性表达。"
                if has_text
                else "图中未识别到文字，也没有上下文，无法可靠判断情绪与意图。"
            ),
        }
    else:
        result = _judge_hits(hits)
    result["ocr_text"] = list(ocr_text)
    result["slang"] = [hit.entry.term for hit in hits]
    return result


def _judge_hits(hits: Sequence[LexiconHit]) -> dict[str, Any]:
    emotion_weight: dict[str, float] = defaultdict(float)
    intent_weight: dict[str, float] = defaultdict(float)
    sarcasm_weight = 0.0
    for hit in hits:
        entry = hit.entry
        emotion_weight[entry.emotion] += entry.weight
        intent_weight[entry.intent] += entry.weight
        if entry.sarcasm:
            sarcasm_weight += entry.weight
    total = sum(emotion_weight.values())
    emotion = max(
        emotion_weight,
        key=lambda e: (round(emotion_weight[e], 6), -_EMOTION_PRIORITY.index(e)),
    )
    offensive = sorted((hit.entry.offensiveness for hit in hits), reverse=True)
    offensiveness = offensive[0]
    if len(offensive) > 1 and offensive[1] >= 2:
        offensiveness = min(3, offensiveness + 1)
    if offensiveness >= 2:
        intent = "offensive"
    elif intent_weight.get("complaint", 0.0) > 0:
        intent = "complaint"
    else:
        intent = max(intent_weight, key=lambda i: round(intent_weight[i], 6))
    agreement = emotion_weight[emotion] / total
    strength = min(1.0, total / 2.0)
    confidence = round(min(0.9, 0.35 + 0.5 * agreement * strength), 2)
    sarcastic = sarcasm_weight >= 0.5
    found = "、".join(f"「{hit.entry.term}」（{hit.entry.gloss}）" for hit in hits[:4])
    explanation = (
        f"命中网络用语{found}；整体情绪为{EMOTION_ZH[emotion]}，意图为{INTENT_ZH[intent]}"
        f"{'，带有讽刺意味' if sarcastic else ''}。"
    )
    return {
        "emotion": emotion,
        "intent": intent,
        "sarcastic": sarcastic,
        "offensiveness": offensiveness,
        "confidence": confidence,
        "explanation": explanation,
    }


class LiteEngine(Engine):
    """OCR + lexicon engine; see the module docstring."""

    name = "lite"

    def __init__(self, args: EngineArgs) -> None:
        self._args = args
        self._ocr = OcrReader(
            min_score=args.ocr.min_score, threads=args.ocr.threads, max_side=args.ocr.max_side
        )
        self._lexicon: Lexicon | None = None
        self._in_flight = 0
        self._aborted = 0

    @property
    def model(self) -> str:
        return self._args.model_name

    async def start(self) -> None:
        if self._lexicon is not None and self._ocr.loaded:
            return
        self._lexicon = await asyncio.to_thread(Lexicon.load, self._args.lexicon_path)
        await asyncio.to_thread(self._ocr.load)
        logger.info("lite engine ready: %d lexicon entries", len(self._lexicon))

    def check_health(self) -> None:
        if self._lexicon is None or not self._ocr.loaded:
            raise ServiceUnavailable("lite engine is not started", retry_after_s=1.0)

    async def shutdown(self) -> None:
        self._ocr.close()
        self._lexicon = None

    def stats(self) -> EngineStats:
        return EngineStats(in_flight=self._in_flight, aborted=self._aborted)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self.check_health()
        assert self._lexicon is not None
        request.check_deadline()
        started = time.perf_counter()
        self._in_flight += 1
        try:
            lines = await asyncio.to_thread(self._ocr.read, request.image)
            ocr_text = [line.text for line in lines]
            # Captions are often broken over lines: match across them, not inside each.
            hits = self._lexicon.find(" ".join(ocr_text), request.context)
            text = json.dumps(judge(ocr_text, request.context, hits), ensure_ascii=False)
        except asyncio.CancelledError:
            # The caller left or its deadline passed: the OCR thread finishes unseen.
            self._aborted += 1
            raise
        except MemeServeError:
            raise
        except Exception as exc:
            logger.exception("lite engine failed for request %s", request.request_id)
            raise EngineError(f"lite engine failed: {type(exc).__name__}") from exc
        finally:
            self._in_flight -= 1
        try:
            request.check_deadline()
        except DeadlineExceeded:
            self._aborted += 1
            raise
        return EngineOutput(
            text=text,
            engine=self.name,
            model=self.model,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )
