"""The VLM pool's autoscaling on the graph's own signals: a pure policy and Serve's hook.

Serve's default policy scales on one figure: requests running and queued for the pool,
averaged over ``look_back_period_s``, divided by ``target_ongoing_requests``. A VLM
engine shows that it is short before that figure does, and by other means: requests
wait inside the engine (vLLM's scheduler queue) while Serve's count per replica is still
at its target, because how many sequences an engine runs at once depends on the KV
cache the images fill, not on a fixed number; the KV cache fills up; the load
controller raises the degradation level; the ingresses refuse requests at a shedding
level (and a refused request is never counted by Serve at all).

Each VLM replica reports those figures to Serve's controller with
``record_autoscaling_stats`` (:func:`replica_stats`, the names in :data:`METRICS`).
Every control-loop tick Serve calls :class:`VLMPoolAutoscalingPolicy` with its
``AutoscalingContext``; the adapter reads each running replica's latest report and its
look-back aggregate into a :class:`PoolEvidence`, and :func:`decide` — pure, no Ray, no
clock — turns that into a replica count:

* **Symmetric rules** may ask for fewer replicas as well as more: ``requests`` (what
  Serve's default policy asks: requests / ``target_ongoing_requests``) and
  ``in_flight`` (requests each replica holds against ``in_flight_target`` x its
  ``max_ongoing_requests``).
* **Pressure rules** fire only on evidence that the pool is short, and then ask for
  more than it runs: ``queue`` (mean engine waiting per replica above
  ``waiting_per_replica``: each replica needs ``ongoing / (ongoing - waiting)`` of
  itself to run all it holds at once), ``kv_cache`` (mean usage above
  ``kv_cache_target``), ``level`` (at or above ``scale_up_level``) and ``refusals``
  (admission refusals in the ingresses' latest reports); the last two ask for
  ``pressure_step`` replicas more than are running.
* **Up fast, down slow.** The pool grows to the largest need of the replicas' latest
  figures (a queue shows there before the look-back mean moves) or of the ``requests``
  rule. It shrinks only when the look-back window agrees too, never while a pressure
  rule fires in either, never below what its engines can run without queueing
  (``concurrency``: the requests held / (``engine_headroom`` x what a replica ran at once
  the last time its engine queued, remembered in Serve's policy state), and by at most
  ``scale_down_step`` replicas per decision.
  Serve then applies ``upscale_delay_s`` / ``downscale_delay_s`` (the decision must
  hold that long; the delay restarts after each step) and the capacity-adjusted
  ``min_replicas`` / ``max_replicas``, as it does around its own policy.

Turn it on in a profile's VLMPool ``autoscaling_config``::

    policy:
      policy_function: serve_app.load.autoscaling:VLMPoolAutoscalingPolicy
      policy_kwargs: {waiting_per_replica: 1.0}   # PoolAutoscalingArgs; all optional

No Ray import here: the context is read through :class:`AutoscalingContextLike`, the
attributes of Ray Serve 2.60's ``ray.serve.config.AutoscalingContext`` that are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.config.models import PoolAutoscalingArgs

logger = logging.getLogger(__name__)
# The policy runs inside Serve's controller, whose log file takes the "ray.serve" tree:
# decisions logged there sit beside Serve's own "Upscaling ..." lines.
_decisions = logging.getLogger("ray.serve.memeserve_autoscaling")

ONGOING = "memeserve_ongoing"
CAPACITY = "memeserve_capacity"
ENGINE_WAITING = "memeserve_engine_waiting"
KV_CACHE = "memeserve_kv_cache"
LEVEL = "memeserve_level"
REFUSED = "memeserve_refused"
METRICS = (ONGOING, CAPACITY, ENGINE_WAITING, KV_CACHE, LEVEL, REFUSED)
"""The custom autoscaling metrics a VLM replica reports (prefixed: Serve keeps its own
``running_requests`` in the same report)."""

STATE_KEY = "memeserve"
"""Our entry in Serve's ``policy_state`` (Serve keeps its delay counters beside it)."""

