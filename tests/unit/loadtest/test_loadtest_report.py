"""loadtest.report: parsing Locust's CSVs and the status timeline, summary, chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import report
from loadtest.run_loadtest import parse_duration, shape_params

PCTS = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    + ",".join(PCTS)
)
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,"
    + ",".join(PCTS)
    + ",Total Request Count,"
    "Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)
T0 = 1_700_000_000


def _stats_row(kind: str, name: str, n: int, fails: int, rps: float, pcts: tuple) -> str:
    cells = [kind, name, n, fails, pcts[0], 123.4, 10, pcts[-1], 900, rps, fails / 60, *pcts]
    return ",".join(str(c) for c in cells)


def _history_row(ts: int, users: int, name: str, rps: float, fails: float, p50, p95) -> str:
    pcts = [p50, p50, p50, p50, p95, p95, p95, p95, p95, p95, p95]
    cells = [ts, users, "" if name == "Aggregated" else "POST", name, rps, fails, *pcts]
    return ",".join(str(c) for c in [*cells, 10, 0, p50, 100.0, 5, 900, 800])


def _status(ts: float, level: int, load: float, hits: int, lookups: int, vlm: int) -> dict:
    return {
        "degradation": {"level": level, "load": load},
        "in_flight": 3,
        "cache": {
            "hits": hits,
            "lookups": lookups,
            "exact_hits": hits // 2,
            "near_hits": hits - hits // 2,
            "upload_hits": 0,
            "misses": lookups - hits,
            "hit_ratio": hits / lookups if lookups else 0.0,
        },
        "replicas": {
            "VLMPool": {"status": "HEALTHY", "replicas": {"RUNNING": vlm, "STARTING": 1}},
            "Preprocessor": {"status": "HEALTHY", "replicas": {"RUNNING": 1}},
            "Ingress": {"status": "HEALTHY", "replicas": {"RUNNING": 1}},
        },
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A synthetic output folder: stats, history, failures and a status timeline."""
    (tmp_path / "locust_stats.csv").write_text(
        "\n".join(
            [
                STATS_HEADER,
                _stats_row("POST", "/v1/memes/analyze", 100, 5, 1.5, (400,) * 5 + (900,) * 6),
                _stats_row("POST", "/v1/memes/analyze/batch", 10, 0, 0.2, (1200,) * 11),
                _stats_row("POST", "/v1/memes/analyze/stream", 10, 1, 0.2, (600,) * 11),
                _stats_row("", "Aggregated", 120, 6, 1.9, (450,) * 5 + (950,) * 3 + (1300,) * 3),
            ]
        )
        + "\n"
    )
    history = [HISTORY_HEADER]
    for second in range(6):
        p50, p95 = ("N/A", "N/A") if second == 0 else (300 + 20 * second, 800 + 50 * second)
        users = 2 if second < 3 else 4
        history.append(_history_row(T0 + second, users, "Aggregated", second * 0.5, 0.1, p50, p95))
        history.append(_history_row(T0 + second, users, "/v1/memes/analyze", 9.0, 0.0, 111, 222))
    (tmp_path / "locust_stats_history.csv").write_text("\n".join(history) + "\n")
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "POST,/v1/memes/analyze,CatchResponseError('shed 503'),3,1,2\n"
        "POST,/v1/memes/analyze,CatchResponseError('shed 429'),1,1,2\n"
        "POST,/v1/memes/analyze/stream,CatchResponseError('shed 503'),1,1,2\n"
        "POST,/v1/memes/analyze,\"CatchResponseError('shed 503 without Retry-After')\",1,1,2\n"
    )
    samples = [
        report.status_sample(T0 + 0.2, _status(0, 0, 0.1, 0, 0, 1)),
        report.status_sample(T0 + 1.2, _status(0, 0, 0.5, 1, 10, 1)),
        report.status_sample(T0 + 2.2, None, error="ReadTimeout"),
        report.status_sample(T0 + 3.2, _status(0, 1, 0.9, 5, 30, 2)),
        report.status_sample(T0 + 4.2, _status(0, 1, 0.85, 8, 40, 2)),
        report.status_sample(T0 + 5.2, _status(0, 0, 0.3, 10, 50, 2)),
    ]
    (tmp_path / "status_timeline.jsonl").write_text(
        "".join(json.dumps(sample) + "\n" for sample in samples)
    )
    return tmp_path


def test_status_sample_counts_running_replicas_only() -> None:
    sample = report.status_sample(5.0, _status(0, 2, 1.2, 3, 9, 2))
    assert sample["ok"] is True
    assert sample["level"] == 2 and sample["load"] == 1.2 and sample["in_flight"] == 3
    assert sample["replicas"] == {"VLMPool": 2, "Preprocessor": 1, "Ingress": 1}
    assert sample["cache"]["hits"] == 3 and sample["cache"]["lookups"] == 9
    failed = report.status_sample(6.0, None, error="boom")
    assert failed == {"ts": 6.0, "ok": False, "error": "boom"}


def test_route_stats_reads_percentiles_per_route(run_dir: Path) -> None:
    stats = report.route_stats(report.read_csv(run_dir / "locust_stats.csv"))
    assert set(stats) == {
        "/v1/memes/analyze",
        "/v1/memes/analyze/batch",
        "/v1/memes/analyze/stream",
        "Aggregated",
    }
    analyze = stats["/v1/memes/analyze"]
    assert analyze["requests"] == 100 and analyze["failures"] == 5
    assert analyze["p50"] == 400 and analyze["p95"] == 900 and analyze["p99"] == 900
    assert stats["Aggregated"]["p99"] == 950 and stats["Aggregated"]["rps"] == 1.9


