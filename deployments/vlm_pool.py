"""VLM pool: each replica owns one engine (lite, transformers or vllm) behind one interface."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from serve_app.config import EngineArgs
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
    async def __init__(self, engine_args: dict[str, Any]) -> None:  # type: ignore[misc]
        configure_logging()
        self._args = EngineArgs.model_validate(engine_args)
        self._engine = create_engine(self._args)
        await self._engine.start()
        logger.info("engine %s started: %s", self._engine.name, self._engine.model)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Model text for one prepared meme."""
        set_request_id(request.request_id)
        return await self._engine.generate(request)

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
        }

    def check_health(self) -> None:
        """Serve's periodic health check: an unusable engine restarts the replica."""
        self._engine.check_health()

    async def __del__(self) -> None:
        await self._engine.shutdown()
