"""A real scripted engine and real analyses for the scan's unit tests."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from serve_app.config.models import StructurerUserConfig
from serve_app.engines import Engine, EngineOutput, EngineRequest, EngineStats
from serve_app.errors import EngineError, ServiceUnavailable
from serve_app.understanding.structuring import structure
from tests.support.analysis import structure_context

FAIL = "engine, fail on this"
"""Context text on which :class:`ScriptedEngine` raises an EngineError."""
GARBLE = "engine, answer nonsense"
"""Context text on which :class:`ScriptedEngine` answers text that is not JSON."""


def answer_text(**overrides: Any) -> str:
    """Model-style output: the labels as the prompt asks for them."""
    data: dict[str, Any] = {
        "emotion": "sarcasm",
        "intent": "offensive",
        "sarcastic": True,
        "offensiveness": 3,
        "confidence": 0.9,
        "explanation": "图像使用阴阳怪气类表情包，具有明显贬义倾向",
    }
    data.update(overrides)
    return json.dumps(data, ensure_ascii=False)


def an_analysis(**overrides: Any) -> dict[str, Any]:
    """A Structurer-built analysis (policy-free, as the library stores it)."""
    output = EngineOutput(
        text=answer_text(**overrides), engine="scripted", model="scripted@1", elapsed_ms=5.0
    )
    built = structure(output, structure_context(), StructurerUserConfig())
    return built.analysis.model_dump(mode="json")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    """A small PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class ScriptedEngine(Engine):
    """Answers :func:`answer_text` (or fails, or garbles, on the contexts above)."""

    name = "scripted"

    def __init__(self) -> None:
        self.started = 0
        self.shutdowns = 0
        self.batches: list[list[str]] = []

    @property
    def model(self) -> str:
        return "scripted@1"

    async def start(self) -> None:
        self.started += 1

    def check_health(self) -> None:
        if not self.started:
            raise ServiceUnavailable("the scripted engine is not started")

    async def shutdown(self) -> None:
        self.shutdowns += 1

    def stats(self) -> EngineStats:
        return EngineStats(in_flight=0)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self.check_health()
        if request.context == FAIL:
            raise EngineError("the scripted engine failed as asked")
        text = "no labels here" if request.context == GARBLE else answer_text()
        return EngineOutput(text=text, engine=self.name, model=self.model, elapsed_ms=1.0)

    async def generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        self.batches.append([request.request_id for request in requests])
        return await super().generate_batch(requests)
