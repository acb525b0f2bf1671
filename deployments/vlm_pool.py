"""VLM pool: each replica owns one engine behind one interface (Serve wrapper).

The work is :class:`serve_app.pipeline.engine_pool.EnginePool`'s (the level in force,
the lite fallback, this replica's load signals); this wrapper adds Serve's batching,
the engine span and the token metric.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config.models import AppArgs
from serve_app.engines import EngineOutput, EngineRequest
from serve_app.load.degradation import LevelState
from serve_app.observability.logs import configure_logging, set_request_id
from serve_app.observability.metrics import count_tokens
from serve_app.observability.replica import LOCAL, current_replica
from serve_app.observability.tracing import annotate, stage
from serve_app.pipeline.engine_pool import EnginePool

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


def _annotate_request(request: EngineRequest) -> None:
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


def _annotate_output(output: EngineOutput) -> EngineOutput:
    count_tokens(output.engine, output.prompt_tokens, output.output_tokens)
    annotate(
        {
            "memeserve.engine": output.engine,
            "memeserve.model": output.model,
            "memeserve.tokens.prompt": output.prompt_tokens,
            "memeserve.tokens.output": output.output_tokens,
        }
    )
    return output


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
        args = AppArgs.model_validate(app_args).engine
        self._controller = controller
        source, capacity = _replica_identity()
        self._pool = EnginePool(args, self._report, source, capacity)
        batcher: Any = self._generate_batch  # Serve's batch wrapper carries these setters
        batcher.set_max_batch_size(args.transformers.max_batch_size)
        batcher.set_batch_wait_timeout_s(args.transformers.batch_wait_timeout_s)
        await self._pool.start()

    async def _report(
        self, signals: dict[str, float], capacity: int, engine: dict[str, Any]
    ) -> LevelState:
        state: LevelState = await self._controller.report.remote(
            self._pool.source, "vlm", signals, capacity, engine
        )
        return state

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Model text for one prepared meme (batched with others where the engine can)."""
        set_request_id(request.request_id)
        pool = self._pool
        pool.ongoing += 1
        try:
            with stage("engine", {"request_id": request.request_id}):
                engine, request = await pool.engine_for(request)
                _annotate_request(request)
                if engine is not pool.engine or not engine.supports_batching:
                    output = await engine.generate(request)
                else:
                    result = await self._generate_batch(request)
                    if isinstance(result, BaseException):
                        raise result
                    output = result
                return pool.served(_annotate_output(output), request)
        finally:
            pool.ongoing -= 1

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        return await self._pool.engine.generate_batch(requests)

    async def stream(self, request: EngineRequest) -> AsyncIterator[str | dict[str, Any]]:
        """First a header (level, explanation cap, engine), then text deltas.

        Call with ``handle.options(stream=True)``.
        """
        set_request_id(request.request_id)
        pool = self._pool
        pool.ongoing += 1
        try:
            with stage("engine", {"request_id": request.request_id, "memeserve.stream": True}):
                engine, request = await pool.engine_for(request)
                _annotate_request(request)
                annotate({"memeserve.engine": engine.name, "memeserve.model": engine.model})
                yield pool.stream_header(engine, request)
                async for delta in engine.stream(request):
                    yield delta
        finally:
            pool.ongoing -= 1

    def info(self) -> dict[str, Any]:
        """Engine kind, model, load figures and signals, for /readyz and /v1/status."""
        return self._pool.info()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics (called only where the deployment
        autoscales): the figures the VLM pool's policy scales on."""
        return self._pool.autoscaling_stats()

    def check_health(self) -> None:
        """Serve's periodic health check: an unusable engine restarts the replica."""
        self._pool.engine.check_health()

    async def __del__(self) -> None:
        await self._pool.shutdown()