def test_failures_are_split_by_status_and_contract_breaks(run_dir: Path) -> None:
    failures = report.classify_failures(report.read_csv(run_dir / "locust_failures.csv"))
    assert failures["by_status"] == {"429": 1, "503": 4}
    assert failures["shed_without_retry_after"] == 1
    assert len(failures["other"]) == 1
    assert "without Retry-After" in failures["other"][0]["error"]
    schema = report.classify_failures(
        [{"Method": "POST", "Name": "x", "Error": "schema: Analysis invalid", "Occurrences": "2"}]
    )
    assert schema["by_status"] == {} and schema["other"][0]["occurrences"] == 2


def test_history_series_skips_other_routes_and_na(run_dir: Path) -> None:
    rows = report.read_csv(run_dir / "locust_stats_history.csv")
    series = report.history_series(rows)
    assert series["ts"] == [T0 + s for s in range(6)]
    assert series["p50"][0] is None and series["p50"][1:] == [320, 340, 360, 380, 400]
    assert series["p95"][5] == 1050
    assert series["users"] == [2, 2, 2, 4, 4, 4]
    route = report.history_series(rows, "/v1/memes/analyze")
    assert route["rps"] == [9.0] * 6


def test_cache_delta_uses_first_and_last_good_samples(run_dir: Path) -> None:
    samples = report.read_timeline(run_dir / "status_timeline.jsonl")
    delta = report.cache_delta(samples)
    assert delta["hits"] == 10 and delta["lookups"] == 50
    assert delta["hit_ratio"] == pytest.approx(0.2)
    assert delta["samples"] == 5
    assert report.cache_delta([])["hit_ratio"] is None


def test_timelines_keep_changes_only(run_dir: Path) -> None:
    samples = report.read_timeline(run_dir / "status_timeline.jsonl")
    assert report.level_timeline(samples, T0) == [
        {"t_s": 0.2, "level": 0},
        {"t_s": 3.2, "level": 1},
        {"t_s": 5.2, "level": 0},
    ]
    assert report.replica_timeline(samples, T0) == [
        {"t_s": 0.2, "VLMPool": 1, "Preprocessor": 1},
        {"t_s": 3.2, "VLMPool": 2, "Preprocessor": 1},
    ]


def test_summarise_combines_everything(run_dir: Path) -> None:
    summary = report.summarise(run_dir, t0=T0, shape="step", url="http://x")
    assert summary["shape"] == "step" and summary["url"] == "http://x"
    assert summary["requests"] == 120 and summary["failures"] == 6
    assert summary["throughput_rps"] == 1.9
    assert summary["duration_s"] == 5.0
    assert summary["max_users"] == 4
    assert summary["latency_ms"]["overall"]["p50"] == 450
    assert summary["latency_ms"]["overall"]["p99"] == 950
    assert summary["latency_ms"]["routes"]["/v1/memes/analyze/batch"]["p95"] == 1200
    assert summary["failures_by_status"] == {"429": 1, "503": 4}
    assert summary["shed_without_retry_after"] == 1
    assert summary["cache"]["hit_ratio"] == pytest.approx(0.2)
    assert summary["status_samples"] == 6 and summary["status_poll_errors"] == 1
    assert summary["max_level"] == 1
    assert summary["peak_replicas"]["VLMPool"] == 2
    json.dumps(summary)  # serialisable as summary.json
    text = report.format_summary(summary)
    assert "/v1/memes/analyze/batch" in text and "hit ratio 20.0%" in text
    assert "503: 4" in text and "WITHOUT Retry-After: 1" in text


def test_summarise_of_an_empty_folder_has_zeroes(tmp_path: Path) -> None:
    summary = report.summarise(tmp_path)
    assert summary["requests"] == 0 and summary["latency_ms"]["routes"] == {}
    assert summary["level_timeline"] == [] and summary["cache"]["hit_ratio"] is None
    assert "no samples" in report.format_summary(summary)


def test_render_chart_writes_a_png_with_four_panels(run_dir: Path) -> None:
    path = run_dir / "chart" / "loadtest.png"
    titles = report.render_chart(run_dir, path, t0=T0)
    assert len(titles) == 4
    assert titles[0].startswith("Latency") and titles[3] == "RUNNING replicas"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # four drawn panels, not an empty canvas


@pytest.mark.parametrize(
    ("text", "seconds"), [("75", 75), ("75s", 75), ("2m", 120), ("1m30s", 90), ("1h", 3600)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "s10"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_shape_params_size_the_shapes() -> None:
    step = shape_params("step", 7, 2.0, 60.0)
    assert step == {"steps": 3, "step_users": 3, "step_duration_s": 20.0, "spawn_rate": 2.0}
    spike = shape_params("spike", 8, 1.0, 90.0)
    assert spike["base_users"] == 2 and spike["spike_users"] == 8
    assert spike["spike_at_s"] == 30.0 and spike["total_s"] == 90.0 and spike["spawn_rate"] == 8
    assert shape_params("soak", 4, 1.0, 300.0)["duration_s"] == 300.0
    assert shape_params("none", 4, 1.0, 300.0) == {}
