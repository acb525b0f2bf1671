"""The pure helpers of ``loadtest.bench_autoscale`` (no service)."""

from __future__ import annotations

import pytest

from loadtest.bench_autoscale import (
    DEFAULT_CONFIG,
    PoolSample,
    back_to_min,
    first_time,
    format_timeline,
    ratios,
    run_document,
    scaled_before_step,
    step_schedule,
    summarise_run,
    timeline,
)
from loadtest.harness.load import Outcome
from loadtest.harness.service import load_profile
from serve_app.config.check import check_serve_config
from serve_app.config.models import VLM_POOL_AUTOSCALING_POLICY

SAMPLES = [
    PoolSample(-10.0, 1, 0, 0),
    PoolSample(-2.0, 1, 0, 0),
    PoolSample(1.5, 1, 1, 0),
    PoolSample(4.0, 2, 0, 0),
    PoolSample(6.0, 2, 1, 0),
    PoolSample(9.0, 3, 0, 0),
    PoolSample(35.0, 2, 0, 1),
    PoolSample(41.0, 1, 0, 0),
]


def pool_of(document: dict) -> dict:  # type: ignore[type-arg]
    app = document["applications"][0]
    return next(d for d in app["deployments"] if d["name"] == "VLMPool")  # type: ignore[no-any-return]


@pytest.mark.parametrize("policy", ["default", "signals"])
def test_both_runs_share_everything_but_the_policy(policy: str) -> None:
    profile = load_profile(DEFAULT_CONFIG)
    document = run_document(
        profile,
        policy,
        port=8123,
        delay_ms=600,
        slots=1,
        target_ongoing_requests=4,
        max_ongoing_requests=8,
    )
    autoscaling = pool_of(document)["autoscaling_config"]
    assert ("policy" in autoscaling) == (policy == "signals")
    if policy == "signals":
        assert autoscaling["policy"]["policy_function"] == VLM_POOL_AUTOSCALING_POLICY
    assert autoscaling["target_ongoing_requests"] == 4
    assert pool_of(document)["max_ongoing_requests"] == 8
    args = document["applications"][0]["args"]
    assert args["engine"]["faults"] == {"delay_ms": 600, "slots": 1, "error_rate": 0.0}
    assert document["http_options"]["port"] == 8123
    assert check_serve_config(document, "bench") == []
    assert "faults" not in profile["applications"][0]["args"]["engine"]  # the profile untouched


def test_unknown_policies_and_profiles_without_one_are_refused() -> None:
    profile = load_profile(DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="unknown policy"):
        run_document(
            profile,
            "magic",
            port=1,
            delay_ms=1,
            slots=1,
            target_ongoing_requests=2,
            max_ongoing_requests=4,
        )
    del pool_of(profile)["autoscaling_config"]["policy"]
    with pytest.raises(ValueError, match="names no policy"):
        run_document(
            profile,
            "signals",
            port=1,
            delay_ms=1,
            slots=1,
            target_ongoing_requests=2,
            max_ongoing_requests=4,
        )


def test_the_step_schedule_is_low_then_high() -> None:
    schedule = step_schedule(0.5, 10.0, 3.0, 30.0, seed=17)
    assert schedule == step_schedule(0.5, 10.0, 3.0, 30.0, seed=17)
    low = [t for t in schedule if t < 10.0]
    high = [t for t in schedule if t >= 10.0]
    assert schedule == sorted(schedule) and schedule[-1] < 40.0
    assert len(low) < 15 and 60 < len(high) < 120


def test_times_from_the_step() -> None:
    assert first_time(SAMPLES, 1, running=False) == 1.5
    assert first_time(SAMPLES, 1, running=True) == 4.0
    assert first_time(SAMPLES[:3], 1, running=True) is None
    assert not scaled_before_step(SAMPLES, 1)
    assert scaled_before_step([PoolSample(-3.0, 1, 1, 0), *SAMPLES], 1)
    assert back_to_min(SAMPLES, 1, end_s=30.0) == 11.0
    assert back_to_min(SAMPLES[:-1], 1, end_s=30.0) is None


def test_the_timeline_keeps_changes_only() -> None:
    changes = timeline(SAMPLES)
    assert [c["t"] for c in changes] == [-10.0, 1.5, 4.0, 6.0, 9.0, 35.0, 41.0]
    assert format_timeline(changes).startswith("-10.0s 1, +1.5s 1+1↑, +4.0s 2, ")
    assert "+35.0s 2-1↓" in format_timeline(changes)


def test_summary_and_ratios() -> None:
    outcomes = [
        Outcome(sent_s=2.0, latency_ms=700.0, status=200),
        Outcome(sent_s=11.0, latency_ms=900.0, status=200),
        Outcome(sent_s=12.0, latency_ms=3000.0, status=200),
        Outcome(sent_s=13.0, status=503),
        Outcome(sent_s=14.0, failure="timeout"),
    ]
    run = summarise_run(outcomes, SAMPLES, step_s=10.0, end_s=40.0, min_replicas=1)
    assert run["errors"] == 2 and run["by_status"] == {"200": 3, "503": 1, "client_timeout": 1}
    assert run["latency_ramp_ms"]["n"] == 2 and run["latency_ramp_ms"]["p95"] == 3000.0
    assert run["latency_low_ms"]["n"] == 1
    assert run["peak_replicas"] == 3 and run["peak_at_s"] == 9.0
    other = {**run, "scale_up_decided_s": 3.0, "first_scale_up_s": 8.0}
    other["latency_ramp_ms"] = {**run["latency_ramp_ms"], "p50": 900.0, "p95": 1500.0}
    factors = ratios({"default": other, "signals": run})
    assert factors["scale_up_decided_s"] == 2.0 and factors["first_scale_up_s"] == 2.0
    assert factors["ramp_p95_ms"] == 0.5
