"""The GLM engines on a real GPU: vLLM (production) and transformers in half precision."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from loadtest.corpus import MemeSpec, draw_meme
from serve_app.config.models import EngineArgs
from serve_app.engines import EngineRequest, create_engine
from serve_app.engines.transformers_engine import TransformersEngine
from serve_app.errors import DeadlineExceeded
from serve_app.media.imaging import resize_to_budget
from serve_app.understanding.prompts import FIELD_ORDER
from tests.gpu.conftest import needs_cuda, needs_vllm


def meme_request(request_id: str, max_output_tokens: int = 64, budget: int = 256) -> EngineRequest:
    image = draw_meme(MemeSpec(template=4, top="你说得对，但是", bottom="急了"))
    return EngineRequest(
        request_id=request_id,
        image=np.asarray(resize_to_budget(image, budget)),
        context="笑死",
        max_output_tokens=max_output_tokens,
        max_visual_tokens=budget,
        explanation_max_chars=60,
    )


@needs_cuda
def test_transformers_engine_runs_in_half_precision_on_cuda(gpu_model_dir: Path) -> None:
    import torch

    args = EngineArgs.model_validate(
        {"kind": "transformers", "model_path": str(gpu_model_dir), "transformers": {}}
    )
    engine = create_engine(args)
    assert isinstance(engine, TransformersEngine)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    async def scenario() -> None:
        await engine.start()
        assert engine.device == "cuda" and engine._model.dtype == expected
        output = await engine.generate(meme_request("cuda-1", max_output_tokens=16))
        assert output.output_tokens is not None and 0 < output.output_tokens <= 16
        await engine.shutdown()

    asyncio.run(scenario())


@needs_vllm
def test_vllm_engine_answers_schema_valid_json_and_aborts(gpu_model_dir: Path) -> None:
    args = EngineArgs.model_validate(
        {
            "kind": "vllm",
            "model_path": str(gpu_model_dir),
            "max_visual_tokens": 256,
            "vllm": {
                "engine_kwargs": {
                    "max_model_len": 4096,
                    "gpu_memory_utilization": 0.5,
                    "max_num_seqs": 4,
                    "enforce_eager": True,
                }
            },
        }
    )
    engine = create_engine(args)

    async def scenario() -> None:
        await engine.start()
        engine.check_health()
        output = await engine.generate(meme_request("vllm-1", max_output_tokens=256))
        # Grammar-constrained: even random weights produce the schema's JSON.
        answer = json.loads(output.text)
        assert list(answer) == list(FIELD_ORDER)
        deltas = [d async for d in engine.stream(meme_request("vllm-2", max_output_tokens=64))]
        assert deltas
        late = meme_request("vllm-3")
        late = EngineRequest(**{**late.__dict__, "deadline": time.time() + 0.001})
        with pytest.raises(DeadlineExceeded):
            await engine.generate(late)
        stats = engine.stats()
        assert stats.kv_cache_usage is not None and stats.in_flight == 0
        await engine.shutdown()

    asyncio.run(scenario())