_EPSILON = 1e-9


def replica_stats(
    ongoing: int,
    capacity: int,
    waiting: int | None,
    kv_cache_usage: float | None,
    level: int,
    refused: float,
) -> dict[str, float]:
    """What one VLM replica returns from ``record_autoscaling_stats``.

    ``ongoing`` requests it holds, ``capacity`` its ``max_ongoing_requests``, the
    engine's ``waiting`` queue and ``kv_cache_usage`` where the engine knows them
    (left out otherwise), the ``level`` and ``refused`` count it last heard from the
    load controller.
    """
    stats = {
        ONGOING: float(ongoing),
        CAPACITY: float(capacity),
        LEVEL: float(level),
        REFUSED: float(refused),
    }
    if waiting is not None:
        stats[ENGINE_WAITING] = float(waiting)
    if kv_cache_usage is not None:
        stats[KV_CACHE] = float(kv_cache_usage)
    return stats


@dataclass(frozen=True)
class ReplicaFigures:
    """One replica's figures: a latest report, or its look-back aggregate."""

    ongoing: float = 0.0
    capacity: float = 0.0
    waiting: float | None = None
    kv_cache: float | None = None
    level: float = 0.0
    refused: float = 0.0

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> ReplicaFigures:
        """From a ``{metric name: value}`` mapping (:data:`METRICS`); missing ones default."""

        def finite(name: str) -> float | None:
            value = metrics.get(name)
            if value is None:
                return None
            number = float(value)
            return number if math.isfinite(number) else None

        return cls(
            ongoing=max(0.0, finite(ONGOING) or 0.0),
            capacity=max(0.0, finite(CAPACITY) or 0.0),
            waiting=finite(ENGINE_WAITING),
            kv_cache=finite(KV_CACHE),
            level=finite(LEVEL) or 0.0,
            refused=max(0.0, finite(REFUSED) or 0.0),
        )


@dataclass(frozen=True)
class PoolEvidence:
    """Everything :func:`decide` looks at, for one control-loop tick."""

    running: int
    """Replicas running now (Serve's ``current_num_replicas``)."""
    target: int
    """The current target (running plus starting; Serve's ``target_num_replicas``)."""
    min_replicas: int
    max_replicas: int
    """Bounds, adjusted by Serve for the target capacity."""
    latest: tuple[ReplicaFigures, ...] = ()
    """Each reporting running replica's latest report."""
    window: tuple[ReplicaFigures, ...] = ()
    """The same replicas' reports aggregated over the look-back window."""
    requests: float = 0.0
    """Requests running and queued for the pool over the window (Serve's figure)."""
    target_ongoing_requests: float = 2.0


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded."""

    replicas: int
    """The replica count asked for (Serve still applies its delays and bounds)."""
    reason: str
    """The rule (and view) that set it, ``hold`` or ``no evidence``."""
    needs: dict[str, float]
    """Every rule's need by ``rule/view``, for logs and tests."""
    state: dict[str, Any]
    """The policy state to hand back to Serve."""


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def observed_concurrency(view: Sequence[ReplicaFigures]) -> float | None:
    """What the queueing replicas of ``view`` run at once (mean of ongoing - waiting over
    those whose engine queues); None when no engine queues."""
    queueing = [r for r in view if (r.waiting or 0.0) > 0 and r.ongoing > 0]
    return _mean(max(r.ongoing - (r.waiting or 0.0), 1.0) for r in queueing)


