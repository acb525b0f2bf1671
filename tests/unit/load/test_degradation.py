"""Applying a level to a request, refusals, and the replicas' local copy of the level."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve_app.config.models import ControllerUserConfig, LevelArgs
from serve_app.engines.base import EngineRequest
from serve_app.errors import ServiceUnavailable, TooManyRequests
from serve_app.load.degradation import (
    LevelFollower,
    LevelState,
    image_budget,
    shed_error,
    tighten,
)
from serve_app.media.imaging import visual_tokens

TABLE = ControllerUserConfig()


def request_at(
    level: int, *, size: tuple[int, int] = (896, 896), context: str = ""
) -> EngineRequest:
    row = TABLE.level(level)
    return EngineRequest(
        request_id="r",
        image=np.full((size[1], size[0], 3), 128, dtype=np.uint8),
        context=context or None,
        max_output_tokens=row.max_output_tokens,
        max_visual_tokens=row.max_visual_tokens,
        explanation_max_chars=row.explanation_max_chars,
        level=level,
        route=row.route,
    )


def test_a_higher_level_shrinks_every_budget() -> None:
    request = request_at(0, context="弹幕" * 400)
    row = TABLE.level(2)
    served = tighten(request, row, engine_cap=1024)
    height, width = served.image.shape[:2]
    assert visual_tokens(width, height) <= row.max_visual_tokens < visual_tokens(896, 896)
    assert served.context is not None and len(served.context) == row.max_context_chars
    assert served.max_output_tokens == row.max_output_tokens
    assert served.explanation_max_chars == row.explanation_max_chars
    assert (served.level, served.route, served.max_visual_tokens) == (2, "engine", 64)


def test_a_lower_or_equal_level_changes_nothing() -> None:
    request = request_at(2, size=(224, 224), context="短")
    assert tighten(request, TABLE.level(0), engine_cap=1024) is request
    assert tighten(request, TABLE.level(2), engine_cap=1024) is request


def test_the_top_level_carries_its_route() -> None:
    served = tighten(request_at(1), TABLE.level(3), engine_cap=1024)
    assert served.route == "lite" and served.level == 3


def test_the_engine_cap_bounds_any_level_budget() -> None:
    row = TABLE.level(0).model_copy(update={"max_visual_tokens": 4096})
    assert image_budget(row, engine_cap=1024) == 1024
    assert image_budget(TABLE.level(1), engine_cap=1024) == 256


@pytest.mark.parametrize(("status", "kind"), [(503, ServiceUnavailable), (429, TooManyRequests)])
def test_a_rejecting_level_refuses_with_its_status_and_retry_after(
    status: int, kind: type[Exception]
) -> None:
    row = LevelArgs.model_validate(
        {
            **TABLE.level(3).model_dump(),
            "route": "reject",
            "reject_status": status,
            "retry_after_s": 7,
        }
    )
    error = shed_error(row)
    assert isinstance(error, kind)
    assert error.status == status and error.retry_after_s == 7
    assert "level 3" in error.message


def test_the_follower_keeps_the_last_state_when_the_controller_fails() -> None:
    states = [LevelState(level=2, row=TABLE.level(2), period_s=0.01)]

    async def fetch() -> LevelState:
        if states:
            return states.pop()
        raise ConnectionError("controller restarting")

    async def scenario() -> None:
        follower = LevelFollower(fetch)
        assert follower.state.level == 0 and follower.age_s is None
        assert (await follower.refresh()).level == 2
        assert (await follower.refresh()).level == 2  # the failure keeps level 2
        assert follower.failures == 1 and follower.state.row.name == "strained"

    asyncio.run(scenario())


def test_the_refresh_failure_log_starts_again_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second outage is logged at once, however many failures an earlier one had."""
    answers: list[bool] = [False] * 12 + [True] + [False]

    async def fetch() -> LevelState:
        if answers.pop(0):
            return LevelState(level=1, row=TABLE.level(1), period_s=0.01)
        raise ConnectionError("controller restarting")

    async def scenario() -> None:
        follower = LevelFollower(fetch)
        for _ in range(14):
            await follower.refresh()
        assert follower.failures == 13

    with caplog.at_level("INFO", logger="serve_app.load.degradation"):
        asyncio.run(scenario())
    failed = [r.getMessage() for r in caplog.records if "refresh failed" in r.getMessage()]
    assert failed == [
        "level refresh failed (1 times in a row): controller restarting",
        "level refresh failed (10 times in a row): controller restarting",
        "level refresh failed (1 times in a row): controller restarting",
    ]
    assert any("works again after 12 failures" in r.getMessage() for r in caplog.records)


def test_the_follower_refreshes_in_the_background_until_stopped() -> None:
    calls = 0

    async def fetch() -> LevelState:
        nonlocal calls
        calls += 1
        level = min(calls, 3)
        return LevelState(level=level, row=TABLE.level(level), period_s=0.001)

    async def scenario() -> None:
        follower = LevelFollower(fetch)
        follower.start()
        follower.start()  # idempotent: still one task
        while follower.state.level < 3:
            await asyncio.sleep(0.001)
        await follower.stop()
        seen = calls
        await asyncio.sleep(0.01)
        assert calls == seen  # no refresh after stop

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_an_idle_replica_refreshes_every_idle_report_s_and_at_once_when_work_comes() -> None:
    """Idle and last heard idle: every ``idle_report_s``; with work, or on the first tick
    after the work is gone (the report that says so), at every tick."""
    state = LevelState(level=0, row=TABLE.level(0), period_s=0.25, idle_report_s=1.0)
    busy = False
    fetched = 0

    async def fetch() -> LevelState:
        nonlocal fetched
        fetched += 1
        return state

    async def scenario() -> None:
        nonlocal busy
        follower = LevelFollower(fetch, state, idle=lambda: not busy)
        assert follower.due(0.0)  # never tried: at once
        await follower.refresh()
        tried = follower._tried
        assert tried is not None
        assert not follower.due(tried + 0.25) and not follower.due(tried + 0.75)
        assert follower.due(tried + 1.0)  # the idle heartbeat
        busy = True
        assert follower.due(tried + 0.25)  # work in flight: every tick
        await follower.refresh()  # reported while busy
        busy = False
        assert follower.due(follower._tried + 0.25)  # one more: the work is gone
        await follower.refresh()
        assert not follower.due(follower._tried + 0.25)

    asyncio.run(scenario())
    assert fetched == 3


def test_a_follower_without_an_idle_test_or_an_idle_period_refreshes_every_tick() -> None:
    every_tick = LevelState(level=0, row=TABLE.level(0), period_s=0.25)  # idle_report_s None

    async def fetch() -> LevelState:
        return every_tick

    async def scenario() -> None:
        for follower in (
            LevelFollower(fetch, every_tick, idle=lambda: True),
            LevelFollower(fetch, LevelState.initial()),
        ):
            await follower.refresh()
            assert follower.due(time.monotonic())

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"period_s": 0.5, "idle_report_s": 0.25}, "at least period_s"),
        ({"stale_after_s": 2.0, "idle_report_s": 1.0}, "under half of stale_after_s"),
    ],
)
def test_the_idle_report_period_must_keep_an_idle_replica_counted(
    values: dict[str, float], message: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ControllerUserConfig.model_validate(values)
    assert ControllerUserConfig().idle_report_s == LevelState.initial().idle_report_s == 1.0
