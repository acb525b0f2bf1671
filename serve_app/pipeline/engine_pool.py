"""One VLM pool replica's engine work: the level in force, the lite fallback, its signals.

Each replica owns one engine (lite, transformers or vllm) behind one interface, samples
its own load where its GPU is (NVML, the engine's queue and KV cache, CPU), reports it
to the LoadController, and applies the level it hears back to every request: image
budget, context, output cap, and at the top level the lite engine where the level
routes there (:mod:`serve_app.load.degradation`; refusals are the ingress's admission
control). The VLMPool deployment (``deployments/vlm_pool.py``) wraps this in Serve
(batching, tracing, metrics).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.config.models import EngineArgs
from serve_app.engines import Engine, EngineOutput, EngineRequest, create_engine
from serve_app.load.autoscaling import replica_stats
from serve_app.load.degradation import LevelFollower, LevelState, tighten
from serve_app.load.signals import CpuSampler, GpuSampler, replica_signals

logger = logging.getLogger(__name__)

Reporter = Callable[[dict[str, float], int, dict[str, Any]], Awaitable[LevelState]]
"""Sends this replica's signals, capacity and engine figures (:meth:`EnginePool.snapshot`)
to the controller; answers the level."""


def request_facts(request: EngineRequest) -> dict[str, Any]:
    """What a request was given at its level: for ``/v1/status`` and span attributes."""
    height, width = request.image.shape[:2]
    return {
        "level": request.level,
        "route": request.route,
        "image": [int(width), int(height)],
        "max_visual_tokens": request.max_visual_tokens,
        "max_output_tokens": request.max_output_tokens,
        "context_chars": len(request.context or ""),
    }


class EnginePool:
    """The engine of one replica, its level follower and its lite fallback."""

    def __init__(self, args: EngineArgs, report: Reporter, source: str, capacity: int) -> None:
        self.args = args
        self.engine = create_engine(args)
        self.source = source
        self.capacity = capacity
        self.ongoing = 0
        self._report_to = report
        self._lite: Engine | None = self.engine if self.engine.name == "lite" else None
        self._lite_starting = asyncio.Lock()
        self._gpu = GpuSampler()
        self._cpu = CpuSampler()
        self._signals: dict[str, float] = {}
        self._gpu_state = "not sampled"
        self._last_request: dict[str, Any] | None = None
        # An idle replica reports every idle_report_s: its figures are not moving.
        self.levels = LevelFollower(self._report, idle=lambda: self.ongoing == 0)

    async def start(self) -> None:
        """Start the engine, then follow the level (before the replica takes traffic)."""
        await self.engine.start()
        logger.info("engine %s started: %s", self.engine.name, self.engine.model)
        self.levels.start()

    async def _report(self) -> LevelState:
        """Sample this replica's signals and report them; the answer is the current level."""
        gpu = self._gpu.sample()
        self._gpu_state = gpu.state
        stats = self.engine.stats()
        self._signals = replica_signals(
            gpu=gpu,
            cpu=self._cpu.sample(),
            in_flight=self.ongoing,
            max_ongoing=self.capacity,
            waiting=stats.waiting,
            kv_cache_usage=stats.kv_cache_usage,
        )
        return await self._report_to(self._signals, self.capacity, self.snapshot())

    async def engine_for(self, request: EngineRequest) -> tuple[Engine, EngineRequest]:
        """The request at the level in force, and the engine its route names."""
        row = self.levels.state.row
        if row.level > request.level:
            request = tighten(request, row, self.args.max_visual_tokens)
        self._last_request = request_facts(request)
        if request.route != "lite" or self.engine.name == "lite":
            return self.engine, request
        async with self._lite_starting:  # one fallback engine, however many ask at once
            if self._lite is None:
                from serve_app.engines.lite import LiteEngine

                # Its own name and version: answers (and library entries) say what made them.
                lite_args = EngineArgs(
                    kind="lite", ocr=self.args.ocr, lexicon_path=self.args.lexicon_path
                )
                lite = LiteEngine(lite_args)
                await lite.start()
                self._lite = lite
                logger.warning("lite fallback engine started for the top degradation level")
        return self._lite, request

    @staticmethod
    def served(output: EngineOutput, request: EngineRequest) -> EngineOutput:
        """``output`` stamped with the level, explanation cap and image size it was made at."""
        height, width = request.image.shape[:2]
        return dataclasses.replace(
            output,
            level=request.level,
            explanation_max_chars=request.explanation_max_chars,
            analysed_size=(int(width), int(height)),
        )

    @staticmethod
    def stream_header(engine: Engine, request: EngineRequest) -> dict[str, Any]:
        """The first item of a stream: how the pool serves it (level, cap, engine, size)."""
        height, width = request.image.shape[:2]
        return {
            "level": request.level,
            "explanation_max_chars": request.explanation_max_chars,
            "engine": engine.name,
            "model": engine.model,
            "analysed_size": (int(width), int(height)),
        }

    def autoscaling_stats(self) -> dict[str, float]:
        """This replica's figures for the VLM pool's autoscaling policy
        (:mod:`serve_app.load.autoscaling`): requests held, capacity, the engine's queue and
        KV cache, the level and refusals last heard from the controller."""
        stats = self.engine.stats()
        state = self.levels.state
        return replica_stats(
            ongoing=self.ongoing,
            capacity=self.capacity,
            waiting=stats.waiting,
            kv_cache_usage=stats.kv_cache_usage,
            level=state.level,
            refused=state.refused,
        )

    def info(self) -> dict[str, Any]:
        """Engine kind, model, load figures and signals, for /readyz and /v1/status;
        raises when the engine is unusable."""
        self.engine.check_health()
        return self._figures()

    def snapshot(self) -> dict[str, Any]:
        """:meth:`info` that never raises: an unusable engine is ``ready: false`` with
        the reason (what the replica reports to the controller every period)."""
        try:
            self.engine.check_health()
        except Exception as exc:
            return {**self._figures(), "ready": False, "error": str(exc)[:200]}
        return self._figures()

    def _figures(self) -> dict[str, Any]:
        stats = self.engine.stats()
        return {
            "kind": self.engine.name,
            "model": self.engine.model,
            "ready": True,
            "in_flight": stats.in_flight,
            "waiting": stats.waiting,
            "kv_cache_usage": stats.kv_cache_usage,
            "aborted": stats.aborted,
            **({"details": stats.details} if stats.details else {}),
            "replica": self.source,
            "level": self.levels.state.level,
            "gpu": self._gpu_state,
            "signals": {name: round(value, 4) for name, value in self._signals.items()},
            "last_request": self._last_request,
        }

    async def shutdown(self) -> None:
        """Stop following the level, release NVML and shut both engines down."""
        await self.levels.stop()
        self._gpu.close()
        await self.engine.shutdown()
        if self._lite is not None and self._lite is not self.engine:
            await self._lite.shutdown()
