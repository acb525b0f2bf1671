"""A VLM pool replica's engine work without Serve: the level it hears applies to requests."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.config.models import ControllerUserConfig, EngineArgs
from serve_app.engines.base import EngineRequest
from serve_app.load.degradation import LevelState
from serve_app.pipeline.engine_pool import EnginePool

TABLE = ControllerUserConfig()


def level_zero_request() -> EngineRequest:
    row = TABLE.level(0)
    return EngineRequest(
        request_id="r",
        image=np.full((1200, 1200, 3), 128, dtype=np.uint8),
        context="上下文" * 200,
        max_output_tokens=row.max_output_tokens,
        max_visual_tokens=row.max_visual_tokens,
        explanation_max_chars=row.explanation_max_chars,
        level=0,
        route=row.route,
    )


def test_the_level_heard_from_the_controller_tightens_each_request() -> None:
    reports: list[tuple[dict[str, float], int]] = []

    async def report(signals: dict[str, float], capacity: int) -> LevelState:
        reports.append((signals, capacity))
        return LevelState(level=2, row=TABLE.level(2), period_s=1.0)

    async def scenario() -> None:
        pool = EnginePool(EngineArgs(kind="lite"), report, source="replica-1", capacity=4)
        pool.ongoing = 2
        await pool.levels.refresh()
        engine, request = await pool.engine_for(level_zero_request())
        assert engine is pool.engine and request.level == 2
        assert request.max_visual_tokens == TABLE.level(2).max_visual_tokens
        assert len(request.context or "") <= TABLE.level(2).max_context_chars
        header = pool.stream_header(engine, request)
        assert header["level"] == 2 and header["engine"] == "lite"
        await pool.levels.stop()

    asyncio.run(scenario())
    ((signals, capacity),) = reports
    assert capacity == 4 and signals["engine_in_flight"] == 0.5
