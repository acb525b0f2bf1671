"""LoadController: turns load signals into the graph's degradation level (DESIGN.md §2).

VLM pool replicas sample where the GPUs are (NVML, engine queue and KV cache, CPU)
and report; Ingress replicas report the requests inside the graph. Every
``period_s`` the controller folds the fresh reports into one sample and steps the
pure :class:`~serve_app.load_policy.LoadPolicy`. Replicas learn the level from the
answer to their report (or :meth:`LoadController.state`) and cache it locally.
Thresholds, hysteresis, the levels table, ``force_level`` and ``enabled`` are
``user_config``: ``serve deploy`` changes them live, without a replica restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from ray import serve
from ray.serve import metrics

from serve_app.config import ControllerUserConfig
from serve_app.degradation import LevelState
from serve_app.load_policy import Decision, LoadPolicy, LoadSample
from serve_app.load_signals import aggregate_reports
from serve_app.replica_context import replica_tag
from serve_app.request_context import configure_logging

logger = logging.getLogger(__name__)

ReporterKind = Literal["vlm", "ingress"]


@dataclass(frozen=True)
class _Report:
    at: float
    signals: dict[str, float]
    capacity: int


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05},
    user_config=ControllerUserConfig().model_dump(mode="json"),
)
class LoadController:
    """Serve wrapper around :class:`serve_app.load_policy.LoadPolicy`; exactly one replica."""

    async def __init__(self) -> None:  # type: ignore[misc]
        configure_logging()
        self._config = ControllerUserConfig()
        self._policy = LoadPolicy(self._config)
        self._reports: dict[ReporterKind, dict[str, _Report]] = {"vlm": {}, "ingress": {}}
        self._decision: Decision | None = None
        self._signals: dict[str, float] = {}
        self._admit: int | None = None
        self._state = LevelState.initial(self._config)
        self._timeline: deque[tuple[float, int, float]] = deque(maxlen=600)
        self._level_gauge = metrics.Gauge(
            "memeserve_degradation_level", description="Current degradation level (0-3)."
        )
        self._load_gauge = metrics.Gauge(
            "memeserve_load", description="Largest normalised load signal (1.0 = 100 %)."
        )
        self._replica = replica_tag()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` live; the current level is kept, its row refreshed."""
        self._config = ControllerUserConfig.model_validate(user_config)
        self._policy.reconfigure(self._config)
        self._publish(self._state.level, self._state.changed_at)
        logger.info(
            "controller config applied: enabled=%s force_level=%s period_s=%s",
            self._config.enabled,
            self._config.force_level,
            self._config.period_s,
        )

    async def _run(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:
                logger.exception("load controller tick failed")
            await asyncio.sleep(self._config.period_s)

    def _fresh(self, kind: ReporterKind, now: float) -> list[_Report]:
        reports = self._reports[kind]
        for source in [s for s, r in reports.items() if now - r.at > self._config.stale_after_s]:
            del reports[source]
        return list(reports.values())

    def _tick(self) -> None:
        now = time.monotonic()
        vlm = self._fresh("vlm", now)
        ingress = self._fresh("ingress", now)
        capacity = sum(r.capacity for r in vlm)
        # Requests refused while shedding are demand too: counting them keeps the level
        # up while the overload lasts instead of hiding it behind the refusals.
        waiting = sum(
            r.signals.get("graph_in_flight", 0.0) + r.signals.get("refused", 0.0) for r in ingress
        )
        self._signals = aggregate_reports(
            [r.signals for r in vlm], graph_in_flight=int(waiting), pool_capacity=capacity
        )
        self._admit = max(1, capacity // max(1, len(ingress))) if capacity else None
        decision = self._policy.step(LoadSample(at=now, signals=self._signals))
        self._decision = decision
        if decision.changed:
            logger.warning(
                "degradation level %d -> %d: %s", decision.previous, decision.level, decision.reason
            )
        self._publish(decision.level, time.time() if decision.changed else self._state.changed_at)
        self._timeline.append((time.time(), decision.level, round(decision.load, 4)))
        self._level_gauge.set(decision.level)
        self._load_gauge.set(decision.load)

    def _publish(self, level: int, changed_at: float | None) -> None:
        self._state = LevelState(
            level=level,
            row=self._config.level(level),
            period_s=self._config.period_s,
            changed_at=changed_at,
            admit=self._admit,
            draining=self._config.draining,
        )

    def report(
        self, source: str, kind: ReporterKind, signals: dict[str, float], capacity: int = 0
    ) -> LevelState:
        """Take one replica's raw signals; answer with the current level."""
        self._reports[kind][source] = _Report(time.monotonic(), dict(signals), capacity)
        return self._state

    def state(self) -> LevelState:
        """The current level and its row (replicas cache it)."""
        return self._state

    def status(self) -> dict[str, Any]:
        """Level, signals, time in level and transitions for /v1/status."""
        now_mono, now_wall = time.monotonic(), time.time()
        decision = self._decision
        loads = decision.loads if decision else {}
        row = self._state.row
        since = self._policy.since
        return {
            "level": self._state.level,
            "name": row.name,
            "route": row.route,
            "admit_per_ingress": self._state.admit if row.route == "reject" else None,
            "max_visual_tokens": row.max_visual_tokens,
            "max_context_chars": row.max_context_chars,
            "max_output_tokens": row.max_output_tokens,
            "controller": (
                "forced"
                if self._config.force_level is not None
                else ("on" if self._config.enabled else "off")
            ),
            "force_level": self._config.force_level,
            "draining": self._config.draining,
            "graph_in_flight": self._graph_in_flight(),
            "load": round(decision.load, 4) if decision else None,
            "dominant": decision.dominant if decision else None,
            "reason": decision.reason if decision else None,
            "signals": {name: round(value, 4) for name, value in self._signals.items()},
            "loads": {name: round(value, 4) for name, value in loads.items()},
            "reporters": {kind: len(reports) for kind, reports in self._reports.items()},
            "time_in_level_s": round(now_mono - since, 2) if since is not None else None,
            "transitions": [
                {
                    "at": round(now_wall - (now_mono - t.at), 3),
                    "from": t.from_level,
                    "to": t.to_level,
                    "reason": t.reason,
                }
                for t in self._policy.transitions[-20:]
            ],
            "period_s": self._config.period_s,
            "replica": self._replica,
        }

    def _graph_in_flight(self) -> int:
        """Requests inside the engine path across every ingress with a fresh report."""
        fresh_after = time.monotonic() - self._config.stale_after_s
        return sum(
            int(report.signals.get("graph_in_flight", 0))
            for report in self._reports["ingress"].values()
            if report.at >= fresh_after
        )

    def timeline(self, since: float = 0.0) -> list[tuple[float, int, float]]:
        """(wall time, level, load) of each sample after ``since`` (load reports poll it)."""
        return [entry for entry in self._timeline if entry[0] > since]
