"""LoadController: the graph's one degradation level (DESIGN.md §2), as a Serve deployment.

The logic is :class:`serve_app.load.controller.Controller`; this replica runs its ticks
every ``period_s``, publishes the level and load gauges, and takes ``user_config`` live
(``serve deploy`` changes thresholds, levels, ``force_level`` and ``enabled`` without a
replica restart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve import metrics

from serve_app.config.models import ControllerUserConfig
from serve_app.load.controller import Controller, ReporterKind
from serve_app.load.degradation import LevelState
from serve_app.observability.logs import configure_logging
from serve_app.observability.replica import replica_tag

logger = logging.getLogger(__name__)


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05},
    user_config=ControllerUserConfig().model_dump(mode="json"),
    # Every replica reports every period: access-log lines for those calls would bury
    # the console (thousands an hour); its level changes are logged on their own.
    logging_config={"enable_access_log": False},
)
class LoadController:
    """Serve wrapper around :class:`serve_app.load.controller.Controller`; exactly one replica."""

    async def __init__(self) -> None:  # type: ignore[misc]
        configure_logging()
        self._controller = Controller(replica_tag())
        self._level_gauge = metrics.Gauge(
            "memeserve_degradation_level", description="Current degradation level (0-3)."
        )
        self._load_gauge = metrics.Gauge(
            "memeserve_load", description="Largest normalised load signal (1.0 = 100 %)."
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` live; the current level is kept, its row refreshed."""
        config = ControllerUserConfig.model_validate(user_config)
        self._controller.reconfigure(config)
        logger.info(
            "controller config applied: enabled=%s force_level=%s period_s=%s",
            config.enabled,
            config.force_level,
            config.period_s,
        )

    async def _run(self) -> None:
        while True:
            try:
                decision = self._controller.tick()
                self._level_gauge.set(decision.level)
                self._load_gauge.set(decision.load)
            except Exception:
                logger.exception("load controller tick failed")
            await asyncio.sleep(self._controller.config.period_s)

    def report(
        self,
        source: str,
        kind: ReporterKind,
        signals: dict[str, float],
        capacity: int = 0,
        engine: dict[str, Any] | None = None,
    ) -> LevelState:
        """Take one replica's raw signals (and engine figures); answer with the current level."""
        return self._controller.report(source, kind, signals, capacity, engine)

    def engine(self) -> dict[str, Any] | None:
        """The last-reported VLM replica's engine figures for /v1/status (None: none fresh)."""
        return self._controller.engine()

    def state(self) -> LevelState:
        """The current level and its row (replicas cache it)."""
        return self._controller.state()

    def status(self) -> dict[str, Any]:
        """Level, signals, time in level and transitions for /v1/status."""
        return self._controller.status()
