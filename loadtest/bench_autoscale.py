"""`make bench-autoscale`: the VLM pool under a step load, Serve's default policy vs ours.

The same app, the same ``autoscaling_config`` and the same step load, run twice on the
CPU, each on a fresh service (``autoscale_configs/test-autoscale-cpu.yaml`` by default) in
a Ray instance of this process without a dashboard, so that nothing else on a shared machine
can deploy onto it mid-run (:mod:`loadtest.harness.inprocess`):

* ``default``: the profile with the VLMPool's ``autoscaling_config.policy`` removed, so
  Serve's own policy decides (requests running and queued / ``target_ongoing_requests``,
  averaged over ``look_back_period_s``);
* ``signals``: the profile as shipped, ``serve_app.load.autoscaling:VLMPoolAutoscalingPolicy``
  (the engines' queue, requests held against capacity, KV cache, the level, refusals).

The engine is the lite one behind ``engine.faults``: each VLM replica serves ``--slots``
request(s) at a time for ``--delay-ms``, the others wait in its queue — an engine that runs
fewer requests at once than Serve's ``target_ongoing_requests``, as vLLM does when big
images fill its KV cache. The VLMPool's ``max_ongoing_requests`` (8) and
``target_ongoing_requests`` (4) keep ``t4.yaml``'s proportion (12 and 6: Serve keeps each
replica at half its capacity, for vLLM to batch). The load is open-loop Poisson arrivals of
fresh memes (no cache hits): ``--low-rate`` for ``--low-s`` seconds, then ``--high-rate``
for ``--high-s``, then none while the pool settles (``--settle-s`` at most). The arrival
times and the memes are the same in both runs. Serve's controller is asked every 0.5 s for
the VLM pool's replicas (running, starting, stopping).

Printed per run: the time from the step to the first scale-up (a replica starting: the
decision; and an extra replica running), latency p50/p95/max of the requests sent during
the ramp (the high-rate phase), the replicas over time, the errors; then the ratios
default / signals. Everything goes to ``artifacts/bench_autoscale.json``. One run each,
no assertions on timing: the machine is shared, so compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.corpus import payloads
from loadtest.harness.inprocess import serve_in_process
from loadtest.harness.load import (
    CLIENT_TIMEOUT_S,
    Outcome,
    end_run,
    poisson_schedule,
    send_on_schedule,
)
from loadtest.harness.ports import free_port
from loadtest.harness.service import ROOT, load_profile
from loadtest.harness.stats import latency_summary
from loadtest.harness.status import POLL_PERIOD_S, STARTING_STATES, STOPPING_STATES

DEFAULT_CONFIG = ROOT / "autoscale_configs" / "test-autoscale-cpu.yaml"
DEFAULT_JSON = ROOT / "artifacts" / "bench_autoscale.json"
VLM = "VLMPool"
POLICIES = ("default", "signals")
CLIENT_SHARDS = 8


@dataclass(frozen=True)
class PoolSample:
    """The VLM pool at ``t`` seconds from the step (negative: before it)."""

    t: float
    running: int
    starting: int
    stopping: int


# ----------------------------------------------------------------------------- pure helpers


def run_document(
    document: dict[str, Any],
    policy: str,
    *,
    port: int,
    delay_ms: float,
    slots: int,
    target_ongoing_requests: float,
    max_ongoing_requests: int,
) -> dict[str, Any]:
    """A copy of the profile for one run: port, simulated engine, the VLMPool's
    ``max_ongoing_requests`` and ``target_ongoing_requests``, the policy.

    ``policy`` ``default`` drops the VLMPool's ``autoscaling_config.policy`` (Serve's own
    policy); ``signals`` requires the profile to name one and keeps it.
    """
    doc = copy.deepcopy(document)
    doc.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": port})
    (app,) = doc["applications"]
    args = app.setdefault("args", {})
    args.setdefault("cache", {})["backend"] = "memory"
    engine = args.setdefault("engine", {})
    engine["faults"] = {"delay_ms": delay_ms, "slots": slots, "error_rate": 0.0}
    pool = next(d for d in app.get("deployments") or [] if d.get("name") == VLM)
    autoscaling = pool.get("autoscaling_config")
    if not isinstance(autoscaling, dict):
        raise ValueError(f"the profile's {VLM} does not autoscale")
    pool["max_ongoing_requests"] = max_ongoing_requests
    autoscaling["target_ongoing_requests"] = target_ongoing_requests
    if policy == "default":
        autoscaling.pop("policy", None)
    elif policy == "signals":
        if "policy" not in autoscaling:
            raise ValueError(f"the profile's {VLM} autoscaling_config names no policy")
    else:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    return doc


def step_schedule(
    low_rate: float, low_s: float, high_rate: float, high_s: float, seed: int
) -> list[float]:
    """Poisson arrivals: ``low_rate`` for ``low_s`` s, then ``high_rate`` for ``high_s`` s."""
    low = poisson_schedule(low_rate, low_s, seed)
    high = poisson_schedule(high_rate, high_s, seed + 1)
    return low + [low_s + offset for offset in high]


def first_time(samples: Sequence[PoolSample], min_replicas: int, *, running: bool) -> float | None:
    """Seconds from the step to the first sample (at or after it) above ``min_replicas``:
    running (``running=True``) or running plus starting (the scale-up decided)."""
    for sample in samples:
        if sample.t < 0:
            continue
        count = sample.running if running else sample.running + sample.starting
        if count > min_replicas:
            return sample.t
    return None


def scaled_before_step(samples: Sequence[PoolSample], min_replicas: int) -> bool:
    """Whether the pool grew during the low-rate phase (before the step)."""
    return any(s.t < 0 and s.running + s.starting > min_replicas for s in samples)


def back_to_min(samples: Sequence[PoolSample], min_replicas: int, end_s: float) -> float | None:
    """Seconds after ``end_s`` (the last arrival) when the pool rested at its minimum again."""
    for sample in samples:
        at_min = sample.running == min_replicas and not sample.starting and not sample.stopping
        if sample.t >= end_s and at_min:
            return round(sample.t - end_s, 1)
    return None


def timeline(samples: Sequence[PoolSample]) -> list[dict[str, float | int]]:
    """The first sample and every change of (running, starting, stopping)."""
    changes: list[dict[str, float | int]] = []
    last: tuple[int, int, int] | None = None
    for sample in samples:
        state = (sample.running, sample.starting, sample.stopping)
        if state != last:
            changes.append(asdict(sample))
            last = state
    return changes


def format_timeline(changes: Sequence[dict[str, float | int]]) -> str:
    """``-10.0s 1, +3.5s 1+1↑, +8.0s 2, +45.5s 2-1↓ ...`` (running, +starting, -stopping)."""
    parts = []
    for change in changes:
        text = f"{change['t']:+.1f}s {change['running']}"
        if change["starting"]:
            text += f"+{change['starting']}↑"
        if change["stopping"]:
            text += f"-{change['stopping']}↓"
        parts.append(text)
    return ", ".join(parts) if parts else "(no status samples)"


def outcome_key(outcome: Outcome) -> str:
    """The status, or the client's failure."""
    return str(outcome.status) if outcome.status is not None else f"client_{outcome.failure}"


