"""Fault injection for drills: the wrapper engine and its strict config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np
import pytest
from pydantic import ValidationError

from serve_app.config.models import AppArgs, EngineArgs, FaultArgs
from serve_app.engines import Engine, EngineOutput, EngineRequest, EngineStats, create_engine
from serve_app.engines.faults import FaultInjectingEngine
from serve_app.errors import EngineError, ServiceUnavailable


class EchoEngine(Engine):
    """A minimal real engine: answers with the request id, counts what it was asked."""

    name = "echo"

    def __init__(self) -> None:
        self.started = False
        self.shutdowns = 0
        self.calls: list[str] = []
        self.batches: list[list[str]] = []

    @property
    def model(self) -> str:
        return "echo@1"

    async def start(self) -> None:
        self.started = True

    def check_health(self) -> None:
        if not self.started:
            raise ServiceUnavailable("echo engine is not started")

    async def shutdown(self) -> None:
        self.shutdowns += 1
        self.started = False

    def stats(self) -> EngineStats:
        return EngineStats(in_flight=7, waiting=3, kv_cache_usage=0.25, aborted=2)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        self.check_health()
        self.calls.append(request.request_id)
        return EngineOutput(
            text=request.request_id, engine=self.name, model=self.model, elapsed_ms=0
        )

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        self.check_health()
        self.calls.append(request.request_id)
        for part in ("a", "b", "c"):
            yield part


class BatchingEchoEngine(EchoEngine):
    """The echo engine with its own batch call."""

    name = "batching-echo"
    supports_batching: ClassVar[bool] = True

    async def generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        self.batches.append([request.request_id for request in requests])
        return [await self.generate(request) for request in requests]


def _request(request_id: str = "r") -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        image=np.zeros((56, 56, 3), dtype=np.uint8),
        context=None,
        max_output_tokens=64,
    )


def _wrapped(
    inner: EchoEngine | None = None, **faults: float
) -> tuple[FaultInjectingEngine, EchoEngine]:
    inner = inner or EchoEngine()
    engine = FaultInjectingEngine.wrap(inner, FaultArgs.model_validate(faults))
    asyncio.run(engine.start())
    return engine, inner


def test_error_rate_one_always_raises_an_injected_engine_error() -> None:
    engine, inner = _wrapped(error_rate=1.0)
    for number in range(50):
        with pytest.raises(EngineError, match="injected") as info:
            asyncio.run(engine.generate(_request(f"r{number}")))
        assert info.value.status == 502 and info.value.code == "engine_error"
    assert inner.calls == [] and engine.injected_errors == 50


def test_error_rate_zero_never_raises_and_delegates() -> None:
    engine, inner = _wrapped(error_rate=0.0)
    outputs = [asyncio.run(engine.generate(_request(f"r{n}"))) for n in range(50)]
    assert [output.text for output in outputs] == [f"r{n}" for n in range(50)]
    assert len(inner.calls) == 50 and engine.injected_errors == 0


async def _failures(engine: FaultInjectingEngine, calls: int) -> list[bool]:
    failed = []
    for number in range(calls):
        try:
            await engine.generate(_request(str(number)))
        except EngineError:
            failed.append(True)
        else:
            failed.append(False)
    return failed


def test_a_seeded_rate_is_near_expected_and_reproducible() -> None:
    first, _ = _wrapped(error_rate=0.3, seed=11)
    again, _ = _wrapped(error_rate=0.3, seed=11)
    other, _ = _wrapped(error_rate=0.3, seed=12)
    pattern = asyncio.run(_failures(first, 2000))
    assert 0.26 < sum(pattern) / len(pattern) < 0.34
    assert asyncio.run(_failures(again, 2000)) == pattern
    assert asyncio.run(_failures(other, 2000)) != pattern


def test_the_delay_comes_before_the_engine() -> None:
    engine, inner = _wrapped(delay_ms=80)
    started = time.perf_counter()
    asyncio.run(engine.generate(_request()))
    assert time.perf_counter() - started >= 0.08 and inner.calls == ["r"]


def test_the_delay_is_cancellable_and_counts_in_flight() -> None:
    engine, inner = _wrapped(delay_ms=600_000)

    async def scenario() -> float:
        task = asyncio.create_task(engine.generate(_request()))
        while engine.stats().in_flight == 7:  # the inner engine's own figure
            await asyncio.sleep(0)
        assert engine.stats().in_flight == 8
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0
    assert inner.calls == [] and engine.stats().in_flight == 7


def test_slots_queue_the_delay_and_report_the_queue_as_waiting() -> None:
    # A simulated engine that serves one request at a time (the autoscaling bench's).
    engine, inner = _wrapped(delay_ms=600_000, slots=1)

    async def scenario() -> None:
        tasks = [asyncio.create_task(engine.generate(_request(f"r{n}"))) for n in range(3)]
        while engine.stats().waiting != 3 + 2:  # the inner engine's 3, two for a slot
            await asyncio.sleep(0)
        assert engine.stats().in_flight == 7 + 1
        tasks[0].cancel()  # the one in the slot leaves: the next one takes it
        while engine.stats().waiting != 3 + 1:
            await asyncio.sleep(0)
        assert engine.stats().in_flight == 7 + 1
        tasks[2].cancel()  # a waiting one leaves the queue
        while engine.stats().waiting != 3:
            await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert inner.calls == [] and engine.stats() == inner.stats()
    # Without slots the delay holds every request at once and the queue is the engine's.
    free, _ = _wrapped(delay_ms=1)
    assert free.stats().waiting == 3


def test_stream_fails_before_any_delta_or_delegates() -> None:
    async def collect(engine: FaultInjectingEngine) -> list[str]:
        return [delta async for delta in engine.stream(_request())]

    failing, failing_inner = _wrapped(error_rate=1.0)
    with pytest.raises(EngineError, match="injected"):
        asyncio.run(collect(failing))
    assert failing_inner.calls == []
    passing, _ = _wrapped(error_rate=0.0)
    assert asyncio.run(collect(passing)) == ["a", "b", "c"]


def test_batch_items_fail_on_their_own_and_keep_their_order() -> None:
    engine, inner = _wrapped(BatchingEchoEngine(), error_rate=0.5, seed=3)
    assert engine.name == "batching-echo" and engine.supports_batching
    requests = [_request(f"r{n}") for n in range(40)]
    results = asyncio.run(engine.generate_batch(requests))
    assert len(results) == 40
    failed = [isinstance(result, EngineError) for result in results]
    assert 0 < sum(failed) < 40 and sum(failed) == engine.injected_errors
    passed = [f"r{n}" for n, bad in enumerate(failed) if not bad]
    assert inner.batches == [passed]
    for number, result in enumerate(results):
        assert isinstance(result, EngineError) or (
            isinstance(result, EngineOutput) and result.text == f"r{number}"
        )


def test_a_batch_that_fails_entirely_never_reaches_the_engine() -> None:
    engine, inner = _wrapped(BatchingEchoEngine(), error_rate=1.0)
    results = asyncio.run(engine.generate_batch([_request("a"), _request("b")]))
    assert all(isinstance(result, EngineError) for result in results)
    assert inner.batches == []


def test_lifecycle_stats_and_model_delegate() -> None:
    inner = EchoEngine()
    engine = FaultInjectingEngine.wrap(inner, FaultArgs())
    assert engine.inner is inner and engine.name == "echo" and not engine.supports_batching
    assert engine.model == "echo@1"
    with pytest.raises(ServiceUnavailable):
        engine.check_health()
    asyncio.run(engine.start())
    engine.check_health()
    assert engine.stats() == EngineStats(in_flight=7, waiting=3, kv_cache_usage=0.25, aborted=2)
    asyncio.run(engine.shutdown())
    asyncio.run(engine.shutdown())
    assert inner.shutdowns == 2
    with pytest.raises(ServiceUnavailable):
        engine.check_health()


def test_create_engine_wraps_the_real_lite_engine_only_when_faults_are_set() -> None:
    assert not isinstance(create_engine(EngineArgs()), FaultInjectingEngine)
    engine = create_engine(EngineArgs(faults=FaultArgs(error_rate=0.0, delay_ms=1)))
    assert isinstance(engine, FaultInjectingEngine)
    assert engine.name == "lite" and engine.model == "memeserve-lite@lite-1"

    async def scenario() -> EngineOutput:
        await engine.start()
        try:
            return await engine.generate(_request("lite"))
        finally:
            await engine.shutdown()

    output = asyncio.run(scenario())
    assert output.engine == "lite" and output.model == "memeserve-lite@lite-1"
    failing = create_engine(EngineArgs(faults=FaultArgs(error_rate=1.0)))
    asyncio.run(failing.start())
    with pytest.raises(EngineError, match="injected"):
        asyncio.run(failing.generate(_request()))
    asyncio.run(failing.shutdown())


def test_fault_config_is_strict_and_described() -> None:
    assert AppArgs().engine.faults is None
    assert EngineArgs.model_fields["faults"].description
    for name, field in FaultArgs.model_fields.items():
        assert field.description, f"FaultArgs.{name} has no description"
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate({"engine": {"faults": {"error_rate": 0.5, "eror_rate": 1}}})
    (error,) = info.value.errors()
    assert error["loc"] == ("engine", "faults", "eror_rate")
    assert error["type"] == "extra_forbidden"
    for bad in ({"error_rate": 1.5}, {"error_rate": -0.1}, {"delay_ms": -1}, {"slots": 0}):
        with pytest.raises(ValidationError):
            FaultArgs.model_validate(bad)
    parsed = AppArgs.model_validate({"engine": {"faults": {"error_rate": 1, "delay_ms": 300}}})
    assert parsed.engine.faults == FaultArgs(error_rate=1.0, delay_ms=300.0, seed=0)
