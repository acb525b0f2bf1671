"""Summary and chart of a Locust run against memeserve (pure functions over files).

Inputs are what :mod:`loadtest.run_loadtest` leaves in its output folder:

* ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv`` — Locust's
  ``--csv`` files (``--csv-full-history`` adds a row per route to the history);
* ``status_timeline.jsonl`` — one ``/v1/status`` sample per line, as written by
  :func:`status_sample`.

:func:`summarise` turns them into the ``summary.json`` document, :func:`render_chart`
into ``loadtest.png`` and :func:`format_summary` into the text printed at the end.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

AGGREGATED = "Aggregated"
CHART_DEPLOYMENTS = ("VLMPool", "Preprocessor")
CACHE_FIELDS = ("hits", "lookups", "exact_hits", "near_hits", "upload_hits", "misses")
_SHED = re.compile(r"\bshed (\d{3})\b")


# ----------------------------------------------------------------------------- parsing


def _number(value: str | None) -> float | None:
    """A CSV cell as a float; ``None`` for empty or ``N/A`` cells."""
    if value is None:
        return None
    value = value.strip()
    if not value or value.upper() == "N/A":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header; an absent file has none."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def route_stats(rows: Iterable[dict[str, str]]) -> dict[str, dict[str, float | None]]:
    """Per-route figures from ``locust_stats.csv`` (key ``Aggregated`` for all routes).

    Latencies are in ms, ``rps``/``fail_rps`` per second over the run.
    """
    out: dict[str, dict[str, float | None]] = {}
    for row in rows:
        name = row.get("Name", "")
        if not name:
            continue
        out[name] = {
            "requests": _number(row.get("Request Count")) or 0,
            "failures": _number(row.get("Failure Count")) or 0,
            "p50": _number(row.get("50%")),
            "p95": _number(row.get("95%")),
            "p99": _number(row.get("99%")),
            "avg": _number(row.get("Average Response Time")),
            "max": _number(row.get("Max Response Time")),
            "rps": _number(row.get("Requests/s")),
            "fail_rps": _number(row.get("Failures/s")),
        }
    return out


def classify_failures(rows: Iterable[dict[str, str]]) -> dict[str, Any]:
    """Failures from ``locust_failures.csv``: shedding by status, and everything else.

    A failure whose message is ``shed 429``/``shed 503`` counts under its status; one
    that says ``without Retry-After`` is shedding that broke the contract and goes to
    ``shed_without_retry_after`` (and, like every other message, to ``other``).
    """
    by_status: dict[str, int] = {}
    without_retry_after = 0
    other: list[dict[str, Any]] = []
    for row in rows:
        error = row.get("Error", "")
        count = int(_number(row.get("Occurrences")) or 0)
        match = _SHED.search(error)
        if match and "without Retry-After" not in error:
            by_status[match.group(1)] = by_status.get(match.group(1), 0) + count
            continue
        if match:
            without_retry_after += count
        other.append(
            {
                "method": row.get("Method", ""),
                "name": row.get("Name", ""),
                "error": error,
                "occurrences": count,
            }
        )
    return {
        "by_status": dict(sorted(by_status.items())),
        "shed_without_retry_after": without_retry_after,
        "other": other,
    }


def history_series(
    rows: Iterable[dict[str, str]], name: str = AGGREGATED
) -> dict[str, list[float | None]]:
    """Time series of one route (default: all) from ``locust_stats_history.csv``.

    Keys: ``ts`` (Unix seconds), ``users``, ``rps``, ``fail_rps``, ``p50``, ``p95``
    (Locust's percentiles over its recent window; ``None`` while there is no data).
    """
    series: dict[str, list[float | None]] = {
        key: [] for key in ("ts", "users", "rps", "fail_rps", "p50", "p95")
    }
    for row in rows:
        if row.get("Name") != name:
            continue
        ts = _number(row.get("Timestamp"))
        if ts is None:
            continue
        series["ts"].append(ts)
        series["users"].append(_number(row.get("User Count")))
        series["rps"].append(_number(row.get("Requests/s")))
        series["fail_rps"].append(_number(row.get("Failures/s")))
        series["p50"].append(_number(row.get("50%")))
        series["p95"].append(_number(row.get("95%")))
    return series


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The ``/v1/status`` samples of ``status_timeline.jsonl`` (blank lines skipped)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def status_sample(ts: float, body: dict[str, Any] | None, error: str | None = None) -> dict:
    """One timeline entry from a ``/v1/status`` body (``body=None``: the poll failed).

    Replica counts are the RUNNING replicas per deployment.
    """
    if body is None:
        return {"ts": round(ts, 3), "ok": False, "error": error}
    degradation = body.get("degradation") or {}
    cache = body.get("cache") or {}
    replicas: dict[str, int] = {}
    for name, entry in (body.get("replicas") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("replicas"), dict):
            replicas[name] = int(entry["replicas"].get("RUNNING", 0))
    return {
        "ts": round(ts, 3),
        "ok": True,
        "level": degradation.get("level"),
        "load": degradation.get("load"),
        "in_flight": body.get("in_flight"),
        "cache": {key: cache.get(key) for key in (*CACHE_FIELDS, "hit_ratio")},
        "replicas": replicas,
    }


# ----------------------------------------------------------------------------- summary


def cache_delta(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Library figures over the run: last minus first good sample, and the hit ratio."""
    good = [s for s in samples if s.get("ok") and isinstance(s.get("cache"), dict)]
    good = [s for s in good if s["cache"].get("lookups") is not None]
    if not good:
        return {"samples": 0, "hit_ratio": None}
    first, last = good[0]["cache"], good[-1]["cache"]
    delta = {key: (last.get(key) or 0) - (first.get(key) or 0) for key in CACHE_FIELDS}
    lookups = delta["lookups"]
    delta["hit_ratio"] = round(delta["hits"] / lookups, 4) if lookups > 0 else None
    delta["samples"] = len(good)
    return delta


def changes(points: Sequence[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """``points`` reduced to the first one and each one whose value differs from the last."""
    out: list[tuple[float, Any]] = []
    for t, value in points:
        if not out or out[-1][1] != value:
            out.append((t, value))
    return out


def level_timeline(samples: Sequence[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Degradation level changes: ``[{"t_s", "level"}]`` from ``t0``."""
    points = [(round(s["ts"] - t0, 1), s.get("level")) for s in samples if s.get("ok")]
    return [{"t_s": t, "level": level} for t, level in changes(points)]


def replica_timeline(
    samples: Sequence[dict[str, Any]], t0: float, deployments: Sequence[str] = CHART_DEPLOYMENTS
) -> list[dict[str, Any]]:
    """RUNNING replica count changes of ``deployments``: ``[{"t_s", name: count…}]``."""
    points = [
        (round(s["ts"] - t0, 1), tuple((s.get("replicas") or {}).get(d, 0) for d in deployments))
        for s in samples
        if s.get("ok")
    ]
    return [
        {"t_s": t, **dict(zip(deployments, counts, strict=True))} for t, counts in changes(points)
    ]


def _round(figures: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()}


def summarise(
    out_dir: Path, *, prefix: str = "locust", t0: float | None = None, **context: Any
) -> dict[str, Any]:
    """The ``summary.json`` document of the run whose files are in ``out_dir``.

    ``t0`` (Unix seconds) is the zero of the timelines; by default the earliest
    timestamp found. ``context`` (URL, shape, …) is copied into the document.
    """
    stats = route_stats(read_csv(out_dir / f"{prefix}_stats.csv"))
    history_rows = read_csv(out_dir / f"{prefix}_stats_history.csv")
    history = history_series(history_rows)
    failures = classify_failures(read_csv(out_dir / f"{prefix}_failures.csv"))
    samples = read_timeline(out_dir / "status_timeline.jsonl")
    if t0 is None:
        stamps = [*history["ts"], *(s["ts"] for s in samples)]
        t0 = min((t for t in stamps if t is not None), default=0.0)
    overall = stats.get(AGGREGATED, {"requests": 0, "failures": 0})
    routes = {name: _round(figures) for name, figures in stats.items() if name != AGGREGATED}
    good = [s for s in samples if s.get("ok")]
    levels = [s["level"] for s in good if s.get("level") is not None]
    peak: dict[str, int] = {}
    for sample in good:
        for name, count in (sample.get("replicas") or {}).items():
            peak[name] = max(peak.get(name, 0), count)
    ts = [t for t in history["ts"] if t is not None]
    return {
        **context,
        "duration_s": round(max(ts) - min(ts), 1) if len(ts) > 1 else 0.0,
        "requests": int(overall.get("requests") or 0),
        "failures": int(overall.get("failures") or 0),
        "throughput_rps": _round(overall).get("rps"),
        "latency_ms": {
            "overall": {k: _round(overall).get(k) for k in ("p50", "p95", "p99", "avg", "max")},
            "routes": {
                name: {k: figures.get(k) for k in ("requests", "failures", "p50", "p95", "p99")}
                for name, figures in routes.items()
            },
        },
        "failures_by_status": failures["by_status"],
        "shed_without_retry_after": failures["shed_without_retry_after"],
        "other_failures": failures["other"],
        "cache": cache_delta(samples),
        "status_samples": len(samples),
        "status_poll_errors": len(samples) - len(good),
        "max_level": max(levels) if levels else None,
        "level_timeline": level_timeline(samples, t0),
        "peak_replicas": peak,
        "replica_timeline": replica_timeline(samples, t0),
        "max_users": int(max((u for u in history["users"] if u is not None), default=0)),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""

    def ms(value: Any) -> str:
        return f"{value:7.0f}" if isinstance(value, int | float) else "      -"

    lines = [
        f"memeserve load test — {summary.get('url', '?')}, shape {summary.get('shape', '?')}, "
        f"{summary['duration_s']:.0f} s, up to {summary['max_users']} users",
        f"  requests {summary['requests']}, failures {summary['failures']}, "
        f"throughput {summary['throughput_rps'] or 0:.2f} req/s",
        f"  {'route':34s} {'n':>6s} {'fail':>5s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s}",
    ]
    routes = summary["latency_ms"]["routes"]
    for name, row in sorted(routes.items()):
        lines.append(
            f"  {name:34s} {row['requests']:6.0f} {row['failures']:5.0f} "
            f"{ms(row['p50'])} {ms(row['p95'])} {ms(row['p99'])}"
        )
    overall = summary["latency_ms"]["overall"]
    lines.append(
        f"  {'all routes':34s} {summary['requests']:6d} {summary['failures']:5d} "
        f"{ms(overall['p50'])} {ms(overall['p95'])} {ms(overall['p99'])}"
    )
    shed = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_status"].items()) or "none"
    lines.append(f"  shed (with Retry-After): {shed}")
    if summary["shed_without_retry_after"]:
        lines.append(f"  shed WITHOUT Retry-After: {summary['shed_without_retry_after']}")
    for failure in summary["other_failures"]:
        lines.append(
            f"  FAILURE {failure['name']}: {failure['error'][:90]} x{failure['occurrences']}"
        )
    cache = summary["cache"]
    if cache.get("hit_ratio") is not None:
        lines.append(
            f"  library: {cache['hits']} hits / {cache['lookups']} lookups "
            f"(hit ratio {cache['hit_ratio']:.1%}; exact {cache['exact_hits']}, "
            f"near {cache['near_hits']}, resent bytes {cache['upload_hits']})"
        )
    else:
        lines.append("  library: no figures")
    levels = " → ".join(f"{p['level']}@{p['t_s']:.0f}s" for p in summary["level_timeline"])
    lines.append(f"  degradation level: max {summary['max_level']}; {levels or 'no samples'}")
    replicas = " → ".join(
        "/".join(str(p[d]) for d in CHART_DEPLOYMENTS) + f"@{p['t_s']:.0f}s"
        for p in summary["replica_timeline"]
    )
    lines.append(f"  replicas {'/'.join(CHART_DEPLOYMENTS)}: {replicas or 'no samples'}")
    lines.append(
        f"  /v1/status samples: {summary['status_samples']} "
        f"({summary['status_poll_errors']} failed polls)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- chart


def _xy(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def render_chart(out_dir: Path, path: Path, *, prefix: str = "locust", t0: float | None = None):
    """Write the four-panel chart (latency, throughput/errors, level, replicas) to ``path``.

    Returns the matplotlib figure's panel titles (for tests and logs).
    """
    history = history_series(read_csv(out_dir / f"{prefix}_stats_history.csv"))
    samples = [s for s in read_timeline(out_dir / "status_timeline.jsonl") if s.get("ok")]
    if t0 is None:
        stamps = [*history["ts"], *(s["ts"] for s in samples)]
        t0 = min((t for t in stamps if t is not None), default=0.0)
    hx = [t - t0 for t in history["ts"] if t is not None]
    sx = [s["ts"] - t0 for s in samples]

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    latency, throughput, level, replicas = axes
    for key, style in (("p50", "-"), ("p95", "--")):
        xs, ys = _xy(hx, history[key])
        latency.plot(xs, ys, style, label=key)
    latency.set_title("Latency (all routes, Locust's recent window)")
    latency.set_ylabel("ms")

    xs, ys = _xy(hx, history["rps"])
    throughput.plot(xs, ys, label="requests/s")
    xs, ys = _xy(hx, history["fail_rps"])
    throughput.plot(xs, ys, color="tab:red", label="failures/s")
    users_x, users_y = _xy(hx, history["users"])
    users_axis = throughput.twinx()
    users_axis.plot(users_x, users_y, color="grey", alpha=0.5, drawstyle="steps-post")
    users_axis.set_ylabel("users", color="grey")
    throughput.set_title("Throughput and errors (users in grey)")
    throughput.set_ylabel("per second")

    xs, ys = _xy(sx, [s.get("level") for s in samples])
    level.plot(xs, ys, drawstyle="steps-post", color="tab:purple", label="level")
    level.set_ylim(-0.2, 3.2)
    level.set_yticks([0, 1, 2, 3])
    load_axis = level.twinx()
    load_x, load_y = _xy(sx, [s.get("load") for s in samples])
    load_axis.plot(load_x, load_y, color="tab:orange", alpha=0.6)
    load_axis.set_ylabel("load", color="tab:orange")
    level.set_title("Degradation level (load in orange)")
    level.set_ylabel("level")

    top = 1
    for name, style in zip(CHART_DEPLOYMENTS, ("-", "--"), strict=True):
        counts = [(s.get("replicas") or {}).get(name) for s in samples]
        xs, ys = _xy(sx, counts)
        top = max([top, *(int(y) for y in ys)])
        replicas.plot(xs, ys, style, drawstyle="steps-post", linewidth=2, label=name)
    replicas.set_ylim(-0.1, top + 0.5)
    replicas.yaxis.set_major_locator(MaxNLocator(integer=True))
    replicas.set_title("RUNNING replicas")
    replicas.set_ylabel("replicas")
    replicas.set_xlabel("seconds since start")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    titles = [axis.get_title() for axis in axes]
    plt.close(fig)
    return titles
