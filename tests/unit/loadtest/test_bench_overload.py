"""The pure helpers of ``loadtest.bench_overload`` and the harness parts it uses (no service)."""

from __future__ import annotations

import itertools
import statistics

import pytest

from loadtest.bench_overload import (
    compress_timeline,
    controller_rise_s,
    format_timeline,
    goal_lines,
    level_rise_s,
    level_shares,
    outcome_key,
    p95_ratio,
    phase_document,
    recovery_s,
    render,
    summarise_phase,
)
from loadtest.harness.load import Outcome, poisson_schedule
from loadtest.harness.stats import latency_summary
from loadtest.harness.status import Sample, replica_counts, sample_from_status


def test_poisson_schedule_is_seeded_sorted_and_bounded() -> None:
    """Same seed, same schedule; offsets rise and stay inside the window."""
    first = poisson_schedule(10.0, 60.0, seed=3)
    assert first == poisson_schedule(10.0, 60.0, seed=3)
    assert first != poisson_schedule(10.0, 60.0, seed=4)
    assert first == sorted(first)
    assert first[0] > 0 and first[-1] < 60.0


def test_poisson_schedule_rate_and_gaps() -> None:
    """About rate x duration arrivals with exponential gaps (mean 1/rate, CV near 1)."""
    offsets = poisson_schedule(20.0, 500.0, seed=1)
    assert 9000 < len(offsets) < 11000
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.05, rel=0.05)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize(("rate", "duration"), [(0.0, 10.0), (5.0, 0.0), (-1.0, 5.0)])
def test_poisson_schedule_empty(rate: float, duration: float) -> None:
    """No rate or no time: no arrivals."""
    assert poisson_schedule(rate, duration, seed=0) == []


def _ok(sent: float, ms: float, level: int = 0) -> Outcome:
    return Outcome(sent_s=sent, latency_ms=ms, status=200, level=level)


def test_summarise_phase_counts_and_percentiles() -> None:
    """Status counts, client failures, throughput, shares and Retry-After accounting."""
    outcomes = [_ok(float(i), 100.0 * (i + 1), level=0 if i < 6 else 1) for i in range(8)]
    outcomes += [
        Outcome(sent_s=1.0, latency_ms=5.0, status=503, retry_after=True),
        Outcome(sent_s=2.0, latency_ms=5.0, status=429, retry_after=False),
        Outcome(sent_s=3.0, latency_ms=60000.0, status=504, error_code="deadline"),
        Outcome(sent_s=4.0, failure="timeout"),
    ]
    summary = summarise_phase(outcomes, duration_s=10.0)
    assert summary["sent"] == 12
    assert summary["ok"] == 8
    assert summary["by_status"] == {
        "200": 8,
        "429": 1,
        "503": 1,
        "504": 1,
        "client_timeout": 1,
    }
    assert summary["error_codes"] == {"deadline": 1}
    assert summary["shed_without_retry_after"] == 1
    assert summary["errors_without_retry_after"] == 2
    assert summary["ok_level_shares"] == {"L0": 0.75, "L1": 0.25}
    assert summary["latency_ok_ms"]["n"] == 8
    assert summary["latency_ok_ms"]["p50"] == 450.0
    assert summary["latency_ok_ms"]["p99"] == 800.0
    assert summary["latency_answered_ms"]["n"] == 11
    # The 504 finished at 3 + 60 s: throughput is over that wall time.
    assert summary["wall_s"] == 63.0
    assert summary["throughput_ok_per_s"] == round(8 / 63.0, 2)
    # All 200s finished inside the 10 s window (the last at 7 + 0.8 s).
    assert summary["throughput_ok_in_window_per_s"] == 0.8


def test_summaries_of_nothing() -> None:
    """Empty inputs give empty figures, never an exception."""
    assert latency_summary([])["p95"] is None
    assert level_shares([]) == {}
    assert summarise_phase([], duration_s=5.0)["throughput_ok_per_s"] == 0.0


def test_outcome_key() -> None:
    """Statuses by number, failures under client_*."""
    assert outcome_key(Outcome(0.0, status=503)) == "503"
    assert outcome_key(Outcome(0.0, failure="timeout")) == "client_timeout"
    assert outcome_key(Outcome(0.0)) == "client_error"


