"""Traces, metrics and logs of a real graph, with Serve's tracing on (as the profiles ship).

One request with a ``traceparent`` must give one trace through every deployment, with
the stage attributes; Ray's Prometheus endpoint must show the service's counters and
histograms; the JSON log lines must carry the request and trace ids.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.app import serve_config, start_declarative, with_own_library

DEPLOYMENT_SPANS = {
    "memeserve.http": "Ingress",
    "memeserve.analyze": "Ingress",
    "memeserve.preprocess": "Preprocessor",
    "memeserve.cache_lookup": "FingerprintStore",
    "memeserve.engine": "VLMPool",
    "memeserve.structure": "Structurer",
}


@pytest.fixture(scope="module")
def traces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans")


@pytest.fixture(scope="module")
def base_url(traces_dir: Path) -> Iterator[str]:
    # Read by every Ray process this module starts (they inherit the environment).
    env = {"MEMESERVE_TRACES_DIR": str(traces_dir), "RAY_metrics_report_interval_ms": "1000"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    document = serve_config(with_own_library({}), {"enabled": False})
    document["tracing_config"] = {
        "enabled": True,
        "exporter_import_path": "serve_app.observability.tracing:span_processors",
        "sampling_ratio": 1.0,
    }
    try:
        yield from start_declarative(document)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def spans_of(traces_dir: Path, trace_id: str) -> list[dict[str, Any]]:
    spans = []
    for path in traces_dir.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            span = json.loads(line)
            if span["context"]["trace_id"] == f"0x{trace_id}":
                spans.append({**span, "file": path.name})
    return spans


def wait_for_spans(traces_dir: Path, trace_id: str, names: set[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        spans = spans_of(traces_dir, trace_id)
        if names <= {span["name"] for span in spans}:
            return spans
        assert time.monotonic() < deadline, f"missing {names - {s['name'] for s in spans}}"
        time.sleep(0.2)


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"] == name]


def test_one_trace_crosses_every_deployment(base_url: str, traces_dir: Path) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    data = meme_bytes(MemeSpec(template=21, top="你说得对，但是"))
    response = httpx.post(
        f"{base_url}/v1/memes/analyze",
        files={"image": ("m.png", data)},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "x-request-id": "traced-1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-trace-id"] == trace_id
    spans = wait_for_spans(traces_dir, trace_id, set(DEPLOYMENT_SPANS))
    # Each process writes a span when it ends: a parent (the Ingress's request span) can
    # reach its file after a child another replica wrote at once. Wait for the tree.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ids = {span["context"]["span_id"] for span in spans}
        if all(span["parent_id"] in ids | {f"0x{parent_id}"} for span in spans):
            break
        time.sleep(0.2)
        spans = spans_of(traces_dir, trace_id)

    # A tree under the caller's span: every parent is the caller's span or in the trace.
    ids = {span["context"]["span_id"] for span in spans}
    for span in spans:
        assert span["parent_id"] in ids | {f"0x{parent_id}"}, span["name"]
    # Each stage ran in its own deployment's replica, in its own process (file).
    files: dict[str, set[str]] = {}
    for name, deployment in DEPLOYMENT_SPANS.items():
        for span in by_name(spans, name):
            assert span["attributes"]["memeserve.deployment"] == deployment, span
            files.setdefault(deployment, set()).add(span["file"])
    assert len(set.union(*files.values())) == len(files) == 5, files
    lookups = by_name(spans, "memeserve.cache_lookup")
    assert {span["attributes"]["memeserve.cache.kind"] for span in lookups} == {
        "upload",
        "fingerprint",
    }

    (analyze,) = by_name(spans, "memeserve.analyze")
    attributes = analyze["attributes"]
    assert attributes["request_id"] == "traced-1"
    assert attributes["memeserve.cache.hit"] is False
    assert attributes["memeserve.level"] == 0
    assert (attributes["memeserve.image.width"], attributes["memeserve.image.height"]) == (600, 600)
    assert attributes["memeserve.engine"] == "lite"
    (engine,) = by_name(spans, "memeserve.engine")
    assert engine["attributes"]["memeserve.engine"] == "lite"
    assert engine["attributes"]["memeserve.image.analysed_width"] > 0
    (http_span,) = by_name(spans, "memeserve.http")
    assert http_span["attributes"]["http.response.status_code"] == 200


def test_a_resent_meme_is_a_cache_hit_in_its_trace(base_url: str, traces_dir: Path) -> None:
    data = meme_bytes(MemeSpec(template=22, top="典中典"))
    ids = []
    for _ in range(2):
        response = httpx.post(
            f"{base_url}/v1/memes/analyze", files={"image": ("m.png", data)}, timeout=60
        )
        assert response.status_code == 200
        ids.append(response.headers["x-trace-id"])
    assert ids[0] != ids[1], "without a traceparent each request starts its own trace"
    spans = wait_for_spans(traces_dir, ids[1], {"memeserve.analyze", "memeserve.cache_lookup"})
    (analyze,) = by_name(spans, "memeserve.analyze")
    assert analyze["attributes"]["memeserve.cache.hit"] is True
    assert not by_name(spans, "memeserve.engine"), "a library answer never reaches the engine"


def test_an_error_is_recorded_on_its_span(base_url: str, traces_dir: Path) -> None:
    trace_id = secrets.token_hex(16)
    response = httpx.post(
        f"{base_url}/v1/memes/analyze",
        files={"image": ("x.jpg", b"<html>not an image</html>")},
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        timeout=60,
    )
    assert response.status_code == 415
    spans = wait_for_spans(traces_dir, trace_id, {"memeserve.http", "memeserve.preprocess"})
    (http_span,) = by_name(spans, "memeserve.http")
    assert http_span["attributes"]["http.response.status_code"] == 415
    (preprocess,) = by_name(spans, "memeserve.preprocess")
    assert preprocess["status"]["status_code"] == "ERROR"


def _metrics_url() -> str:
    import ray

    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    return f"http://127.0.0.1:{port}/metrics"


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found.append((labels, float(match.group(2))))
    return found


def _total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in _samples(text, name)
        if all(found.get(key) == want for key, want in labels.items())
    )


def test_metrics_reach_prometheus(base_url: str) -> None:
    # The earlier tests sent analyses, a resend and a refused HTML upload; add a 422.
    assert httpx.post(f"{base_url}/v1/memes/analyze", json={}, timeout=30).status_code == 422
    url = _metrics_url()
    analyze = {"route": "/v1/memes/analyze"}
    wanted = {
        "analyze 200": ("ray_memeserve_requests_total", {**analyze, "status": "200"}),
        "analyze 415": ("ray_memeserve_requests_total", {**analyze, "status": "415"}),
        "rejected 415": ("ray_memeserve_errors_total", {"code": "unsupported_media_type"}),
        "rejected 422": ("ray_memeserve_errors_total", {"status": "422"}),
        # The resend: answered from the Ingress's hot copy (the store kept the first answer).
        "hot hit": ("ray_memeserve_cache_lookups_total", {"kind": "hot", "result": "exact"}),
        "fingerprint miss": (
            "ray_memeserve_cache_lookups_total",
            {"kind": "fingerprint", "result": "miss"},
        ),
        "engine latency": ("ray_memeserve_stage_latency_ms_count", {"stage": "engine"}),
        "total latency": ("ray_memeserve_stage_latency_ms_count", {"stage": "total"}),
        "level": ("ray_memeserve_degradation_level", {}),
    }
    deadline = time.monotonic() + 90
    while True:
        text = httpx.get(url, timeout=10).text
        missing = {
            what: series
            for what, (series, labels) in wanted.items()
            if not _samples(text, series)
            or (what != "level" and _total(text, series, **labels) < 1)
        }
        if not missing:
            break
        assert time.monotonic() < deadline, f"not exported: {missing}"
        time.sleep(1)
    assert _total(text, "ray_memeserve_degradation_level") == 0
    # One traced analysis and a meme sent twice answered 200 before this test.
    assert _total(text, "ray_memeserve_requests_total", **analyze, status="200") >= 3


def test_log_lines_are_json_with_request_and_trace_ids(base_url: str) -> None:
    import ray

    trace_id = secrets.token_hex(16)
    data = meme_bytes(MemeSpec(template=23, top="蚌埠住了"))
    response = httpx.post(
        f"{base_url}/v1/memes/analyze",
        files={"image": ("m.png", data)},
        headers={
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "x-request-id": "logged-1",
        },
        timeout=60,
    )
    assert response.status_code == 200
    logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
    deadline = time.monotonic() + 30
    while True:
        entries = [
            json.loads(line)
            for path in logs_dir.glob("worker-*.err")
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if '"request_id": "logged-1"' in line
        ]
        if any(entry["message"].startswith("analysed:") for entry in entries):
            break
        assert time.monotonic() < deadline, f"no JSON log line for the request: {entries}"
        time.sleep(0.5)
    analysed = next(entry for entry in entries if entry["message"].startswith("analysed:"))
    assert analysed["trace_id"] == trace_id
    assert analysed["deployment"] == "Ingress" and analysed["level"] == "INFO"
