"""The VLM pool's autoscaling policy (serve_app.load.autoscaling): pure decisions, the
adapter Serve calls, and Serve 2.60's delays and bounds around it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config.models import (
    VLM_POOL_AUTOSCALING_POLICY,
    ControllerUserConfig,
    PoolAutoscalingArgs,
)
from serve_app.load.autoscaling import (
    CAPACITY,
    ENGINE_WAITING,
    KV_CACHE,
    LEVEL,
    ONGOING,
    REFUSED,
    STATE_KEY,
    PoolEvidence,
    ReplicaFigures,
    VLMPoolAutoscalingPolicy,
    decide,
    evidence_from_context,
    replica_stats,
)
from serve_app.load.controller import Controller

ARGS = PoolAutoscalingArgs()


def replica(
    ongoing: float = 0.0,
    waiting: float | None = None,
    kv: float | None = None,
    level: float = 0.0,
    refused: float = 0.0,
    capacity: float = 4.0,
) -> ReplicaFigures:
    return ReplicaFigures(ongoing, capacity, waiting, kv, level, refused)


def evidence(
    latest: Sequence[ReplicaFigures],
    window: Sequence[ReplicaFigures] | None = None,
    *,
    running: int | None = None,
    target: int | None = None,
    bounds: tuple[int, int] = (1, 4),
    requests: float | None = None,
    target_ongoing: float = 2.0,
) -> PoolEvidence:
    """Evidence where the window agrees with the latest figures unless given."""
    window = latest if window is None else window
    running = len(latest) if running is None else running
    return PoolEvidence(
        running=running,
        target=running if target is None else target,
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        latest=tuple(latest),
        window=tuple(window),
        requests=sum(r.ongoing for r in window) if requests is None else requests,
        target_ongoing_requests=target_ongoing,
    )


# ---------------------------------------------------------------------- the pure decision


def test_an_engine_queue_scales_up_while_ongoing_per_replica_is_still_at_target() -> None:
    # Two replicas hold 2 requests each (Serve's target_ongoing_requests): Serve's rule asks
    # for 2. But each engine runs one and queues one: the pool is short by half.
    busy = evidence([replica(ongoing=2, waiting=1.5), replica(ongoing=2, waiting=1.5)])
    decision = decide(busy, ARGS)
    assert decision.needs["requests"] == pytest.approx(2.0)
    assert decision.replicas == 4 and decision.reason.startswith("queue/")
    # The same figures without a queue: held.
    calm = evidence([replica(ongoing=2, waiting=0), replica(ongoing=2, waiting=0)])
    assert decide(calm, ARGS).replicas == 2


def test_ray_default_policy_holds_on_the_same_figures() -> None:
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
    from ray.serve.config import AutoscalingConfig

    context = FakeContext(
        replicas=["a", "b"], config=AutoscalingConfig(min_replicas=1, max_replicas=4)
    )
    context.total_num_requests = 4.0
    wanted, _ = replica_queue_length_autoscaling_policy(context)  # type: ignore[arg-type]
    assert wanted == pytest.approx(2.0)


def test_a_queue_at_or_below_the_threshold_changes_nothing() -> None:
    pool = evidence([replica(ongoing=2, waiting=1), replica(ongoing=2, waiting=1)])
    assert decide(pool, ARGS).replicas == 2
    assert decide(pool, PoolAutoscalingArgs(waiting_per_replica=0.5)).replicas == 4
    assert decide(pool, PoolAutoscalingArgs(waiting_per_replica=None)).replicas == 2


def test_the_latest_figures_scale_up_before_the_window_mean_does() -> None:
    latest = [replica(ongoing=4, waiting=3)]
    window = [replica(ongoing=1.2, waiting=0.4)]
    decision = decide(evidence(latest, window, requests=1.2), ARGS)
    assert decision.replicas == 4 and decision.reason == "queue/latest"


def test_a_queue_in_the_window_keeps_the_pool_from_shrinking() -> None:
    # Idle right now, but the look-back window still shows the engines queueing.
    latest = [replica(), replica(), replica()]
    window = [replica(ongoing=2, waiting=1.5)] * 3
    assert decide(evidence(latest, window, requests=0), ARGS).replicas == 3


def test_in_flight_against_capacity_scales_up() -> None:
    # 4 of 4 ongoing on each of two replicas, the target being 0.75 x 4 = 3 each: 8 / 3.
    pool = evidence([replica(ongoing=4), replica(ongoing=4)], requests=4)
    decision = decide(pool, ARGS)
    assert decision.reason == "in_flight/latest" and decision.replicas == 3


def test_kv_cache_above_its_target_scales_up() -> None:
    pool = evidence([replica(ongoing=1, kv=0.95), replica(ongoing=1, kv=0.95)])
    decision = decide(pool, ARGS)
    assert decision.needs["kv_cache/latest"] == pytest.approx(2 * 0.95 / 0.85)
    assert decision.replicas == 3
    assert decide(evidence([replica(ongoing=1, kv=0.5)] * 2), ARGS).replicas == 1


@pytest.mark.parametrize(
    ("figures", "args", "wanted"),
    [
        (replica(ongoing=2, refused=3), ARGS, 3),
        (replica(ongoing=2, level=2), ARGS, 3),
        (replica(ongoing=2, level=3), ARGS, 3),
        (replica(ongoing=2, level=1), ARGS, 2),
        (replica(ongoing=2, level=1), PoolAutoscalingArgs(scale_up_level=1), 3),
        (replica(ongoing=2, level=3), PoolAutoscalingArgs(scale_up_level=None), 2),
        (replica(ongoing=2, refused=3), PoolAutoscalingArgs(scale_up_on_refusals=False), 2),
        (replica(ongoing=2, refused=3), PoolAutoscalingArgs(pressure_step=2), 4),
    ],
    ids=[
        "refusals",
        "level-2",
        "level-3",
        "level-1-below-the-knob",
        "level-1-knob",
        "level-ignored",
        "refusals-ignored",
        "two-at-a-time",
    ],
)
def test_refusals_and_the_level_add_replicas(
    figures: ReplicaFigures, args: PoolAutoscalingArgs, wanted: int
) -> None:
    pool = evidence([figures, figures], requests=4)
    assert decide(pool, args).replicas == wanted


def test_pressure_counts_from_the_running_replicas_not_the_target() -> None:
    # One replica is already starting (target 3, 2 running): the level asks for 2 + 1,
    # which the target already is, so nothing more is started until it runs.
    figures = replica(ongoing=2, level=3)
    decision = decide(evidence([figures, figures], target=3, requests=4), ARGS)
    assert decision.replicas == 3 and decision.reason == "hold"


def test_scale_down_is_one_step_at_a_time() -> None:
    idle = [replica()] * 4
    assert decide(evidence(idle, requests=0), ARGS).replicas == 3
    assert decide(evidence(idle, requests=0), PoolAutoscalingArgs(scale_down_step=2)).replicas == 2
    # Only as far as the evidence allows: 5 requests held, target 2 each -> 3.
    held = [replica(ongoing=1.25)] * 4
    assert decide(evidence(held, requests=5), PoolAutoscalingArgs(scale_down_step=3)).replicas == 3


def test_scale_down_waits_for_the_window_to_agree() -> None:
    latest = [replica()] * 3
    window = [replica(ongoing=1.5)] * 3
    assert decide(evidence(latest, window, requests=4.5), ARGS).replicas == 3


def test_the_engines_concurrency_is_learned_when_they_queue_and_kept() -> None:
    # Queueing: 4 held, 3 waiting -> the engine runs 1 at once.
    first = decide(evidence([replica(ongoing=4, waiting=3)]), ARGS)
    assert first.state[STATE_KEY]["concurrency"] == pytest.approx(1.0)
    # No queue now: the remembered figure stays.
    later = decide(evidence([replica(ongoing=1)] * 3), ARGS, first.state)
    assert later.state[STATE_KEY]["concurrency"] == pytest.approx(1.0)
    # A new queue replaces it (vLLM runs more sequences when the images are small).
    again = decide(evidence([replica(ongoing=8, waiting=2)] * 3), ARGS, later.state)
    assert again.state[STATE_KEY]["concurrency"] == pytest.approx(6.0)


def test_the_pool_does_not_shrink_to_where_its_engines_would_queue_again() -> None:
    # Three replicas hold 0.7 requests each, queue-free; the target (4) asks for one.
    # Their engines ran one request at once when they last queued: two would hold
    # 1.05 each, above 0.75 of one, and queue again. The pool stays at three.
    calm = evidence([replica(ongoing=0.7)] * 3, requests=2.1, target_ongoing=4)
    remembered = {STATE_KEY: {"concurrency": 1.0}}
    decision = decide(calm, ARGS, remembered)
    assert decision.replicas == 3 and decision.reason == "hold"
    assert decision.needs["concurrency/window"] == pytest.approx(2.1 / 0.75)
    # Without the memory, or with the rule off, it steps down.
    assert decide(calm, ARGS).replicas == 2
    assert decide(calm, PoolAutoscalingArgs(engine_headroom=None), remembered).replicas == 2
    # The memory never raises the pool on its own: idle replicas still shrink.
    assert decide(evidence([replica()] * 3, requests=0), ARGS, remembered).replicas == 2
    busy = evidence([replica(ongoing=1.5)] * 3, requests=4.5, target_ongoing=4)
    assert decide(busy, ARGS, remembered).replicas == 3


def test_min_and_max_replicas_bound_every_decision() -> None:
    flood = [replica(ongoing=4, waiting=3)] * 4
    assert decide(evidence(flood, bounds=(1, 4)), ARGS).replicas == 4
    assert decide(evidence([replica()] * 2, requests=0, bounds=(2, 4)), ARGS).replicas == 2
    # A capacity-adjusted max below the running count brings it down.
    assert decide(evidence([replica(ongoing=2)] * 3, bounds=(1, 2)), ARGS).replicas == 2


def test_without_any_evidence_the_pool_holds() -> None:
    args = PoolAutoscalingArgs(requests_rule=False)
    decision = decide(evidence([], running=2, target=2, requests=0), args)
    assert decision.replicas == 2 and decision.reason == "no evidence"


def test_replicas_without_a_report_count_as_one_each() -> None:
    # Three running, one reported (queueing: 4 held, 3 waiting -> 4 of itself): 2 + 4.
    pool = evidence([replica(ongoing=4, waiting=3)], running=3, bounds=(1, 8), requests=4)
    assert decide(pool, ARGS).needs["queue/latest"] == pytest.approx(6.0)


def test_the_state_keeps_serve_keys_and_records_the_decision() -> None:
    serve_state = {"__decision_counters": 2, "__decision_timestamp": 10.0}
    decision = decide(evidence([replica(ongoing=4, waiting=3)]), ARGS, serve_state)
    assert decision.state["__decision_counters"] == 2
    assert decision.state[STATE_KEY]["replicas"] == decision.replicas == 4
    assert decision.state[STATE_KEY]["reason"] == "queue/latest"
    assert serve_state == {"__decision_counters": 2, "__decision_timestamp": 10.0}


def test_replica_stats_names_and_optional_figures() -> None:
    stats = replica_stats(
        ongoing=3, capacity=4, waiting=None, kv_cache_usage=None, level=1, refused=0
    )
    assert stats == {ONGOING: 3.0, CAPACITY: 4.0, LEVEL: 1.0, REFUSED: 0.0}
    full = replica_stats(ongoing=3, capacity=4, waiting=2, kv_cache_usage=0.5, level=0, refused=5)
    assert full[ENGINE_WAITING] == 2.0 and full[KV_CACHE] == 0.5
    figures = ReplicaFigures.from_metrics({**full, KV_CACHE: float("nan")})
    assert figures == ReplicaFigures(3.0, 4.0, 2.0, None, 0.0, 5.0)


def test_the_controller_passes_refusals_on_in_the_level_state() -> None:
    controller = Controller("c", ControllerUserConfig())
    controller.report("vlm-1", "vlm", {"engine_in_flight": 1.0}, capacity=4)
    controller.report("ingress-1", "ingress", {"graph_in_flight": 4.0, "refused": 3.0})
    controller.report("ingress-2", "ingress", {"graph_in_flight": 4.0, "refused": 2.0})
    controller.tick()
    assert controller.state().refused == 5.0


def test_knobs_are_strict_and_the_policy_path_is_the_class() -> None:
    with pytest.raises(ValidationError):
        PoolAutoscalingArgs.model_validate({"waiting_per_replicas": 1})
    with pytest.raises(ValidationError):
        VLMPoolAutoscalingPolicy(in_flight_target=1.5)
    for name, spec in PoolAutoscalingArgs.model_fields.items():
        assert spec.description, name
    module, _, attribute = VLM_POOL_AUTOSCALING_POLICY.partition(":")
    assert f"{VLMPoolAutoscalingPolicy.__module__}:{VLMPoolAutoscalingPolicy.__name__}" == (
        f"{module}:{attribute}"
    )


# --------------------------------------------------------------- the adapter Serve calls


@dataclass
class Point:
    timestamp: float
    value: float


@dataclass
class FakeContext:
    """The attributes of Serve 2.60's AutoscalingContext the adapter and Ray's policy read."""

    replicas: list[str]
    config: Any
    current: int | None = None
    target: int | None = None
    total_num_requests: float = 0.0
    total_queued_requests: float = 0.0
    raw_metrics: dict[str, dict[str, list[Point]]] = field(default_factory=dict)
    aggregated_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    policy_state: dict[str, Any] = field(default_factory=dict)
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 4

    @property
    def running_replicas(self) -> list[str]:
        return self.replicas

    @property
    def current_num_replicas(self) -> int:
        return len(self.replicas) if self.current is None else self.current

    @property
    def target_num_replicas(self) -> int:
        return self.current_num_replicas if self.target is None else self.target


@dataclass
class Config:
    target_ongoing_requests: float = 2.0


def test_the_adapter_reads_the_newest_point_and_the_window_of_running_replicas() -> None:
    context = FakeContext(replicas=["a", "b"], config=Config(), total_num_requests=3.0)
    context.raw_metrics = {
        # Out of order on purpose: the newest point is the one with the latest timestamp.
        ONGOING: {"a": [Point(2.0, 4.0), Point(1.0, 1.0)], "b": [Point(2.0, 1.0)]},
        ENGINE_WAITING: {"a": [Point(2.0, 3.0)], "b": [Point(2.0, 0.0)], "gone": [Point(2, 9)]},
        CAPACITY: {"a": [Point(2.0, 4.0)], "b": [Point(2.0, 4.0)]},
    }
    context.aggregated_metrics = {ONGOING: {"a": 2.5, "b": 0.5}, ENGINE_WAITING: {"a": 1.0}}
    pool = evidence_from_context(context)
    assert pool.running == pool.target == 2 and pool.requests == 3.0
    assert [(r.ongoing, r.waiting) for r in pool.latest] == [(4.0, 3.0), (1.0, 0.0)]
    assert [(r.ongoing, r.waiting) for r in pool.window] == [(2.5, 1.0), (0.5, None)]
    assert pool.target_ongoing_requests == 2.0


def test_the_policy_class_answers_replicas_and_state() -> None:
    context = FakeContext(replicas=["a"], config=Config(), total_num_requests=4.0)
    context.raw_metrics = {
        ONGOING: {"a": [Point(1.0, 4.0)]},
        ENGINE_WAITING: {"a": [Point(1.0, 3.0)]},
        CAPACITY: {"a": [Point(1.0, 4.0)]},
    }
    context.policy_state = {"__decision_counters": 1}
    policy = VLMPoolAutoscalingPolicy(waiting_per_replica=0.5)
    replicas, state = policy(context)
    assert replicas == 4 and state["__decision_counters"] == 1
    assert state[STATE_KEY]["reason"] == "queue/latest"


# ------------------------------------------- Serve's delays and bounds around the policy


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Serve's delay logic reads time.time(); this moves it by hand."""
    import ray.serve.autoscaling_policy as serve_policy

    now = [1000.0]
    monkeypatch.setattr(serve_policy.time, "time", lambda: now[0])
    yield now


