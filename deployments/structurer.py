"""Structurer: model text → validated analysis, risk tier, output filter, stored result."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config.models import StructurerUserConfig
from serve_app.engines import EngineOutput
from serve_app.library.store import StoreKey
from serve_app.observability.logs import configure_logging, set_request_id
from serve_app.observability.tracing import stage
from serve_app.understanding import structuring
from serve_app.understanding.structuring import StructureContext, StructuredAnswer

logger = logging.getLogger(__name__)


@serve.deployment(
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.1},
)
class Structurer:
    """Serve wrapper around :func:`serve_app.understanding.structuring.structure`."""

    def __init__(self, store: DeploymentHandle) -> None:
        configure_logging()
        self._store = store
        self._config = StructurerUserConfig()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` live (risk thresholds, explanation cap); strict."""
        self._config = StructurerUserConfig.model_validate(user_config)
        logger.info("structurer config applied: %s", self._config.model_dump())

    async def structure(
        self, output: EngineOutput, context: StructureContext, store_key: StoreKey | None
    ) -> StructuredAnswer:
        """Build the analysis for ``output`` and store it in the library under ``store_key``."""
        set_request_id(context.request_id)
        with stage("structure", {"request_id": context.request_id}) as span:
            started = time.perf_counter()
            structured = structuring.structure(output, context, self._config)
            analysis = structured.analysis
            analysis.meta.timings_ms.structure = round((time.perf_counter() - started) * 1000.0, 2)
            result = analysis.model_dump(mode="json")
            warnings = analysis.meta.warnings
            stored = store_key is not None and structured.from_model
            span.set_attributes(
                {
                    "memeserve.emotion": analysis.emotion,
                    "memeserve.intent": analysis.intent,
                    "memeserve.risk": analysis.risk.level,
                    "memeserve.warnings": ",".join(warnings),
                    "memeserve.stored": stored,
                }
            )
            if stored:
                stored = await self._store.store.remote(
                    store_key, result, analysis.meta.degradation_level
                )
        return StructuredAnswer(result, stored)
