"""The load controller's state: replicas' reports folded into one sample, the policy stepped.

VLM pool replicas sample where the GPUs are (NVML, engine queue and KV cache, CPU)
and report; Ingress replicas report the requests inside the graph. Every
``period_s`` :meth:`Controller.tick` folds the fresh reports into one sample and steps
the pure :class:`~serve_app.load.policy.LoadPolicy`. Replicas learn the level from the
answer to their report (or :meth:`Controller.state`) and cache it locally. The
LoadController deployment (``deployments/load_controller.py``) runs the ticks and
publishes the gauges.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.config.models import ControllerUserConfig
from serve_app.load.degradation import LevelState
from serve_app.load.policy import Decision, LoadPolicy, LoadSample
from serve_app.load.signals import aggregate_reports

logger = logging.getLogger(__name__)

ReporterKind = Literal["vlm", "ingress"]


@dataclass(frozen=True)
class _Report:
    at: float
    signals: dict[str, float]
    capacity: int
    engine: dict[str, Any] | None = None


class Controller:
    """One graph's degradation level, from its replicas' reports; not thread-safe."""

    def __init__(self, replica: str, config: ControllerUserConfig | None = None) -> None:
        self.config = config or ControllerUserConfig()
        self.replica = replica
        self._policy = LoadPolicy(self.config)
        self._reports: dict[ReporterKind, dict[str, _Report]] = {"vlm": {}, "ingress": {}}
        self._decision: Decision | None = None
        self._signals: dict[str, float] = {}
        self._admit: int | None = None
        self._refused = 0.0
        self._state = LevelState.initial(self.config)
        # Transitions are timed on the monotonic clock; one fixed offset turns them into
        # wall time, so a transition shows the same "at" in every status call.
        self._wall_minus_mono = time.time() - time.monotonic()

    def reconfigure(self, config: ControllerUserConfig) -> None:
        """Apply ``config`` live; the current level is kept, its row refreshed."""
        self.config = config
        self._policy.reconfigure(config)
        self._publish(self._state.level, self._state.changed_at)

    def _fresh(self, kind: ReporterKind, now: float) -> list[_Report]:
        reports = self._reports[kind]
        for source in [s for s, r in reports.items() if now - r.at > self.config.stale_after_s]:
            del reports[source]
        return list(reports.values())

    def tick(self, now: float | None = None) -> Decision:
        """Fold the fresh reports into one sample and step the policy (every ``period_s``)."""
        now = time.monotonic() if now is None else now
        vlm = self._fresh("vlm", now)
        ingress = self._fresh("ingress", now)
        capacity = sum(r.capacity for r in vlm)
        # Requests refused while shedding are demand too: counting them keeps the level
        # up while the overload lasts instead of hiding it behind the refusals.
        waiting = sum(
            r.signals.get("graph_in_flight", 0.0)
            # As requests in flight where the ingress measured it (admission on): a count
            # per report would weigh more or less with period_s.
            + r.signals.get("refused_in_flight", r.signals.get("refused", 0.0))
            for r in ingress
        )
        self._signals = aggregate_reports(
            [r.signals for r in vlm], graph_in_flight=int(waiting), pool_capacity=capacity
        )
        self._admit = max(1, capacity // max(1, len(ingress))) if capacity else None
        self._refused = sum(r.signals.get("refused", 0.0) for r in ingress)
        decision = self._policy.step(LoadSample(at=now, signals=self._signals))
        self._decision = decision
        if decision.changed:
            logger.warning(
                "degradation level %d -> %d: %s", decision.previous, decision.level, decision.reason
            )
        self._publish(decision.level, time.time() if decision.changed else self._state.changed_at)
        return decision

    def _publish(self, level: int, changed_at: float | None) -> None:
        self._state = LevelState(
            level=level,
            row=self.config.level(level),
            period_s=self.config.period_s,
            changed_at=changed_at,
            admit=self._admit,
            draining=self.config.draining,
            admission=(
                self.config.admission
                if self.config.enabled and self.config.admission.enabled
                else None
            ),
            refused=self._refused,
            idle_report_s=self.config.idle_report_s,
        )

    def report(
        self,
        source: str,
        kind: ReporterKind,
        signals: dict[str, float],
        capacity: int = 0,
        engine: dict[str, Any] | None = None,
    ) -> LevelState:
        """Take one replica's raw signals (and a VLM replica's engine figures, for
        ``/v1/status``); answer with the current level."""
        self._reports[kind][source] = _Report(time.monotonic(), dict(signals), capacity, engine)
        return self._state

    def engine(self, now: float | None = None) -> dict[str, Any] | None:
        """The engine figures of the VLM replica that reported last (fresh reports only),
        with their age and how many replicas report; None when none has.

        ``/v1/status`` reads them here rather than from the pool itself: a pool replica
        holding ``max_ongoing_requests`` queues a status call behind the very work it
        would report, so under load its answer would come late or not at all.
        """
        now = time.monotonic() if now is None else now
        reports = [r for r in self._fresh("vlm", now) if r.engine is not None]
        if not reports:
            return None
        latest = max(reports, key=lambda r: r.at)
        return {
            **(latest.engine or {}),
            "reported_s_ago": round(now - latest.at, 3),
            "replicas_reporting": len(reports),
        }

    def state(self) -> LevelState:
        """The current level and its row (replicas cache it)."""
        return self._state

    def status(self) -> dict[str, Any]:
        """Level, signals, time in level and transitions for /v1/status."""
        now_mono = time.monotonic()
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
                if self.config.force_level is not None
                else ("on" if self.config.enabled else "off")
            ),
            "force_level": self.config.force_level,
            "admission": "on" if self._state.admission is not None else "off",
            "draining": self.config.draining,
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
                    "at": round(t.at + self._wall_minus_mono, 3),
                    "from": t.from_level,
                    "to": t.to_level,
                    "reason": t.reason,
                }
                for t in self._policy.transitions[-20:]
            ],
            "period_s": self.config.period_s,
            "replica": self.replica,
        }

    def _graph_in_flight(self) -> int:
        """Requests inside the engine path across every ingress with a fresh report."""
        fresh_after = time.monotonic() - self.config.stale_after_s
        return sum(
            int(report.signals.get("graph_in_flight", 0))
            for report in self._reports["ingress"].values()
            if report.at >= fresh_after
        )