def _sample(t: float, level: int | None, load: float = 0.5, ok: bool = True) -> Sample:
    return Sample(t_s=t, ok=ok, poll_ms=3.0, level=level, load=load, dominant="cpu")


def test_compress_timeline_keeps_changes_only() -> None:
    """Repeats and failed polls drop out; each change keeps its load and dominant signal."""
    samples = [
        _sample(0.0, 0),
        _sample(0.5, 0),
        _sample(1.0, None, ok=False),
        _sample(1.5, 1, 0.93),
        _sample(2.0, 1),
        _sample(2.5, 3, 1.71),
        _sample(3.0, 0, 0.1),
    ]
    changes = compress_timeline(samples)
    assert [(c["t_s"], c["level"]) for c in changes] == [(0.0, 0), (1.5, 1), (2.5, 3), (3.0, 0)]
    text = format_timeline(changes)
    assert text.startswith("t=0.0s L0 (load 0.50 cpu), t=1.5s L1 (load 0.93 cpu)")
    assert format_timeline([]) == "(no status samples)"


def test_recovery_time() -> None:
    """Time from the end of arrivals to the level-0 sample after the last raised one."""
    samples = [_sample(t, 2) for t in (58.0, 59.0, 60.0, 61.0)]
    samples += [_sample(62.0, 1), _sample(66.5, 0), _sample(67.0, 0)]
    assert recovery_s(samples, end_s=60.0) == 6.5
    assert recovery_s(samples[:5], end_s=60.0) is None  # never back
    calm = [_sample(t, 0) for t in (59.0, 60.2, 61.0)]
    assert recovery_s(calm, end_s=60.0) == 0.0  # never raised
    early = [_sample(50.0, 1), *calm]
    assert recovery_s(early, end_s=60.0) == 0.2
    assert recovery_s([], end_s=1.0) is None


def test_status_parsing() -> None:
    """A /v1/status body becomes a sample with RUNNING replica counts."""
    body = {
        "degradation": {"level": 2, "load": 1.02, "dominant": "graph_queue"},
        "in_flight": 17,
        "replicas": {
            "VLMPool": {"status": "UPSCALING", "replicas": {"RUNNING": 1, "STARTING": 1}},
            "Ingress": {"status": "HEALTHY", "replicas": {"RUNNING": 1}},
        },
    }
    sample = sample_from_status(1.234, 4.56, body)
    assert (sample.level, sample.load, sample.dominant, sample.in_flight) == (
        2,
        1.02,
        "graph_queue",
        17,
    )
    assert sample.replicas == {"VLMPool": 1, "Ingress": 1}
    assert replica_counts({"error": "unreachable"}) == {}
    assert sample_from_status(0.0, 1.0, {"degradation": {"level": None}}).level is None


def test_phase_document_switches_controller_and_cache() -> None:
    """A deep copy with a port, the memory cache and the controller on or off."""
    document = {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "args": {"cache": {"backend": "sqlite"}},
                "deployments": [
                    {"name": "Ingress"},
                    {"name": "LoadController", "user_config": {"enabled": True}},
                ],
            }
        ],
    }
    off = phase_document(document, enabled=False, port=1234)
    assert off["http_options"] == {"host": "127.0.0.1", "port": 1234}
    assert off["applications"][0]["args"]["cache"]["backend"] == "memory"
    assert off["applications"][0]["deployments"][1]["user_config"]["enabled"] is False
    assert document["applications"][0]["deployments"][1]["user_config"]["enabled"] is True
    on = phase_document(document, enabled=True, port=1)
    assert on["applications"][0]["deployments"][1]["user_config"]["enabled"] is True
    with pytest.raises(ValueError, match="LoadController"):
        phase_document({"applications": [{"deployments": []}]}, enabled=True, port=1)


