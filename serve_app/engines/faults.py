"""Fault injection for drills: an engine that wraps another and fails or slows on purpose.

``engine.faults`` in the application args (:class:`~serve_app.config.models.FaultArgs`) makes
:func:`~serve_app.engines.create_engine` wrap the configured engine in a
:class:`FaultInjectingEngine`. Each generate/stream call (each item of a batch) first
waits ``delay_ms`` — with ``asyncio.sleep``, so a deadline or a departed client still
cancels it; with ``slots``, at most that many calls of a replica are in the delay at once
and the others wait for a place, reported as the engine's ``waiting`` queue (a simulated
engine with a batch limit, for the autoscaling bench) — then, with probability
``error_rate`` drawn from a seeded RNG, raises an :class:`~serve_app.errors.EngineError`
whose message says it was injected instead of calling the wrapped engine. Everything
else delegates. Drills only: leave ``engine.faults`` null in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Iterator

from serve_app.config.models import FaultArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats
from serve_app.errors import EngineError

logger = logging.getLogger(__name__)


class FaultInjectingEngine(Engine):
    """An :class:`Engine` that adds latency and injected errors in front of another.

    Build it with :meth:`wrap`, which also takes over the wrapped engine's ``name`` and
    ``supports_batching`` (class attributes of the interface); constructed directly,
    it reports the name ``faults``.
    """

    name = "faults"

    def __init__(self, inner: Engine, faults: FaultArgs) -> None:
        self._inner = inner
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._delayed = 0
        self._queued = 0
        self._slots = asyncio.Semaphore(faults.slots) if faults.slots is not None else None
        self.injected_errors = 0
        """Calls (batch items included) that raised an injected error so far."""

    @classmethod
    def wrap(cls, inner: Engine, faults: FaultArgs) -> FaultInjectingEngine:
        """``inner`` behind ``faults``, under ``inner``'s name and batching ability."""
        return _subclass_for(type(inner))(inner, faults)

    @property
    def inner(self) -> Engine:
        """The wrapped engine."""
        return self._inner

    @property
    def model(self) -> str:
        return self._inner.model

    async def start(self) -> None:
        logger.warning(
            "fault injection on for engine %s: error_rate=%g delay_ms=%g seed=%d",
            self._inner.name,
            self._faults.error_rate,
            self._faults.delay_ms,
            self._faults.seed,
        )
        await self._inner.start()

    def check_health(self) -> None:
        self._inner.check_health()

    async def shutdown(self) -> None:
        await self._inner.shutdown()

    def stats(self) -> EngineStats:
        """The wrapped engine's figures; requests held in the injected delay count in flight,
        those waiting for one of its ``slots`` as waiting."""
        stats = self._inner.stats()
        waiting = stats.waiting
        if self._slots is not None:
            waiting = (waiting or 0) + self._queued
        return EngineStats(
            in_flight=stats.in_flight + self._delayed,
            waiting=waiting,
            kv_cache_usage=stats.kv_cache_usage,
            aborted=stats.aborted,
        )

    async def generate(self, request: EngineRequest) -> EngineOutput:
        await self._delay()
        self._maybe_fail(request)
        return await self._inner.generate(request)

    async def generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        """One delay for the batch, then a fault draw per item; the rest go to the engine."""
        await self._delay()
        results: list[EngineOutput | BaseException | None] = []
        passed: list[EngineRequest] = []
        for request in requests:
            try:
                self._maybe_fail(request)
            except EngineError as exc:
                results.append(exc)
            else:
                results.append(None)
                passed.append(request)
        inner_results = iter(await self._inner.generate_batch(passed) if passed else [])
        return [next(inner_results) if result is None else result for result in results]

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        await self._delay()
        self._maybe_fail(request)
        async for delta in self._inner.stream(request):
            yield delta

    async def _delay(self) -> None:
        if self._faults.delay_ms <= 0:
            return
        if self._slots is None:
            with self._held():
                await asyncio.sleep(self._faults.delay_ms / 1000.0)
            return
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            with self._held():
                await asyncio.sleep(self._faults.delay_ms / 1000.0)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self._delayed += 1
        try:
            yield
        finally:
            self._delayed -= 1

    def _maybe_fail(self, request: EngineRequest) -> None:
        rate = self._faults.error_rate
        # Draw even at rate 0 or 1, so a seed gives the same sequence whatever the rate.
        if self._rng.random() < rate:
            self.injected_errors += 1
            logger.warning("injected engine error for request %s", request.request_id)
            raise EngineError(
                f"injected fault: engine error (fault drill, engine.faults.error_rate={rate:g})"
            )


@functools.cache
def _subclass_for(inner_cls: type[Engine]) -> type[FaultInjectingEngine]:
    """A FaultInjectingEngine subclass carrying ``inner_cls``'s class attributes."""
    return type(
        f"FaultInjecting{inner_cls.__name__}",
        (FaultInjectingEngine,),
        {
            "name": inner_cls.name,
            "supports_batching": inner_cls.supports_batching,
            "__module__": __name__,
        },
    )