def serve_wrapped(policy: VLMPoolAutoscalingPolicy) -> Any:
    """Our policy as Serve 2.60 runs a custom one: wrapped with its delays and factors
    (ray.serve._private.autoscaling_state applies this wrapper to every policy)."""
    from ray.serve.autoscaling_policy import _apply_autoscaling_config

    return _apply_autoscaling_config(policy)


def serve_context(
    config: Any, running: int, target: int, ongoing: float, waiting: float, state: dict[str, Any]
) -> Any:
    from ray.serve.config import AutoscalingContext

    names = [f"r{index}" for index in range(running)]
    raw = {
        ONGOING: {name: [Point(1.0, ongoing)] for name in names},
        ENGINE_WAITING: {name: [Point(1.0, waiting)] for name in names},
        CAPACITY: {name: [Point(1.0, 4.0)] for name in names},
    }
    aggregated = {metric: {n: s[n][0].value for n in names} for metric, s in raw.items()}
    return AutoscalingContext(
        deployment_id=None,  # type: ignore[arg-type]
        deployment_name="VLMPool",
        app_name="memeserve",
        current_num_replicas=running,
        target_num_replicas=target,
        running_replicas=names,  # type: ignore[arg-type]
        total_num_requests=ongoing * running,
        total_queued_requests=0.0,
        aggregated_metrics=aggregated,  # type: ignore[arg-type]
        raw_metrics=raw,  # type: ignore[arg-type]
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


def test_serve_holds_our_scale_up_for_upscale_delay_s(clock: list[float]) -> None:
    from ray.serve.config import AutoscalingConfig

    config = AutoscalingConfig(
        min_replicas=1, max_replicas=4, upscale_delay_s=3, downscale_delay_s=30
    )
    policy = serve_wrapped(VLMPoolAutoscalingPolicy())
    state: dict[str, Any] = {}
    replicas = []
    for _ in range(4):  # a queue on one replica, every second
        wanted, state = policy(serve_context(config, 1, 1, ongoing=4, waiting=3, state=state))
        replicas.append(wanted)
        clock[0] += 1.0
    assert replicas == [1, 1, 1, 4]
    assert state[STATE_KEY]["reason"] == "queue/latest"


def test_serve_steps_our_scale_down_once_per_downscale_delay_s(clock: list[float]) -> None:
    from ray.serve.config import AutoscalingConfig

    config = AutoscalingConfig(
        min_replicas=1, max_replicas=4, upscale_delay_s=1, downscale_delay_s=10
    )
    policy = serve_wrapped(VLMPoolAutoscalingPolicy())
    state: dict[str, Any] = {}
    target, timeline = 4, []
    for second in range(32):  # idle from now on
        target, state = policy(serve_context(config, target, target, 0.0, 0.0, state))
        timeline.append((second, target))
        clock[0] += 1.0
    changes = [
        (s, t) for (s, t), (_, before) in zip(timeline[1:], timeline, strict=False) if t != before
    ]
    assert changes == [(10, 3), (21, 2)], timeline