def test_render_smoke() -> None:
    """The report prints every phase side by side with its timeline."""
    phase = summarise_phase([_ok(0.1, 200.0), Outcome(0.2, 5.0, 503, retry_after=True)], 1.0)
    phase.update(phase="on", rate=3.0, timeline=[{"t_s": 0.0, "level": 0, "load": 0.2}])
    results = {
        "config": "x.yaml",
        "cpus": 2,
        "machine": "test",
        "calibration_ok_per_s": 1.0,
        "rate": 3.0,
        "rate_source": "3 x sustained",
        "duration_s": 1.0,
        "seed": 7,
        "phases": [phase],
        "ray_processes_before": 0,
        "ray_processes_after": 0,
    }
    text = render(results)
    assert "controller on" in text and "503" in text and "t=0.0s L0" in text


def test_refusals_are_counted_by_retry_after_and_json_body() -> None:
    """Issue 17: a refusal must carry both Retry-After and our JSON error body."""
    outcomes = [
        Outcome(0.1, 5.0, 503, retry_after=True, error_code="unavailable"),
        Outcome(0.2, 5.0, 503, retry_after=False),  # Serve's plain text
        Outcome(0.3, 5.0, 503, retry_after=True),  # Retry-After but a text body
        Outcome(0.4, 5.0, 429, retry_after=True, error_code="too_many_requests"),
    ]
    summary = summarise_phase(outcomes, duration_s=1.0)
    assert summary["shed"] == 4 and summary["shed_with_retry_after_and_json"] == 2
    assert summary["shed_without_json"] == 2 and summary["shed_without_retry_after"] == 1
    summary["phase"] = "off"
    assert goal_lines([summary]) == [
        "  goal (off): refusals with Retry-After and the JSON body: 2 of 4 (NOT met)"
    ]


def test_the_p95_goal_is_the_ratio_to_the_unloaded_p95_and_the_rise_is_timed() -> None:
    phase = {
        "phase": "on",
        "latency_ok_ms": {"p95": 900.0},
        "unloaded_ms": {"p95": 500.0},
        "shed": 0,
        "shed_with_retry_after_and_json": 0,
    }
    assert p95_ratio(phase) == 1.8
    assert p95_ratio({"latency_ok_ms": {"p95": 1.0}}) is None
    assert goal_lines([phase])[0].endswith("1.80x (met)")
    samples = [_sample(-0.5, 1), _sample(0.2, 0), _sample(0.7, 0), _sample(1.2, 2)]
    assert level_rise_s(samples) == 1.2
    assert level_rise_s(samples[:3]) is None


def test_the_controllers_own_clock_times_the_rise() -> None:
    transitions = [
        {"at": 95.0, "from": 0, "to": 2},  # before the arrivals: a warm-up's
        {"at": 99.0, "from": 2, "to": 0},
        {"at": 100.8, "from": 0, "to": 1},
        {"at": 101.3, "from": 1, "to": 3},
    ]
    assert controller_rise_s(transitions, start_wall=100.0) == 0.8
    assert controller_rise_s(transitions[:2], start_wall=100.0) is None
    assert controller_rise_s([], start_wall=1.0) is None


def test_a_200_records_its_time_inside_the_ingress_and_in_the_engine() -> None:
    """The phase summary says where the 200s' time went; refusals and odd bodies add none."""
    import httpx

    from loadtest.harness.load import _record_response

    def answered(status: int, body: object) -> Outcome:
        outcome = Outcome(sent_s=0.0, latency_ms=900.0)
        _record_response(outcome, httpx.Response(status, json=body))
        return outcome

    meta = {"degradation_level": 3, "cache": {"hit": False}}
    ok = answered(200, {"meta": {**meta, "timings_ms": {"total": 640.5, "engine": 512}}})
    assert (ok.status, ok.level, ok.server_ms, ok.engine_ms) == (200, 3, 640.5, 512.0)
    odd = answered(200, {"meta": {**meta, "timings_ms": {"total": "soon"}}})
    assert odd.server_ms is None and odd.engine_ms is None
    refused = answered(503, {"error": {"code": "unavailable"}})
    assert refused.server_ms is None and refused.error_code == "unavailable"
    summary = summarise_phase([ok, odd, refused], duration_s=10.0)
    assert summary["server_ok_ms"]["n"] == 1 and summary["server_ok_ms"]["p50"] == 640.5
    assert summary["engine_ok_ms"]["p95"] == 512.0
