"""Preprocessor: validate, decode and resize uploads; answer exact repeats from the store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppArgs
from serve_app.preprocessing import CacheHit, Prepared, prepare
from serve_app.request_context import configure_logging, set_request_id

logger = logging.getLogger(__name__)


@serve.deployment(
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.25},
)
class Preprocessor:
    """Serve wrapper around :func:`serve_app.preprocessing.prepare`."""

    def __init__(self, args: dict[str, Any], store: DeploymentHandle) -> None:
        configure_logging()
        self._args = AppArgs.model_validate(args)
        self._store = store

    async def prepare(
        self, data: bytes, text: str | None, request_id: str, deadline: float | None
    ) -> Prepared | CacheHit:
        """Decode and key the upload; a stored analysis short-circuits the engine."""
        set_request_id(request_id)
        # Decoding and resizing are CPU work (Pillow releases the GIL): keep the loop free.
        prepared = await asyncio.to_thread(
            prepare,
            data,
            text,
            request_id=request_id,
            args=self._args,
            level=0,
            deadline=deadline,
        )
        if self._args.cache.enabled:
            stored = await self._store.get.remote(prepared.key)
            if stored is not None:
                analysis, level = stored
                logger.info("exact cache hit %s", prepared.key[:16])
                return CacheHit(
                    analysis=analysis, level=level, preprocess_ms=prepared.preprocess_ms
                )
        return prepared
