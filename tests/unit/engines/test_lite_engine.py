"""The lite engine: the pure judgement and a real OCR pass over a drawn meme."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from loadtest.corpus import MemeSpec, draw_meme
from serve_app.config.models import EngineArgs
from serve_app.engines import EngineRequest, create_engine
from serve_app.engines.lite import judge
from serve_app.errors import DeadlineExceeded, ServiceUnavailable
from serve_app.understanding.lexicon import Lexicon
from serve_app.understanding.structuring import parse_model_text


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def test_no_text_is_a_low_confidence_neutral_judgement() -> None:
    result = judge([], None, [])
    assert result["emotion"] == "neutral" and result["intent"] == "other"
    assert result["confidence"] < 0.3 and result["slang"] == [] and result["ocr_text"] == []


def test_sarcasm_cues_make_a_sarcastic_judgement(lexicon: Lexicon) -> None:
    hits = lexicon.find("你说得对，但是", "阴阳怪气")
    result = judge(["你说得对，但是"], "阴阳怪气", hits)
    assert result["emotion"] == "sarcasm" and result["sarcastic"] is True
    assert result["slang"] == ["你说得对但是", "阴阳怪气"]
    assert 0.5 < result["confidence"] <= 0.9


def test_two_insults_raise_offensiveness_and_intent(lexicon: Lexicon) -> None:
    hits = lexicon.find("脑残 智障")
    result = judge(["脑残 智障"], None, hits)
    assert result["intent"] == "offensive"
    assert result["offensiveness"] == 3


def test_a_refund_demand_is_a_complaint(lexicon: Lexicon) -> None:
    hits = lexicon.find("退钱！客服呢")
    result = judge(["退钱！客服呢"], None, hits)
    assert result["intent"] == "complaint"
    assert result["offensiveness"] <= 1


def test_judgement_text_round_trips_through_the_structurer(lexicon: Lexicon) -> None:
    hits = lexicon.find("笑死")
    text = json.dumps(judge(["笑死"], None, hits), ensure_ascii=False)
    fields, warnings = parse_model_text(text)
    assert warnings == []
    assert fields.slang == ["笑死"] and fields.ocr_text == ["笑死"]


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    engine = create_engine(EngineArgs())
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.shutdown())


def _request(
    image: np.ndarray, context: str | None = None, deadline: float | None = None
) -> EngineRequest:
    return EngineRequest(
        request_id="t", image=image, context=context, max_output_tokens=256, deadline=deadline
    )


def test_real_ocr_reads_the_caption_and_finds_the_slang(engine) -> None:  # type: ignore[no-untyped-def]
    image = np.asarray(draw_meme(MemeSpec(template=7, top="你说得对，但是", bottom="破防了")))
    output = asyncio.run(engine.generate(_request(image, context="蚌埠住了")))
    result = json.loads(output.text)
    joined = "".join(result["ocr_text"])
    assert "你说得对" in joined and "破防了" in joined
    assert {"你说得对但是", "破防了", "蚌埠住了"} <= set(result["slang"])
    assert output.engine == "lite" and output.model == "memeserve-lite@lite-1"
    assert output.elapsed_ms > 0


def test_a_passed_deadline_raises(engine) -> None:  # type: ignore[no-untyped-def]
    image = np.zeros((56, 56, 3), dtype=np.uint8)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(engine.generate(_request(image, deadline=time.time() - 1)))


def test_an_unstarted_engine_is_unavailable() -> None:
    engine = create_engine(EngineArgs())
    with pytest.raises(ServiceUnavailable):
        engine.check_health()
    with pytest.raises(ServiceUnavailable):
        asyncio.run(engine.generate(_request(np.zeros((56, 56, 3), dtype=np.uint8))))


def test_a_caller_that_leaves_is_counted_as_aborted(engine) -> None:  # type: ignore[no-untyped-def]
    image = np.asarray(draw_meme(MemeSpec(template=8, top="绷不住了", bottom="急了急了")))
    before = engine.stats().aborted

    async def leave_early() -> None:
        task = asyncio.ensure_future(engine.generate(_request(image)))
        while engine.stats().in_flight == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_early())
    assert engine.stats().aborted == before + 1 and engine.stats().in_flight == 0


def test_a_deadline_passing_during_ocr_is_counted_as_aborted(
    engine,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = np.asarray(draw_meme(MemeSpec(template=9, top="你说得对，但是")))
    before = engine.stats().aborted
    deadline = time.time() + 0.2
    read = engine._ocr.read

    def slow_read(img: np.ndarray) -> object:
        lines = read(img)
        time.sleep(max(0.0, deadline - time.time()) + 0.01)  # OCR outlasts the deadline
        return lines

    monkeypatch.setattr(engine._ocr, "read", slow_read)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(engine.generate(_request(image, deadline=deadline)))
    assert engine.stats().aborted == before + 1
