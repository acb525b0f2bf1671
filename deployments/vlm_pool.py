"""VLM pool: each replica owns one engine (lite, transformers or vllm) behind one interface.

Each replica also samples its own load where its GPU is (NVML, the engine's queue and
KV cache, CPU), reports it to the LoadController, and applies the level it hears
back to every request: image budget, context, output cap, and at the top level the
lite engine where the level routes there (:mod:`serve_app.degradation`; refusals are
the ingress's admission control).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppArgs, EngineArgs
from serve_app.degradation import LevelFollower, LevelState, tighten
from serve_app.engines import Engine, EngineOutput, EngineRequest, create_engine
from serve_app.load_signals import CpuSampler, GpuSampler, replica_signals
from serve_app.replica_context import LOCAL, current_replica
from serve_app.request_context import configure_logging, set_request_id
from serve_app.service_metrics import count_tokens
from serve_app.tracing import annotate, stage

logger = logging.getLogger(__name__)

_DEFAULT_MAX_ONGOING = 4


def _replica_identity() -> tuple[str, int]:
    """(replica id, max_ongoing_requests) of the running replica; defaults outside Serve."""
    context = current_replica()
    if context is None:
        return LOCAL, _DEFAULT_MAX_ONGOING
    config = getattr(context, "_deployment_config", None)
    capacity = getattr(config, "max_ongoing_requests", None) or _DEFAULT_MAX_ONGOING
    return context.replica_tag, int(capacity)


@serve.deployment(
    max_ongoing_requests=4,
    health_check_period_s=10,
    ray_actor_options={"num_cpus": 0.5},
)
class VLMPool:
    """Serve wrapper: the engine is built cheaply, then started before traffic arrives."""

    # Serve awaits an async constructor before the replica takes traffic.
    async def __init__(  # type: ignore[misc]
        self, app_args: dict[str, Any], controller: DeploymentHandle
    ) -> None:
        configure_logging()
        args = AppArgs.model_validate(app_args)
        self._args = args.engine
        self._engine = create_engine(self._args)
        self._lite: Engine | None = self._engine if self._engine.name == "lite" else None
        self._lite_starting = asyncio.Lock()
        batcher: Any = self._generate_batch  # Serve's batch wrapper carries these setters
        batcher.set_max_batch_size(self._args.transformers.max_batch_size)
        batcher.set_batch_wait_timeout_s(self._args.transformers.batch_wait_timeout_s)
        await self._engine.start()
        logger.info("engine %s started: %s", self._engine.name, self._engine.model)
        self._controller = controller
        self._source, self._capacity = _replica_identity()
        self._ongoing = 0
        self._gpu = GpuSampler()
        self._cpu = CpuSampler()
        self._signals: dict[str, float] = {}
        self._gpu_state = "not sampled"
        self._last_request: dict[str, Any] | None = None
        self._levels = LevelFollower(self._report)
        self._levels.start()

    async def _report(self) -> LevelState:
        """Sample this replica's signals and report them; the answer is the current level."""
        gpu = self._gpu.sample()
        self._gpu_state = gpu.state
        stats = self._engine.stats()
        self._signals = replica_signals(
            gpu=gpu,
            cpu=self._cpu.sample(),
            in_flight=self._ongoing,
            max_ongoing=self._capacity,
            waiting=stats.waiting,
            kv_cache_usage=stats.kv_cache_usage,
        )
        state: LevelState = await self._controller.report.remote(
            self._source, "vlm", self._signals, self._capacity
        )
        return state

    async def _engine_for(self, request: EngineRequest) -> tuple[Engine, EngineRequest]:
        """The request at the level in force, and the engine its route names."""
        row = self._levels.state.row
        if row.level > request.level:
            request = tighten(request, row, self._args.max_visual_tokens)
        height, width = request.image.shape[:2]
        self._last_request = {
            "level": request.level,
            "route": request.route,
            "image": [int(width), int(height)],
            "max_visual_tokens": request.max_visual_tokens,
            "max_output_tokens": request.max_output_tokens,
            "context_chars": len(request.context or ""),
        }
        if request.route != "lite" or self._engine.name == "lite":
            return self._engine, request
        async with self._lite_starting:  # one fallback engine, however many ask at once
            if self._lite is None:
                from serve_app.engines.lite import LiteEngine

                # Its own name and version: answers (and library entries) say what made them.
                lite_args = EngineArgs(
                    kind="lite", ocr=self._args.ocr, lexicon_path=self._args.lexicon_path
                )
                lite = LiteEngine(lite_args)
                await lite.start()
                self._lite = lite
                logger.warning("lite fallback engine started for the top degradation level")
        return self._lite, request

    @staticmethod
    def _served(output: EngineOutput, request: EngineRequest) -> EngineOutput:
        height, width = request.image.shape[:2]
        count_tokens(output.engine, output.prompt_tokens, output.output_tokens)
        annotate(
            {
                "memeserve.engine": output.engine,
                "memeserve.model": output.model,
                "memeserve.tokens.prompt": output.prompt_tokens,
                "memeserve.tokens.output": output.output_tokens,
            }
        )
        return dataclasses.replace(
            output,
            level=request.level,
            explanation_max_chars=request.explanation_max_chars,
            analysed_size=(int(width), int(height)),
        )

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Model text for one prepared meme (batched with others where the engine can)."""
        set_request_id(request.request_id)
        self._ongoing += 1
        try:
            with stage("engine", {"request_id": request.request_id}):
                engine, request = await self._engine_for(request)
                self._annotate(request)
                if engine is not self._engine or not engine.supports_batching:
                    return self._served(await engine.generate(request), request)
                result = await self._generate_batch(request)
                if isinstance(result, BaseException):
                    raise result
                return self._served(result, request)
        finally:
            self._ongoing -= 1

    @staticmethod
    def _annotate(request: EngineRequest) -> None:
        height, width = request.image.shape[:2]
        annotate(
            {
                "memeserve.level": request.level,
                "memeserve.route": request.route,
                "memeserve.image.analysed_width": int(width),
                "memeserve.image.analysed_height": int(height),
                "memeserve.max_visual_tokens": request.max_visual_tokens,
                "memeserve.max_output_tokens": request.max_output_tokens,
            }
        )

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        return await self._engine.generate_batch(requests)

    async def stream(self, request: EngineRequest) -> AsyncIterator[str | dict[str, Any]]:
        """First a header (level, explanation cap, engine), then text deltas.

        Call with ``handle.options(stream=True)``.
        """
        set_request_id(request.request_id)
        self._ongoing += 1
        try:
            with stage("engine", {"request_id": request.request_id, "memeserve.stream": True}):
                engine, request = await self._engine_for(request)
                self._annotate(request)
                annotate({"memeserve.engine": engine.name, "memeserve.model": engine.model})
                height, width = request.image.shape[:2]
                yield {
                    "level": request.level,
                    "explanation_max_chars": request.explanation_max_chars,
                    "engine": engine.name,
                    "model": engine.model,
                    "analysed_size": (int(width), int(height)),
                }
                async for delta in engine.stream(request):
                    yield delta
        finally:
            self._ongoing -= 1

    def info(self) -> dict[str, Any]:
        """Engine kind, model, load figures and signals, for /readyz and /v1/status."""
        self._engine.check_health()
        stats = self._engine.stats()
        return {
            "kind": self._engine.name,
            "model": self._engine.model,
            "ready": True,
            "in_flight": stats.in_flight,
            "waiting": stats.waiting,
            "kv_cache_usage": stats.kv_cache_usage,
            "aborted": stats.aborted,
            "replica": self._source,
            "level": self._levels.state.level,
            "gpu": self._gpu_state,
            "signals": {name: round(value, 4) for name, value in self._signals.items()},
            "last_request": self._last_request,
        }

    def check_health(self) -> None:
        """Serve's periodic health check: an unusable engine restarts the replica."""
        self._engine.check_health()

    async def __del__(self) -> None:
        await self._levels.stop()
        self._gpu.close()
        await self._engine.shutdown()
        if self._lite is not None and self._lite is not self._engine:
            await self._lite.shutdown()
