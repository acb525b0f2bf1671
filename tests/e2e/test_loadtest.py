"""`make loadtest` for real, briefly: CPU profile, Locust step shape, report files."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.paths import ROOT

ROUTES = {"/v1/memes/analyze", "/v1/memes/analyze/batch", "/v1/memes/analyze/stream"}


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def test_short_step_load_test_writes_a_sane_report(tmp_path: Path) -> None:
    out = tmp_path / "loadtest"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.run_loadtest",
            "--shape",
            "step",
            "--users",
            "6",
            "--spawn-rate",
            "3",
            "--run-time",
            "30s",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "memeserve load test" in run.stdout and "hit ratio" in run.stdout

    for name in (
        "summary.json",
        "loadtest.png",
        "locust.html",
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "status_timeline.jsonl",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "loadtest.png").read_bytes()[:4] == b"\x89PNG"
    assert "<html" in (out / "locust.html").read_text("utf-8").lower()

    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["shape"] == "step" and summary["max_users"] == 6
    assert summary["requests"] > 0
    routes = summary["latency_ms"]["routes"]
    assert set(routes) == ROUTES
    for name, row in routes.items():
        assert row["requests"] > 0, name
        assert row["p50"] is not None and 0 < row["p50"] <= row["p95"] <= row["p99"], name
    # Only shedding (429/503 with Retry-After) may fail: no schema or other failures.
    assert summary["other_failures"] == []
    assert summary["shed_without_retry_after"] == 0
    assert set(summary["failures_by_status"]) <= {"429", "503"}
    assert summary["failures"] == sum(summary["failures_by_status"].values())
    assert summary["throughput_rps"] > 0
    # TransformedRepeats re-sends memes in another form: the library answers some.
    assert summary["cache"]["lookups"] > 0
    assert summary["cache"]["hits"] > 0 and summary["cache"]["hit_ratio"] > 0
    assert summary["status_samples"] >= 10
    assert summary["level_timeline"] and summary["replica_timeline"]
    assert summary["replica_timeline"][0]["VLMPool"] >= 1
    assert summary["replica_timeline"][0]["Preprocessor"] >= 1

    with (out / "locust_stats.csv").open(newline="", encoding="utf-8") as handle:
        names = {row["Name"] for row in csv.DictReader(handle)}
    assert ROUTES | {"Aggregated"} <= names
    # The service it started is gone again.
    assert not _listening(summary["url"])