def summarise_run(
    outcomes: Sequence[Outcome],
    samples: Sequence[PoolSample],
    *,
    step_s: float,
    end_s: float,
    min_replicas: int,
) -> dict[str, Any]:
    """The figures of one run (times from the step; ``end_s`` is the end of arrivals)."""
    ramp = [o for o in outcomes if o.status == 200 and step_s <= o.sent_s < end_s]
    low = [o for o in outcomes if o.status == 200 and o.sent_s < step_s]
    peak = max((s.running for s in samples), default=0)
    peak_t = next((s.t for s in samples if s.running == peak), None)
    return {
        "sent": len(outcomes),
        "by_status": dict(sorted(Counter(outcome_key(o) for o in outcomes).items())),
        "errors": sum(1 for o in outcomes if o.status != 200),
        "cache_hits": sum(1 for o in outcomes if o.cache_hit),
        "scale_up_decided_s": first_time(samples, min_replicas, running=False),
        "first_scale_up_s": first_time(samples, min_replicas, running=True),
        "scaled_before_step": scaled_before_step(samples, min_replicas),
        "peak_replicas": peak,
        "peak_at_s": peak_t,
        "back_to_min_after_load_s": back_to_min(samples, min_replicas, end_s - step_s),
        "latency_low_ms": latency_summary([o.latency_ms or 0.0 for o in low]),
        "latency_ramp_ms": latency_summary([o.latency_ms or 0.0 for o in ramp]),
        "timeline": timeline(samples),
    }


def ratio(default: float | None, signals: float | None) -> float | None:
    """default / signals, None where either is missing or the divisor is 0."""
    if default is None or signals is None or signals == 0:
        return None
    return round(default / signals, 2)


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """default / signals for the headline figures."""
    default, signals = runs["default"], runs["signals"]
    return {
        "scale_up_decided_s": ratio(default["scale_up_decided_s"], signals["scale_up_decided_s"]),
        "first_scale_up_s": ratio(default["first_scale_up_s"], signals["first_scale_up_s"]),
        "ramp_p50_ms": ratio(default["latency_ramp_ms"]["p50"], signals["latency_ramp_ms"]["p50"]),
        "ramp_p95_ms": ratio(default["latency_ramp_ms"]["p95"], signals["latency_ramp_ms"]["p95"]),
    }


# ----------------------------------------------------------------------------- one run


def read_pool() -> PoolSample | None:
    """The VLM pool's replicas by phase from Serve's controller (``t`` left at 0)."""
    from ray import serve

    try:
        application = serve.status().applications.get("memeserve")
    except Exception:  # the controller busy or restarting: no sample this time
        return None
    deployment = None if application is None else application.deployments.get(VLM)
    if deployment is None:
        return None
    states = {str(getattr(k, "value", k)): int(v) for k, v in deployment.replica_states.items()}
    return PoolSample(
        0.0,
        states.get("RUNNING", 0),
        sum(states.get(name, 0) for name in STARTING_STATES),
        sum(states.get(name, 0) for name in STOPPING_STATES),
    )


async def _poll(t_step: float, samples: list[PoolSample], stop: asyncio.Event) -> None:
    """Append the VLM pool's replica states every 0.5 s until ``stop``.

    Read from Serve's controller in this process, not through the app's ``/v1/status``:
    the ingress answering it is under the very load being measured.
    """
    next_tick = time.perf_counter()
    while not stop.is_set():
        started = time.perf_counter()
        sample = await asyncio.to_thread(read_pool)
        if sample is not None:
            t = round(started - t_step, 2)
            samples.append(PoolSample(t, sample.running, sample.starting, sample.stopping))
        next_tick += POLL_PERIOD_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.perf_counter()))


async def drive(
    url: str,
    images: list[bytes],
    schedule: list[float],
    *,
    step_s: float,
    end_s: float,
    settle_s: float,
    min_replicas: int,
) -> tuple[list[Outcome], list[PoolSample]]:
    """Send on ``schedule``, wait for the answers, then watch the pool settle."""
    outcomes = [Outcome(sent_s=offset) for offset in schedule]
    samples: list[PoolSample] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    poller = asyncio.create_task(_poll(t0 + step_s, samples, stop))
    async with send_on_schedule(url, images, outcomes, t0, CLIENT_SHARDS) as tasks:
        await asyncio.sleep(max(0.0, t0 + end_s - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=CLIENT_TIMEOUT_S + 5)
    settle_until = time.perf_counter() + settle_s
    while time.perf_counter() < settle_until:
        if back_to_min(samples, min_replicas, end_s - step_s) is not None:
            break
        await asyncio.sleep(POLL_PERIOD_S)
    await end_run(stop, poller, outcomes)
    return outcomes, samples


@dataclass
class Plan:
    """The bench's settings, from the command line."""

    config: Path
    low_rate: float
    low_s: float
    high_rate: float
    high_s: float
    settle_s: float
    delay_ms: float
    slots: int
    target_ongoing_requests: float
    max_ongoing_requests: int
    seed: int


def run_policy(
    plan: Plan, policy: str, images: list[bytes], schedule: list[float]
) -> dict[str, Any]:
    """Start a fresh service with ``policy``, apply the step load, stop the service."""
    port = free_port()
    document = run_document(
        load_profile(plan.config),
        policy,
        port=port,
        delay_ms=plan.delay_ms,
        slots=plan.slots,
        target_ongoing_requests=plan.target_ongoing_requests,
        max_ongoing_requests=plan.max_ongoing_requests,
    )
    pool = next(d for d in document["applications"][0]["deployments"] if d["name"] == VLM)
    min_replicas = int(pool["autoscaling_config"].get("min_replicas", 1))
    result: dict[str, Any] = {
        "policy": policy,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with serve_in_process(document) as service:
        result["ready_s"] = round(service.ready_s, 1)
        print(f"[{policy}] ready in {service.ready_s:.1f} s; step load ...", flush=True)
        end_s = plan.low_s + plan.high_s
        outcomes, samples = asyncio.run(
            drive(
                service.url,
                images,
                schedule,
                step_s=plan.low_s,
                end_s=end_s,
                settle_s=plan.settle_s,
                min_replicas=min_replicas,
            )
        )
        result.update(
            summarise_run(
                outcomes, samples, step_s=plan.low_s, end_s=end_s, min_replicas=min_replicas
            )
        )
        result["send_lag_ms"] = latency_summary([o.send_lag_ms for o in outcomes])
        result["samples"] = [asdict(s) for s in samples]
        result["outcomes"] = [asdict(o) for o in outcomes]
    print(f"[{policy}] {format_timeline(result.get('timeline') or [])}", flush=True)
    return result


# ----------------------------------------------------------------------------- output


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report_lines(runs: dict[str, dict[str, Any]], factors: dict[str, float | None]) -> list[str]:
    """The comparison table, the timelines and the errors."""
    d, s = runs["default"], runs["signals"]
    rows = [
        ("", "Serve default", "graph signals", "default/signals"),
        (
            "step -> scale-up decided (replica starting)",
            _s(d["scale_up_decided_s"]),
            _s(s["scale_up_decided_s"]),
            _x(factors["scale_up_decided_s"]),
        ),
        (
            "step -> first extra replica running",
            _s(d["first_scale_up_s"]),
            _s(s["first_scale_up_s"]),
            _x(factors["first_scale_up_s"]),
        ),
        (
            "ramp latency p50",
            _ms(d["latency_ramp_ms"]["p50"]),
            _ms(s["latency_ramp_ms"]["p50"]),
            _x(factors["ramp_p50_ms"]),
        ),
        (
            "ramp latency p95",
            _ms(d["latency_ramp_ms"]["p95"]),
            _ms(s["latency_ramp_ms"]["p95"]),
            _x(factors["ramp_p95_ms"]),
        ),
        (
            "ramp latency max",
            _ms(d["latency_ramp_ms"]["max"]),
            _ms(s["latency_ramp_ms"]["max"]),
            "",
        ),
        (
            "ramp requests answered",
            str(d["latency_ramp_ms"]["n"]),
            str(s["latency_ramp_ms"]["n"]),
            "",
        ),
        (
            "low-rate p95 (before the step)",
            _ms(d["latency_low_ms"]["p95"]),
            _ms(s["latency_low_ms"]["p95"]),
            "",
        ),
        (
            "peak replicas (at)",
            f"{d['peak_replicas']} ({_s(d['peak_at_s'])})",
            f"{s['peak_replicas']} ({_s(s['peak_at_s'])})",
            "",
        ),
        (
            "back at min after the last arrival",
            _s(d["back_to_min_after_load_s"]),
            _s(s["back_to_min_after_load_s"]),
            "",
        ),
        (
            "scaled up before the step",
            str(d["scaled_before_step"]),
            str(s["scaled_before_step"]),
            "",
        ),
        ("errors (non-200)", str(d["errors"]), str(s["errors"]), ""),
        ("service ready in", _s(d["ready_s"]), _s(s["ready_s"]), ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {r[0]:<{width}}  {r[1]:>15}  {r[2]:>15}  {r[3]:>15}" for r in rows]
    lines.append("replicas over time (s from the step: running, +starting, -stopping):")
    for name in POLICIES:
        lines.append(f"  {name:<8} {format_timeline(runs[name]['timeline'])}")
    for name in POLICIES:
        if runs[name]["errors"]:
            lines.append(f"  {name} answers by status: {runs[name]['by_status']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run both policies and print the comparison; exit 0 unless a run could not be made."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--low-rate", type=float, default=0.8, help="req/s before the step")
    parser.add_argument("--low-s", type=float, default=10.0)
    parser.add_argument("--high-rate", type=float, default=2.5, help="req/s after the step")
    parser.add_argument("--high-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=25.0)
    parser.add_argument("--delay-ms", type=float, default=600.0, help="the simulated engine")
    parser.add_argument("--slots", type=int, default=1, help="requests it serves at once")
    parser.add_argument("--target-ongoing-requests", type=float, default=4.0)
    parser.add_argument("--max-ongoing-requests", type=int, default=8)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    plan = Plan(
        config=args.config,
        low_rate=args.low_rate,
        low_s=args.low_s,
        high_rate=args.high_rate,
        high_s=args.high_s,
        settle_s=args.settle_s,
        delay_ms=args.delay_ms,
        slots=args.slots,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        seed=args.seed,
    )
    shipped = run_document(
        load_profile(plan.config),
        "signals",
        port=0,
        delay_ms=plan.delay_ms,
        slots=plan.slots,
        target_ongoing_requests=plan.target_ongoing_requests,
        max_ongoing_requests=plan.max_ongoing_requests,
    )
    pool = next(d for d in shipped["applications"][0]["deployments"] if d["name"] == VLM)
    autoscaling = pool["autoscaling_config"]
    per_replica = plan.slots * 1000.0 / plan.delay_ms
    print(
        "memeserve autoscaling bench: Serve's default policy vs the graph's signals "
        f"(one run each; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"  {plan.config}: VLMPool {autoscaling.get('min_replicas', 1)}-"
        f"{autoscaling.get('max_replicas')} replicas, max_ongoing_requests "
        f"{pool.get('max_ongoing_requests')}, target_ongoing_requests "
        f"{plan.target_ongoing_requests:g}, upscale_delay_s {autoscaling.get('upscale_delay_s')}, "
        f"downscale_delay_s {autoscaling.get('downscale_delay_s')}, look_back_period_s "
        f"{autoscaling.get('look_back_period_s')}"
    )
    print(
        f"  engine: lite behind engine.faults, {plan.slots} slot(s) x {plan.delay_ms:.0f} ms per "
        f"replica (~{per_replica:.1f} req/s each); the rest wait in the engine's queue"
    )
    print(
        f"  step load: Poisson {plan.low_rate:g} req/s for {plan.low_s:g} s, then "
        f"{plan.high_rate:g} req/s for {plan.high_s:g} s (the same arrivals and memes in both "
        "runs), then none"
    )
    schedule = step_schedule(plan.low_rate, plan.low_s, plan.high_rate, plan.high_s, plan.seed)
    images = payloads(len(schedule), plan.seed * 1000 + 7)
    started = time.monotonic()
    runs = {policy: run_policy(plan, policy, images, schedule) for policy in POLICIES}
    factors = ratios(runs)
    print()
    for line in report_lines(runs, factors):
        print(line)
    print(f"  (both runs took {time.monotonic() - started:.0f} s)")
    document = {
        "config": str(plan.config),
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
        "autoscaling_config": autoscaling,
        "requests": len(schedule),
        "ratios_default_over_signals": factors,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2), "utf-8")
    print(f"  written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