def _needs(
    view: Sequence[ReplicaFigures],
    evidence: PoolEvidence,
    args: PoolAutoscalingArgs,
    concurrency: float | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(symmetric needs, pressure needs) of one view of the replicas' figures."""
    symmetric: dict[str, float] = {}
    pressure: dict[str, float] = {}
    if not view:
        return symmetric, pressure
    # Replicas that did not report yet count as one replica's worth each.
    silent = max(0, evidence.running - len(view))
    if args.engine_headroom is not None and concurrency:
        symmetric["concurrency"] = silent + sum(r.ongoing for r in view) / (
            args.engine_headroom * concurrency
        )
    if args.in_flight_target is not None:
        held = [r for r in view if r.capacity > 0]
        if held:
            symmetric["in_flight"] = silent + sum(
                r.ongoing / (args.in_flight_target * r.capacity) for r in held
            )
    waiting = [r for r in view if r.waiting is not None]
    mean_waiting = _mean(r.waiting or 0.0 for r in waiting)
    if (
        args.waiting_per_replica is not None
        and mean_waiting is not None
        and mean_waiting > args.waiting_per_replica
    ):
        # A replica holding `ongoing` requests of which `waiting` queue in its engine runs
        # ongoing - waiting at once: it would take ongoing / (ongoing - waiting) of it.
        pressure["queue"] = silent + sum(
            r.ongoing / max(r.ongoing - (r.waiting or 0.0), 1.0) if r.ongoing > 0 else 1.0
            for r in view
        )
    mean_kv = _mean(r.kv_cache for r in view if r.kv_cache is not None)
    if args.kv_cache_target is not None and mean_kv is not None and mean_kv > args.kv_cache_target:
        pressure["kv_cache"] = evidence.running * mean_kv / args.kv_cache_target
    level = max(r.level for r in view)
    if args.scale_up_level is not None and level >= args.scale_up_level:
        pressure["level"] = float(evidence.running + args.pressure_step)
    if args.scale_up_on_refusals and max(r.refused for r in view) > 0:
        pressure["refusals"] = float(evidence.running + args.pressure_step)
    return symmetric, pressure


def decide(
    evidence: PoolEvidence,
    args: PoolAutoscalingArgs,
    state: Mapping[str, Any] | None = None,
) -> Decision:
    """The replica count the pool should have, from ``evidence`` (see the module docstring).

    Pure: the same evidence, knobs and state give the same decision. ``state`` is the
    policy state Serve handed in; the returned one carries it on with our entry
    (:data:`STATE_KEY`: the reason and needs of this decision) updated.
    """
    previous = (state or {}).get(STATE_KEY) or {}
    concurrency = observed_concurrency(evidence.latest) or previous.get("concurrency")
    needs: dict[str, float] = {}
    pressing = False
    for name, view in (("latest", evidence.latest), ("window", evidence.window)):
        symmetric, pressure = _needs(view, evidence, args, concurrency)
        needs.update({f"{rule}/{name}": value for rule, value in symmetric.items()})
        needs.update({f"{rule}/{name}": value for rule, value in pressure.items()})
        pressing = pressing or bool(pressure)
    if args.requests_rule and evidence.target_ongoing_requests > 0:
        needs["requests"] = evidence.requests / evidence.target_ongoing_requests
    target = evidence.target
    # Up on the latest figures (and Serve's own rule); the window and the remembered
    # concurrency only hold the pool.
    raising = {
        rule: need
        for rule, need in needs.items()
        if not rule.endswith("/window") and not rule.startswith("concurrency/")
    }
    if not needs:
        replicas, reason = target, "no evidence"
    elif raising and _wanted(max(raising.values())) > target:
        reason, need = max(raising.items(), key=lambda item: item[1])
        replicas = _wanted(need)
    else:
        reason, need = max(needs.items(), key=lambda item: item[1])
        wanted = _wanted(need)
        if pressing:
            # A pool that queues, fills its KV cache, degrades or refuses never shrinks.
            wanted = max(wanted, target)
        if wanted < target:
            replicas = max(wanted, target - args.scale_down_step)
        else:
            replicas, reason = target, "hold"
    low, high = evidence.min_replicas, max(evidence.min_replicas, evidence.max_replicas)
    replicas = min(max(replicas, low), high)
    new_state = dict(state or {})
    new_state[STATE_KEY] = {
        "replicas": replicas,
        "reason": reason,
        "concurrency": concurrency,
        "needs": {name: round(value, 3) for name, value in sorted(needs.items())},
    }
    return Decision(replicas, reason, needs, new_state)


def _wanted(need: float) -> int:
    """Replicas for a need (a fraction more is one more; float noise is not)."""
    return math.ceil(need - _EPSILON)


class AutoscalingContextLike(Protocol):
    """The attributes of Ray Serve 2.60's ``AutoscalingContext`` the adapter reads."""

    @property
    def current_num_replicas(self) -> int: ...
    @property
    def target_num_replicas(self) -> int: ...
    @property
    def running_replicas(self) -> Sequence[Any]: ...
    @property
    def capacity_adjusted_min_replicas(self) -> int: ...
    @property
    def capacity_adjusted_max_replicas(self) -> int: ...
    @property
    def total_num_requests(self) -> float: ...
    @property
    def aggregated_metrics(self) -> Mapping[str, Mapping[Any, float]] | None: ...
    @property
    def raw_metrics(self) -> Mapping[str, Mapping[Any, Sequence[Any]]] | None: ...
    @property
    def policy_state(self) -> dict[str, Any]: ...
    @property
    def config(self) -> Any: ...


def _latest_value(series: Sequence[Any]) -> float | None:
    """The newest value of a Serve time series (items with ``timestamp`` and ``value``)."""
    if not series:
        return None
    newest = max(series, key=lambda point: point.timestamp)
    return float(newest.value)


def evidence_from_context(ctx: AutoscalingContextLike) -> PoolEvidence:
    """A :class:`PoolEvidence` from Serve's context: per running replica, the newest
    point of each custom metric (``raw_metrics``) and its look-back aggregate
    (``aggregated_metrics``)."""
    raw = ctx.raw_metrics or {}
    aggregated = ctx.aggregated_metrics or {}
    latest: list[ReplicaFigures] = []
    window: list[ReplicaFigures] = []
    for replica in ctx.running_replicas:
        newest: dict[str, float] = {}
        for name in METRICS:
            value = _latest_value((raw.get(name) or {}).get(replica) or ())
            if value is not None:
                newest[name] = value
        if newest:
            latest.append(ReplicaFigures.from_metrics(newest))
        means = {
            name: float(values[replica])
            for name in METRICS
            if (values := aggregated.get(name)) is not None and replica in values
        }
        if means:
            window.append(ReplicaFigures.from_metrics(means))
    config = ctx.config
    target_ongoing = getattr(config, "target_ongoing_requests", None) or 2.0
    return PoolEvidence(
        running=int(ctx.current_num_replicas),
        target=int(ctx.target_num_replicas),
        min_replicas=int(ctx.capacity_adjusted_min_replicas),
        max_replicas=int(ctx.capacity_adjusted_max_replicas),
        latest=tuple(latest),
        window=tuple(window),
        requests=float(ctx.total_num_requests),
        target_ongoing_requests=float(target_ongoing),
    )


class VLMPoolAutoscalingPolicy:
    """Serve's autoscaling policy for the VLM pool (``policy_function`` names this class).

    Serve 2.60 builds it once with ``policy_kwargs`` (checked as
    :class:`~serve_app.config.models.PoolAutoscalingArgs`: a misspelt knob fails the
    deploy) and calls it every control-loop tick with an ``AutoscalingContext``; it
    answers ``(replicas, policy_state)``.
    """

    def __init__(self, **policy_kwargs: Any) -> None:
        self.args = PoolAutoscalingArgs.model_validate(policy_kwargs)

    def __call__(self, ctx: AutoscalingContextLike) -> tuple[int, dict[str, Any]]:
        """One decision: see :func:`decide`. Logged when its reason or count changes."""
        state = ctx.policy_state or {}
        previous = state.get(STATE_KEY) or {}
        decision = decide(evidence_from_context(ctx), self.args, state)
        if (previous.get("replicas"), previous.get("reason")) != (
            decision.replicas,
            decision.reason,
        ):
            _decisions.info(
                "VLM pool autoscaling: %d -> %d replicas (%s; needs %s)",
                ctx.target_num_replicas,
                decision.replicas,
                decision.reason,
                decision.state[STATE_KEY]["needs"],
            )
        return decision.replicas, decision.state
