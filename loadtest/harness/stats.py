"""Percentiles and latency summaries, as every benchmark reports them."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence.

    The rank is ``round(q / 100 * n + 0.5)``: ceil(q·n/100) where that is fractional;
    where it is a whole number k, Python's half-to-even rounding picks k or k + 1.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarise(values: Sequence[float]) -> dict[str, float]:
    """n, p50 (median), p95 and max of a non-empty sequence, one decimal."""
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p95": round(percentile(values, 95), 1),
        "max": round(max(values), 1),
    }


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99 and max (ms, one decimal) of ``values``; None figures if empty."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }
