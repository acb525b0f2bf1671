"""`make bench-overload`: ~3x overload with the load controller off, then on.

The demonstration of the load controller (DESIGN.md §2) on the machine at hand:

* phase 0, calibration (skipped with ``--rate``): a closed loop at concurrency 4 on
  the controller-OFF service measures the sustained throughput (successes/s); the
  overload rate is ``--factor`` times that;
* one phase per ``--phases`` entry (default ``off,on``): a fresh service on a copy of
  the profile (free port, in-memory cache, ``LoadController.user_config.enabled``
  false or true), a short closed-loop warm-up, the unloaded latency (one request at a
  time for ``--unloaded`` seconds), then open-loop Poisson arrivals at the overload
  rate for ``--duration`` seconds of distinct memes (no cache hits), while
  ``GET /v1/status`` is polled every 0.5 s into a timeline.

It prints, per phase: requests sent, answers by status, client timeouts, throughput,
latency percentiles and their ratio to the unloaded p95, the share of 200s per
degradation level, refusals lacking ``Retry-After`` or the JSON error body, how soon
the level rose after the arrivals started, the time back to level 0 and the level
timeline; then the goals of issue 17 (controller on: p95 of the 200s at most twice
the unloaded p95; every refusal with ``Retry-After`` and the JSON body). Everything
goes to ``artifacts/bench_overload.json``. One run, no assertions on timing.
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.corpus import payloads
from loadtest.harness.http import ANALYZE, SHED_STATUSES, async_client, post_meme
from loadtest.harness.load import (
    CLIENT_TIMEOUT_S,
    Outcome,
    closed_loop,
    open_loop,
    poisson_schedule,
)
from loadtest.harness.ports import free_port
from loadtest.harness.processes import ray_processes
from loadtest.harness.service import (
    ROOT,
    Service,
    load_profile,
    start_service,
    stop_service,
)
from loadtest.harness.stats import latency_summary
from loadtest.harness.status import Sample, wait_level_zero

SETTLE_LIMIT_S = 30.0
GOAL_P95_RATIO = 2.0
"""Issue 17's goal: with the controller on, p95 of the 200s <= this x the unloaded p95."""


# ----------------------------------------------------------------------------- pure helpers


def outcome_key(outcome: Outcome) -> str:
    """The category an outcome is counted under: the status, or the client failure."""
    if outcome.status is not None:
        return str(outcome.status)
    return f"client_{outcome.failure or 'error'}"


def level_shares(outcomes: Iterable[Outcome]) -> dict[str, float]:
    """Share (0..1) of the 200s answered at each degradation level, keyed ``L0``...``L3``."""
    levels = Counter(
        "L?" if o.level is None else f"L{o.level}" for o in outcomes if o.status == 200
    )
    total = sum(levels.values())
    return {key: round(levels[key] / total, 4) for key in sorted(levels)} if total else {}


def summarise_phase(outcomes: Sequence[Outcome], duration_s: float) -> dict[str, Any]:
    """Counts, throughput and latency figures of one phase's outcomes."""
    ok = [o for o in outcomes if o.status == 200]
    answered = [o for o in outcomes if o.status is not None]
    finished = [o.sent_s + (o.latency_ms or 0.0) / 1000.0 for o in answered]
    wall_s = max([duration_s, *finished])
    ok_in_window = sum(1 for o in ok if o.sent_s + (o.latency_ms or 0) / 1000 <= duration_s)
    shed = [o for o in outcomes if o.status in SHED_STATUSES]
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "by_status": dict(sorted(Counter(outcome_key(o) for o in outcomes).items())),
        "error_codes": dict(
            sorted(Counter(o.error_code for o in outcomes if o.error_code).items())
        ),
        "wall_s": round(wall_s, 2),
        "throughput_ok_per_s": round(len(ok) / wall_s, 2) if wall_s else 0.0,
        "throughput_ok_in_window_per_s": round(ok_in_window / duration_s, 2),
        "latency_ok_ms": latency_summary([o.latency_ms or 0.0 for o in ok]),
        "latency_answered_ms": latency_summary([o.latency_ms or 0.0 for o in answered]),
        # Where a 200's time went: inside the Ingress (the route to the answer) and in the
        # engine; the rest of its latency is the proxy, the Ingress's queue and the client.
        "server_ok_ms": latency_summary([o.server_ms for o in ok if o.server_ms is not None]),
        "engine_ok_ms": latency_summary([o.engine_ms for o in ok if o.engine_ms is not None]),
        "ok_level_shares": level_shares(outcomes),
        "shed": len(shed),
        "shed_without_retry_after": sum(1 for o in shed if not o.retry_after),
        "shed_without_json": sum(1 for o in shed if o.error_code is None),
        "shed_with_retry_after_and_json": sum(
            1 for o in shed if o.retry_after and o.error_code is not None
        ),
        "errors_without_retry_after": sum(
            1 for o in answered if o.status != 200 and not o.retry_after
        ),
        "cache_hits": sum(1 for o in ok if o.cache_hit),
        "send_lag_ms": latency_summary([o.send_lag_ms for o in outcomes]),
    }


def compress_timeline(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """The first answered sample and each later one whose level differs from the previous."""
    changes: list[dict[str, Any]] = []
    for sample in samples:
        if not sample.ok or sample.level is None:
            continue
        if changes and changes[-1]["level"] == sample.level:
            continue
        changes.append(
            {
                "t_s": round(sample.t_s, 1),
                "level": sample.level,
                "load": sample.load,
                "dominant": sample.dominant,
            }
        )
    return changes


def format_timeline(changes: Sequence[dict[str, Any]]) -> str:
    """``t=0.0s L0, t=4.5s L1 (load 0.93 graph_queue), ...``."""
    parts = []
    for change in changes:
        text = f"t={change['t_s']:.1f}s L{change['level']}"
        if change.get("load") is not None:
            text += f" (load {change['load']:.2f} {change.get('dominant') or '?'})"
        parts.append(text)
    return ", ".join(parts) if parts else "(no status samples)"


def recovery_s(samples: Sequence[Sample], end_s: float) -> float | None:
    """Seconds from ``end_s`` until the level is 0 for good (through the last sample).

    0.0 when no sample was ever above level 0; None when the last answered sample is not
    at level 0 (it never came back).
    """
    answered = [s for s in samples if s.ok and s.level is not None]
    if not answered or answered[-1].level != 0:
        return None
    if all(s.level == 0 for s in answered):
        return 0.0
    last_raised = max((s.t_s for s in answered if s.level != 0), default=float("-inf"))
    back = next(
        (s for s in answered if s.level == 0 and s.t_s > last_raised and s.t_s >= end_s), None
    )
    return None if back is None else round(max(0.0, back.t_s - end_s), 1)


def level_rise_s(samples: Sequence[Sample]) -> float | None:
    """Seconds from the start of the arrivals to the first sample above level 0 (None: never).

    A level already above 0 at the start counts as 0.0.
    """
    raised = next(
        (s for s in samples if s.ok and s.level is not None and s.level > 0 and s.t_s >= 0), None
    )
    return None if raised is None else round(max(0.0, raised.t_s), 1)


def controller_rise_s(transitions: Sequence[dict[str, Any]], start_wall: float) -> float | None:
    """Seconds from ``start_wall`` (``time.time()`` when the arrivals started) to the
    controller's first rise above level 0 after it, by the controller's own clock
    (``/v1/status`` → ``degradation.transitions``); None: no rise."""
    rises = [
        float(t["at"]) - start_wall
        for t in transitions
        if t.get("from") == 0 and (t.get("to") or 0) > 0 and float(t.get("at") or 0) >= start_wall
    ]
    return round(min(rises), 2) if rises else None


def _transitions(url: str) -> list[dict[str, Any]]:
    """The controller's recent level transitions (empty when status does not answer)."""
    try:
        body = httpx.get(f"{url}/v1/status", timeout=10).json()
        found: list[dict[str, Any]] = body["degradation"]["transitions"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []
    return found


def p95_ratio(phase: dict[str, Any]) -> float | None:
    """p95 of the phase's 200s under overload / its unloaded p95 (None without both)."""
    loaded = (phase.get("latency_ok_ms") or {}).get("p95")
    unloaded = (phase.get("unloaded_ms") or {}).get("p95")
    if not loaded or not unloaded:
        return None
    return round(loaded / unloaded, 2)


async def one_at_a_time(url: str, images: list[bytes], seconds: float) -> list[float]:
    """Latencies (ms) of the 200s of one request at a time for ``seconds``: the unloaded figure."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with async_client(url, CLIENT_TIMEOUT_S) as client:
        for data in images:
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                if (await post_meme(client, data)).status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def peak(samples: Sequence[Sample], attribute: str) -> float | None:
    """The largest non-None value of ``attribute`` over the answered samples."""
    values = [getattr(s, attribute) for s in samples if s.ok and getattr(s, attribute) is not None]
    return max(values) if values else None


def phase_document(document: dict[str, Any], enabled: bool, port: int) -> dict[str, Any]:
    """A copy of a Serve profile for one phase: port, memory cache, controller on/off."""
    doc = copy.deepcopy(document)
    doc.setdefault("http_options", {}).update({"host": "127.0.0.1", "port": port})
    found = False
    for app in doc.get("applications", []):
        app.setdefault("args", {}).setdefault("cache", {})["backend"] = "memory"
        for deployment in app.get("deployments", []):
            if deployment.get("name") == "LoadController":
                deployment.setdefault("user_config", {})["enabled"] = enabled
                found = True
    if not found:
        raise ValueError("the profile has no LoadController deployment to switch")
    return doc


# ----------------------------------------------------------------------------- phases


@dataclass
class Plan:
    """What the run does, from the command line."""

    document: dict[str, Any]
    phases: list[str]
    rate: float | None
    factor: float
    duration_s: float
    seed: int
    warmup_s: float
    calibrate_s: float
    unloaded_s: float = 15.0
    service_nice: int = 5
    concurrency: int = 4


def warm_up(url: str, plan: Plan, seed: int, seconds: float) -> float:
    """One request, then a closed loop at ``plan.concurrency``; the loop's 200s per second."""
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        client.post(ANALYZE, files={"image": ("w.jpg", payloads(1, seed + 999)[0], "image/jpeg")})
    images = payloads(int(seconds * 40) + 50, seed)
    return asyncio.run(closed_loop(url, images, plan.concurrency, seconds))


def _start(document: dict[str, Any], port: int, name: str, plan: Plan) -> Service:
    """A service on a phase's document (its port, no fresh library: the cache is memory)."""
    return start_service(
        document,
        name=f"bench_overload_{name}",
        port=port,
        fresh_library=False,
        nice=plan.service_nice,
    )


def run_phase(plan: Plan, name: str, index: int, rate: float | None) -> dict[str, Any]:
    """Start a service for phase ``name`` ("off"/"on"), measure it, stop it."""
    port = free_port()
    document = phase_document(plan.document, enabled=(name == "on"), port=port)
    result: dict[str, Any] = {"phase": name, "controller_enabled": name == "on"}
    result["other_ray_processes_at_start"] = len(ray_processes())
    result["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    service = _start(document, port, name, plan)
    result["ready_s"] = round(service.ready_s, 1)
    result["service_log"] = str(service.log_path)
    try:
        base_seed = plan.seed * 1000 + index * 100
        print(f"[{name}] ready in {service.ready_s:.1f} s at {service.url}; warming up", flush=True)
        warm_rate = warm_up(service.url, plan, base_seed + 1, plan.warmup_s)
        result["warmup_ok_per_s"] = round(warm_rate, 2)
        if rate is None:
            print(f"[{name}] calibrating: closed loop x{plan.concurrency}", flush=True)
            images = payloads(int(plan.calibrate_s * 40) + 50, base_seed + 2)
            sustained = asyncio.run(
                closed_loop(service.url, images, plan.concurrency, plan.calibrate_s)
            )
            result["calibration_ok_per_s"] = round(sustained, 2)
            rate = plan.factor * sustained
        print(f"[{name}] unloaded: one request at a time for {plan.unloaded_s:.0f} s", flush=True)
        alone = payloads(int(plan.unloaded_s * 10) + 20, base_seed + 4)
        unloaded = asyncio.run(one_at_a_time(service.url, alone, plan.unloaded_s))
        result["unloaded_ms"] = latency_summary(unloaded)
        result["settle_s"] = asyncio.run(wait_level_zero(service.url, SETTLE_LIMIT_S))
        result["rate"] = round(rate, 3)
        # The same arrival times in every phase; only the memes differ (no cache hits).
        schedule = poisson_schedule(rate, plan.duration_s, plan.seed)
        images = payloads(len(schedule), base_seed + 3)
        print(
            f"[{name}] open loop: {len(schedule)} requests at {rate:.2f}/s "
            f"for {plan.duration_s:.0f} s",
            flush=True,
        )
        start_wall = time.time()
        run = asyncio.run(open_loop(service.url, images, schedule, plan.duration_s))
        result.update(
            summarise_phase(run["outcomes"], plan.duration_s),
            arrivals_end_s=run["arrivals_end_s"],
            drain_s=run["drain_s"],
            abandoned=run["abandoned"],
            recovery_s=recovery_s(run["samples"], run["arrivals_end_s"]),
            level_rise_s=level_rise_s(run["samples"]),
            controller_rise_s=controller_rise_s(_transitions(service.url), start_wall),
            timeline=compress_timeline(run["samples"]),
            peak_load=peak(run["samples"], "load"),
            peak_in_flight=peak(run["samples"], "in_flight"),
            status_polls_failed=sum(1 for s in run["samples"] if not s.ok),
            status_poll_ms=latency_summary([s.poll_ms for s in run["samples"]]),
            peak_replicas=_peak_replicas(run["samples"]),
            samples=[asdict(s) for s in run["samples"]],
            outcomes=[asdict(o) for o in run["outcomes"]],
        )
    finally:
        result["stop"] = stop_service(service, force_ray_stop=True).to_json()
    return result


def _peak_replicas(samples: Sequence[Sample]) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for sample in samples:
        for name, count in sample.replicas.items():
            peaks[name] = max(peaks.get(name, 0), count)
    return peaks


def calibrate_only(plan: Plan) -> dict[str, Any]:
    """Phase 0 on its own controller-OFF service (when the first phase is not "off")."""
    port = free_port()
    document = phase_document(plan.document, enabled=False, port=port)
    service = _start(document, port, "calibration", plan)
    try:
        warm_up(service.url, plan, plan.seed * 1000 + 901, plan.warmup_s)
        images = payloads(int(plan.calibrate_s * 40) + 50, plan.seed * 1000 + 902)
        sustained = asyncio.run(
            closed_loop(service.url, images, plan.concurrency, plan.calibrate_s)
        )
    finally:
        stop = stop_service(service, force_ray_stop=True).to_json()
    return {"calibration_ok_per_s": round(sustained, 2), "stop": stop}


# ----------------------------------------------------------------------------- output


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if abs(value) >= 10 else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def table_rows(phases: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per phase) rows of the comparison table."""
    keys = sorted({k for p in phases for k in p.get("by_status", {})}, key=_status_order)
    levels = sorted({k for p in phases for k in p.get("ok_level_shares", {})})
    rows: list[tuple[str, list[str]]] = [
        ("offered rate (req/s)", [_fmt(p.get("rate")) for p in phases]),
        ("sent", [_fmt(p.get("sent")) for p in phases]),
    ]
    rows += [(f"  {k}", [_fmt(p.get("by_status", {}).get(k, 0)) for p in phases]) for k in keys]
    rows += [
        ("throughput 200/s (to last answer)", [_fmt(p.get("throughput_ok_per_s")) for p in phases]),
        (
            "throughput 200/s (in arrival window)",
            [_fmt(p.get("throughput_ok_in_window_per_s")) for p in phases],
        ),
    ]
    for label, key in (("200s", "latency_ok_ms"), ("all answered", "latency_answered_ms")):
        for q in ("p50", "p95", "p99"):
            rows.append(
                (f"latency {label} {q} (ms)", [_fmt(p.get(key, {}).get(q)) for p in phases])
            )
    rows += [
        (
            "unloaded 200s p50 / p95 (ms)",
            [
                f"{_fmt(p.get('unloaded_ms', {}).get('p50'))} / "
                f"{_fmt(p.get('unloaded_ms', {}).get('p95'))}"
                for p in phases
            ],
        ),
        ("p95 200s / unloaded p95", [_fmt(p95_ratio(p), "x") for p in phases]),
        (
            "200s inside the Ingress p50 / p95 (ms)",
            [
                f"{_fmt(p.get('server_ok_ms', {}).get('p50'))} / "
                f"{_fmt(p.get('server_ok_ms', {}).get('p95'))}"
                for p in phases
            ],
        ),
        (
            "200s in the engine p50 / p95 (ms)",
            [
                f"{_fmt(p.get('engine_ok_ms', {}).get('p50'))} / "
                f"{_fmt(p.get('engine_ok_ms', {}).get('p95'))}"
                for p in phases
            ],
        ),
    ]
    for level in levels:
        rows.append(
            (
                f"share of 200s at {level}",
                [
                    _fmt(round(100 * p.get("ok_level_shares", {}).get(level, 0.0), 1), "%")
                    for p in phases
                ],
            )
        )
    rows += [
        ("429/503 without Retry-After", [_fmt(p.get("shed_without_retry_after")) for p in phases]),
        ("429/503 without the JSON body", [_fmt(p.get("shed_without_json")) for p in phases]),
        (
            "any non-200 without Retry-After",
            [_fmt(p.get("errors_without_retry_after")) for p in phases],
        ),
        ("cache hits among 200s", [_fmt(p.get("cache_hits")) for p in phases]),
        (
            "peak load / in_flight",
            [f"{_fmt(p.get('peak_load'))} / {_fmt(p.get('peak_in_flight'))}" for p in phases],
        ),
        (
            "peak replicas Pre/VLM",
            [
                f"{p.get('peak_replicas', {}).get('Preprocessor', '-')}/"
                f"{p.get('peak_replicas', {}).get('VLMPool', '-')}"
                for p in phases
            ],
        ),
        ("drain after arrivals (s)", [_fmt(p.get("drain_s")) for p in phases]),
        (
            "level > 0 after arrivals (s): ctl / polled",
            [f"{_fmt(p.get('controller_rise_s'))} / {_fmt(p.get('level_rise_s'))}" for p in phases],
        ),
        ("back to level 0 after arrivals (s)", [_fmt(p.get("recovery_s")) for p in phases]),
        (
            "status polls failed / made",
            [f"{p.get('status_polls_failed')} / {len(p.get('samples', []))}" for p in phases],
        ),
        ("status poll p95 (ms)", [_fmt(p.get("status_poll_ms", {}).get("p95")) for p in phases]),
        ("client send lag p95 (ms)", [_fmt(p.get("send_lag_ms", {}).get("p95")) for p in phases]),
    ]
    return rows


def _status_order(key: str) -> tuple[int, str]:
    return (0, key) if key.isdigit() else (1, key)


def render(results: dict[str, Any]) -> str:
    """The human-readable report."""
    phases = results["phases"]
    lines = [
        f"memeserve overload bench ({results['config']}, {results['cpus']} CPUs, "
        f"{results['machine']})",
        f"  sustained (closed loop x4): {_fmt(results.get('calibration_ok_per_s'))} req/s; "
        f"overload rate {_fmt(results['rate'])} req/s "
        f"({results['rate_source']}); {results['duration_s']:.0f} s per phase, seed "
        f"{results['seed']}; service at nice {results.get('service_nice', 0)}",
    ]
    names = [f"controller {p['phase']}" for p in phases]
    width = 38
    lines.append("  " + " " * width + "".join(f"{n:>18s}" for n in names))
    for label, cells in table_rows(phases):
        lines.append(f"  {label:<{width}s}" + "".join(f"{c:>18s}" for c in cells))
    for phase in phases:
        codes = ", ".join(f"{k} x{v}" for k, v in phase.get("error_codes", {}).items())
        lines.append(f"  error codes ({phase['phase']}): {codes or 'none'}")
    for phase in phases:
        lines.append(f"  level timeline ({phase['phase']}): {format_timeline(phase['timeline'])}")
    lines += goal_lines(phases)
    for phase in phases:
        stop = phase.get("stop", {})
        if stop.get("strays_killed") or stop.get("ray_stop_force") or stop.get("killed_group"):
            lines.append(f"  note ({phase['phase']}): stopping needed {stop}")
    for phase in phases:
        others = phase.get("other_ray_processes_at_start", 0)
        if others:
            lines.append(
                f"  WARNING ({phase['phase']}): {others} other Ray processes were running at "
                f"its start (load average {phase.get('loadavg_at_start')}): figures disturbed"
            )
    lines.append(
        f"  ray processes before {results['ray_processes_before']}, "
        f"after {results['ray_processes_after']}"
    )
    return "\n".join(lines)


def goal_lines(phases: Sequence[dict[str, Any]]) -> list[str]:
    """Issue 17's two goals, as this run met them or not."""
    lines = []
    for phase in phases:
        if phase.get("phase") == "on":
            ratio = p95_ratio(phase)
            verdict = "-" if ratio is None else ("met" if ratio <= GOAL_P95_RATIO else "NOT met")
            lines.append(
                f"  goal (on): p95 of the 200s <= {GOAL_P95_RATIO:g}x the unloaded p95: "
                f"{_fmt(ratio, 'x')} ({verdict})"
            )
        shed, good = phase.get("shed", 0), phase.get("shed_with_retry_after_and_json", 0)
        verdict = "met" if good == shed else "NOT met"
        lines.append(
            f"  goal ({phase.get('phase')}): refusals with Retry-After and the JSON body: "
            f"{good} of {shed} ({verdict})"
        )
    return lines


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, affinity {len(os.sched_getaffinity(0))} cores"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("autoscale_configs/dev-cpu.yaml"))
    parser.add_argument("--rate", type=float, default=None, help="req/s; skips calibration")
    parser.add_argument("--factor", type=float, default=3.0, help="overload x sustained rate")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "bench_overload.json")
    parser.add_argument("--phases", default="off,on", help="comma-separated: off, on")
    parser.add_argument("--warmup", type=float, default=10.0, help="closed-loop warm-up (s)")
    parser.add_argument("--calibrate", type=float, default=20.0, help="calibration loop (s)")
    parser.add_argument(
        "--unloaded", type=float, default=15.0, help="one request at a time, per phase (s)"
    )
    parser.add_argument(
        "--service-nice", type=int, default=5, help="niceness of the service (0: as this)"
    )
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phase_list or any(p not in ("off", "on") for p in args.phase_list):
        parser.error("--phases takes a comma-separated list of 'off' and 'on'")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the phases, print the comparison, write the JSON."""
    args = parse_args(argv)
    plan = Plan(
        document=load_profile(args.config),
        phases=args.phase_list,
        rate=args.rate,
        factor=args.factor,
        duration_s=args.duration,
        seed=args.seed,
        warmup_s=args.warmup,
        calibrate_s=args.calibrate,
        unloaded_s=args.unloaded,
        service_nice=args.service_nice,
    )
    results: dict[str, Any] = {
        "config": str(args.config),
        "cpus": os.cpu_count(),
        "machine": _machine(),
        "duration_s": args.duration,
        "seed": args.seed,
        "factor": args.factor,
        "service_nice": args.service_nice,
        "ray_processes_before": len(ray_processes()),
        "phases": [],
    }
    rate = args.rate
    results["rate_source"] = "--rate" if rate is not None else f"{args.factor:g} x sustained"
    if rate is None and plan.phases[0] != "off":
        calibration = calibrate_only(plan)
        results["calibration"] = calibration
        results["calibration_ok_per_s"] = calibration["calibration_ok_per_s"]
        rate = plan.factor * calibration["calibration_ok_per_s"]
    for index, name in enumerate(plan.phases):
        phase = run_phase(plan, name, index, rate)
        if rate is None:
            results["calibration_ok_per_s"] = phase.get("calibration_ok_per_s")
            rate = phase["rate"]
        results["phases"].append(phase)
    results["rate"] = rate
    results["ray_processes_after"] = len(ray_processes())
    print(render(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), "utf-8")
    print(f"  written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
