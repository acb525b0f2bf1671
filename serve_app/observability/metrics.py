"""The service's own Prometheus metrics, through ``ray.serve.metrics``.

Serve adds the deployment, replica and application tags, and Ray's metrics agent
exports every series with a ``ray_`` prefix (``ray_memeserve_requests_total`` …) on
the node's metrics port. Tag values come from closed sets (route templates, error
codes, stage names), so no series grows with traffic. Metrics are created on first use
in each process.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ray.serve import metrics

# Milliseconds: from a resent-bytes hit (~5 ms) to a slow GPU answer (~60 s).
_LATENCY_BOUNDARIES_MS = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
]  # fmt: skip

ROUTES = frozenset(
    {
        "/v1/memes/analyze",
        "/v1/memes/analyze/batch",
        "/v1/memes/analyze/stream",
        "/v1/status",
        "/healthz",
        "/readyz",
        "/",
        "/openapi.json",
        "/docs",
    }
)


def _tags(*keys: str) -> Any:
    # Ray annotates tag_keys as a 1-tuple; any tuple of names is accepted.
    return keys


@functools.cache
def _requests() -> metrics.Counter:
    return metrics.Counter(
        "memeserve_requests",
        description="HTTP requests answered by the ingress, by route and status code.",
        tag_keys=_tags("route", "status"),
    )


@functools.cache
def _errors() -> metrics.Counter:
    return metrics.Counter(
        "memeserve_errors",
        description="Errors returned (requests, batch items, stream error events), by "
        "status and error code: 4xx are rejected inputs or shedding, 5xx failures.",
        tag_keys=_tags("status", "code"),
    )


@functools.cache
def _cache_lookups() -> metrics.Counter:
    return metrics.Counter(
        "memeserve_cache_lookups",
        description="Fingerprint library lookups: kind upload (resent bytes, no decode) or "
        "fingerprint; result exact, near or miss.",
        tag_keys=_tags("kind", "result"),
    )


@functools.cache
def _stage_latency() -> metrics.Histogram:
    return metrics.Histogram(
        "memeserve_stage_latency_ms",
        description="Time spent per stage of an analysed meme (preprocess, engine, "
        "structure, total), in milliseconds.",
        boundaries=_LATENCY_BOUNDARIES_MS,
        tag_keys=_tags("stage", "cache"),
    )


@functools.cache
def _engine_tokens() -> metrics.Counter:
    return metrics.Counter(
        "memeserve_engine_tokens",
        description="Tokens the engine read (prompt) and wrote (output), by engine.",
        tag_keys=_tags("engine", "kind"),
    )


def route_label(path: str) -> str:
    """The route template for a path; ``other`` for anything unknown (bounded labels)."""
    return path if path in ROUTES else "other"


def count_request(path: str, status: int) -> None:
    """One HTTP request answered with ``status``."""
    _requests().inc(tags={"route": route_label(path), "status": str(status)})


def count_error(status: int, code: str) -> None:
    """One error body sent, whatever carried it (response, batch item, stream event)."""
    _errors().inc(tags={"status": str(status), "code": code})


def count_cache_lookup(kind: str, result: str) -> None:
    """One library lookup: ``kind`` upload|fingerprint (the store), hot (an Ingress's copy),
    ``result`` exact|near|miss."""
    _cache_lookups().inc(tags={"kind": kind, "result": result})


def observe_stages(timings_ms: Mapping[str, float], cache: str) -> None:
    """Each stage time of one answered meme; ``cache`` is its match (exact|near|miss)."""
    histogram = _stage_latency()
    for stage, value in timings_ms.items():
        if value > 0 or stage == "total":
            histogram.observe(float(value), tags={"stage": stage, "cache": cache})


def count_tokens(engine: str, prompt: int | None, output: int | None) -> None:
    """Tokens of one engine call; engines without tokens (lite) report None."""
    counter = _engine_tokens()
    if prompt:
        counter.inc(prompt, tags={"engine": engine, "kind": "prompt"})
    if output:
        counter.inc(output, tags={"engine": engine, "kind": "output"})
