"""The transformers engine on the tiny random GLM-4.xV checkpoint, without Ray.

Everything here runs the real processor, chat template and ``generate`` of
transformers; only the weights are random.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loadtest.corpus import MemeSpec, draw_meme
from serve_app.config.models import EngineArgs, StructurerUserConfig
from serve_app.engines import EngineRequest, create_engine
from serve_app.engines.transformers_engine import (
    TransformersEngine,
    _DeltaStreamer,
    load_processor,
    resolve_device_dtype,
)
from serve_app.errors import DeadlineExceeded, ServiceUnavailable
from serve_app.media.imaging import resize_to_budget, visual_tokens
from serve_app.understanding.analysis import ImageInfo
from serve_app.understanding.structuring import StructureContext, build_analysis


def engine_args(model_dir: Path, **transformers: object) -> EngineArgs:
    return EngineArgs.model_validate(
        {
            "kind": "transformers",
            "model_id": "tiny",
            "model_version": "t1",
            "model_path": str(model_dir),
            "transformers": {"device": "cpu", **transformers},
        }
    )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(tiny_glm4v_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[TransformersEngine]:
    engine = create_engine(engine_args(tiny_glm4v_dir))
    assert isinstance(engine, TransformersEngine)
    loop.run_until_complete(engine.start())
    yield engine
    loop.run_until_complete(engine.shutdown())


def meme(max_visual_tokens: int = 64, template: int = 3) -> np.ndarray:
    image = draw_meme(MemeSpec(template=template, top="你说得对，但是", bottom="破防了"))
    return np.asarray(resize_to_budget(image, max_visual_tokens))


def request(
    image: np.ndarray | None = None,
    *,
    budget: int = 64,
    max_output_tokens: int = 12,
    context: str | None = "笑死",
    deadline: float | None = None,
    request_id: str = "r1",
) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        image=meme(budget) if image is None else image,
        context=context,
        max_output_tokens=max_output_tokens,
        max_visual_tokens=budget,
        deadline=deadline,
    )


def test_processor_is_glm_processor_with_the_checkpoint_template(tiny_glm4v_dir: Path) -> None:
    from transformers import Glm4vProcessor

    processor = load_processor(tiny_glm4v_dir)
    assert isinstance(processor, Glm4vProcessor)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
        enable_thinking=False,
    )
    assert prompt.startswith("[gMASK]<sop>")
    assert "<|begin_of_image|><|image|><|end_of_image|>hi" in prompt
    assert prompt.endswith("<|assistant|>\n<think></think>\n")


def test_cpu_settings_resolve_to_float32() -> None:
    import torch

    assert resolve_device_dtype("cpu", "auto") == ("cpu", torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16") == ("cpu", torch.bfloat16)


def test_not_started_is_unavailable(tiny_glm4v_dir: Path) -> None:
    engine = TransformersEngine(engine_args(tiny_glm4v_dir))
    with pytest.raises(ServiceUnavailable):
        engine.check_health()


def test_missing_checkpoint_fails_start_clearly(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    engine = TransformersEngine(engine_args(tmp_path / "absent"))
    with pytest.raises(ServiceUnavailable, match=r"config\.json"):
        loop.run_until_complete(engine.start())


def test_generate_reports_tokens_within_budget(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    output = loop.run_until_complete(engine.generate(request(max_output_tokens=10)))
    assert output.engine == "transformers" and output.model == "tiny@t1"
    assert isinstance(output.text, str)
    assert output.output_tokens is not None and 0 < output.output_tokens <= 10
    assert output.prompt_tokens is not None and output.elapsed_ms > 0
    assert engine.stats().in_flight == 0 and engine.stats().waiting == 0


def test_the_image_budget_reaches_the_model(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """Prompt length grows by exactly the visual tokens of the resized image."""
    small, large = meme(16), meme(256)
    expected = visual_tokens(large.shape[1], large.shape[0]) - visual_tokens(
        small.shape[1], small.shape[0]
    )
    assert expected > 0
    out_small = loop.run_until_complete(engine.generate(request(small, budget=16)))
    out_large = loop.run_until_complete(engine.generate(request(large, budget=256)))
    assert out_large.prompt_tokens is not None and out_small.prompt_tokens is not None
    assert out_large.prompt_tokens - out_small.prompt_tokens == expected


def test_context_text_reaches_the_prompt(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    image = meme(64)
    bare = loop.run_until_complete(engine.generate(request(image, context=None)))
    with_context = loop.run_until_complete(
        engine.generate(request(image, context="这图也太真实了吧，笑死我了"))
    )
    assert with_context.prompt_tokens is not None and bare.prompt_tokens is not None
    assert with_context.prompt_tokens > bare.prompt_tokens


def test_batch_keeps_order_and_each_output_budget(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    requests = [
        request(meme(64, template=1), max_output_tokens=4, request_id="a"),
        request(meme(16, template=2), budget=16, max_output_tokens=16, request_id="b"),
        request(meme(64, template=3), max_output_tokens=8, deadline=time.time() - 1),
    ]
    results = loop.run_until_complete(engine.generate_batch(requests))
    assert len(results) == 3
    first, second, late = results
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert first.output_tokens is not None and first.output_tokens <= 4
    assert second.output_tokens is not None and second.output_tokens <= 16
    assert isinstance(late, DeadlineExceeded)


def test_stream_concatenates_to_generate(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    req = request(max_output_tokens=16)

    async def collect(stream: AsyncIterator[str]) -> list[str]:
        return [delta async for delta in stream]

    deltas = loop.run_until_complete(collect(engine.stream(req)))
    whole = loop.run_until_complete(engine.generate(req))
    assert "".join(deltas) == whole.text
    assert len(deltas) >= 1


def test_passed_deadline_is_refused(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    with pytest.raises(DeadlineExceeded):
        loop.run_until_complete(engine.generate(request(deadline=time.time() - 0.1)))


def test_cancelled_stream_stops_generation_and_frees_the_worker(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = engine._model
    stop_ids = set(model.generation_config.eos_token_id)
    lengths: list[tuple[int, bool]] = []
    original = model.generate

    def recording_generate(**kwargs: object) -> object:
        sequences = original(**kwargs)
        produced = sequences.shape[1] - kwargs["input_ids"].shape[1]  # type: ignore[attr-defined]
        lengths.append((produced, int(sequences[0, -1]) in stop_ids))
        return sequences

    monkeypatch.setattr(model, "generate", recording_generate)

    async def scenario() -> None:
        stream = engine.stream(request(max_output_tokens=4000))
        assert isinstance(await stream.__anext__(), str)
        await stream.aclose()  # the client went away
        output = await asyncio.wait_for(engine.generate(request(max_output_tokens=3)), 120)
        assert output.output_tokens is not None and output.output_tokens <= 3

    loop.run_until_complete(scenario())
    (stream_length, stopped_by_eos), _ = lengths
    # Neither the budget nor an end-of-text token ended the stream's generation.
    assert stream_length < 4000 and not stopped_by_eos
    assert engine.stats().in_flight == 0 and engine.stats().waiting == 0


def test_gibberish_becomes_a_valid_low_confidence_analysis(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    output = loop.run_until_complete(engine.generate(request(max_output_tokens=24)))
    context = StructureContext(
        request_id="r1",
        degradation_level=0,
        image=ImageInfo(width=600, height=600, frames=1),
        preprocess_ms=1.0,
        explanation_max_chars=300,
    )
    analysis = build_analysis(output, context, StructurerUserConfig())
    assert analysis.meta.engine == "transformers"
    assert analysis.confidence == 0.0
    assert "unparseable_model_output" in analysis.meta.warnings
    assert analysis.risk.action == "pass"


class _ByteTokenizer:
    """Decodes ids as UTF-8 bytes: enough to exercise the streamer's hold-back rule."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamer_skips_the_prompt_and_holds_back_partial_characters() -> None:
    import torch

    sent: list[str | None] = []
    streamer = _DeltaStreamer(_ByteTokenizer(), prompt_length=2, emit=sent.append)
    streamer.put(torch.tensor([[65, 66]]))  # the prompt
    for byte in "笑a".encode():
        streamer.put(torch.tensor([byte]))
    streamer.end()
    assert sent == ["笑", "a", None]


def test_image_from_any_size_is_accepted(
    engine: TransformersEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """An image the Preprocessor did not resize is still bounded by the budget."""
    raw = np.asarray(Image.new("RGB", (300, 200), (200, 30, 30)))
    output = loop.run_until_complete(engine.generate(request(raw, budget=64)))
    assert output.output_tokens is not None
