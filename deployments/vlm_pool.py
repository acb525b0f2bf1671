"""VLM pool: each replica owns one engine (lite, transformers or vllm) behind one interface."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.config import AppArgs
from serve_app.engines import EngineOutput, EngineRequest, create_engine
from serve_app.request_context import configure_logging, set_request_id

logger = logging.getLogger(__name__)


@serve.deployment(
    max_ongoing_requests=4,
    health_check_period_s=10,
    ray_actor_options={"num_cpus": 0.5},
)
class VLMPool:
    """Serve wrapper: the engine is built cheaply, then started before traffic arrives."""

    # Serve awaits an async constructor before the replica takes traffic.
    async def __init__(self, app_args: dict[str, Any]) -> None:  # type: ignore[misc]
        configure_logging()
        args = AppArgs.model_validate(app_args)
        self._args = args.engine
        self._engine = create_engine(self._args, args.max_visual_tokens)
        batcher: Any = self._generate_batch  # Serve's batch wrapper carries these setters
        batcher.set_max_batch_size(self._args.transformers.max_batch_size)
        batcher.set_batch_wait_timeout_s(self._args.transformers.batch_wait_timeout_s)
        await self._engine.start()
        logger.info("engine %s started: %s", self._engine.name, self._engine.model)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Model text for one prepared meme (batched with others where the engine can)."""
        set_request_id(request.request_id)
        if not self._engine.supports_batching:
            return await self._engine.generate(request)
        result = await self._generate_batch(request)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        return await self._engine.generate_batch(requests)

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        """Text deltas as the engine produces them (call with ``handle.options(stream=True)``)."""
        set_request_id(request.request_id)
        async for delta in self._engine.stream(request):
            yield delta

    def info(self) -> dict[str, Any]:
        """Engine kind, model and load figures, for /readyz and /v1/status."""
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
        }

    def check_health(self) -> None:
        """Serve's periodic health check: an unusable engine restarts the replica."""
        self._engine.check_health()

    async def __del__(self) -> None:
        await self._engine.shutdown()
