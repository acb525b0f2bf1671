"""A VLM pool replica's engine work without Serve: the level it hears applies to requests."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from serve_app.config.models import ControllerUserConfig, EngineArgs
from serve_app.engines.base import EngineRequest
from serve_app.errors import ServiceUnavailable
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
    reports: list[tuple[dict[str, float], int, dict[str, Any]]] = []

    async def report(
        signals: dict[str, float], capacity: int, engine: dict[str, Any]
    ) -> LevelState:
        reports.append((signals, capacity, engine))
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
    ((signals, capacity, engine),) = reports
    assert capacity == 4 and signals["engine_in_flight"] == 0.5
    # The engine figures /v1/status shows when the replica is too busy to be asked.
    assert engine["kind"] == "lite" and engine["replica"] == "replica-1" and "waiting" in engine


def test_autoscaling_stats_carry_the_replica_engine_and_level_figures() -> None:
    from serve_app.load.autoscaling import (
        CAPACITY,
        ENGINE_WAITING,
        LEVEL,
        ONGOING,
        REFUSED,
        ReplicaFigures,
    )

    async def report(
        signals: dict[str, float], capacity: int, engine: dict[str, Any]
    ) -> LevelState:
        return LevelState(level=3, row=TABLE.level(3), period_s=1.0, refused=4)

    async def scenario() -> dict[str, float]:
        pool = EnginePool(EngineArgs(kind="lite"), report, source="replica-1", capacity=4)
        pool.ongoing = 3
        await pool.levels.refresh()
        return pool.autoscaling_stats()

    stats = asyncio.run(scenario())
    # The lite engine has no queue of its own and no KV cache: those are left out.
    assert stats == {ONGOING: 3.0, CAPACITY: 4.0, LEVEL: 3.0, REFUSED: 4.0}
    assert ENGINE_WAITING not in stats
    assert ReplicaFigures.from_metrics(stats).waiting is None


def test_the_snapshot_reports_an_unusable_engine_instead_of_raising() -> None:
    async def report(
        signals: dict[str, float], capacity: int, engine: dict[str, Any]
    ) -> LevelState:
        return LevelState.initial()

    pool = EnginePool(EngineArgs(kind="lite"), report, source="replica-1", capacity=4)

    def dead() -> None:
        raise ServiceUnavailable("engine is dead", retry_after_s=5)

    pool.engine.check_health = dead  # type: ignore[method-assign]
    snapshot = pool.snapshot()
    assert snapshot["ready"] is False and snapshot["error"] == "engine is dead"
    with pytest.raises(ServiceUnavailable):
        pool.info()
