"""`make bench`: latency of the running graph on the synthetic meme corpus.

Starts the given profile with ``memeserve run`` on a free port (or measures an
already running service with ``--url``), then prints, in one run:

* time from start to ready (``/readyz`` answering 200);
* the engine path: ``--requests`` distinct memes, one at a time — p50/p95/max of
  the client-observed round trip and the server's own stage timings;
* the cache-hit paths: the same memes again (exact repeats), then re-encoded copies
  (near repeats, answered by the fingerprint library);
* a repeat mix: 100 requests of which ~40 % repeat an earlier meme in a transformed
  form (every transform of ``loadtest/transforms.py``) — engine calls saved, and hits
  on fresh memes (which would be wrong answers);
* a concurrent burst: throughput at ``--concurrency`` clients;
* the bare-Serve anchor (:mod:`loadtest.bare_serve`), after the service has stopped: the
  same exact repeats, same client, one at a time, against one FastAPI deployment that
  parses the multipart upload, hashes it and returns the service's stored answer — and
  the goal ratios: exact hit ≤ 1.3× the anchor, near hit ≤ 2× the exact hit (p50s).

Figures go to stdout and, as JSON, to ``artifacts/bench_latency.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.corpus import MemeSpec, corpus, draw_meme, encode, meme_bytes
from loadtest.harness.http import ANALYZE, SHED_STATUSES, analyze
from loadtest.harness.service import ROOT, Service, start_service, stop_service
from loadtest.harness.stats import summarise
from loadtest.transforms import INFORMATIVE_TRANSFORMS, TRANSFORMS, apply

EXACT_GOAL = 1.3
"""Goal: exact-hit p50 at most this multiple of the bare-Serve anchor's p50."""
NEAR_GOAL = 2.0
"""Goal: near-hit p50 at most this multiple of the exact hit's p50."""


def run(
    url: str,
    requests: int,
    concurrency: int,
    seed: int,
    captured: list[tuple[bytes, str | None, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The service's figures; ``captured`` gets (upload, text, answer) of each exact hit."""
    specs = corpus(requests, seed=seed)
    payloads = [(meme_bytes(spec, "JPEG", quality=88), spec.top) for spec in specs]
    results: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        # Warm-up: one request outside the measurement (first OCR call loads kernels).
        analyze(client, meme_bytes(corpus(1, seed=seed + 999)[0], "PNG"), None)
        fresh, engine_ms, preprocess_ms = [], [], []
        for data, text in payloads:
            elapsed, body = analyze(client, data, text)
            if body["meta"]["cache"]["hit"]:
                raise RuntimeError("a fresh meme was a cache hit; the corpus is not distinct")
            fresh.append(elapsed)
            engine_ms.append(body["meta"]["timings_ms"]["engine"])
            preprocess_ms.append(body["meta"]["timings_ms"]["preprocess"])
        hits = []
        hit_timings: dict[str, list[float]] = {}
        for data, text in payloads:
            elapsed, body = analyze(client, data, text)
            if body["meta"]["cache"]["match"] != "exact":
                raise RuntimeError("a byte-identical repeat was not an exact hit")
            hits.append(elapsed)
            for stage, ms in (body["meta"].get("timings_ms") or {}).items():
                if isinstance(ms, int | float):
                    hit_timings.setdefault(stage, []).append(float(ms))
            if captured is not None:
                captured.append((data, text, body))
        near = []
        for spec in specs:
            copy = encode(apply("jpeg_q60", draw_meme(spec), seed), "JPEG", quality=95)
            elapsed, body = analyze(client, copy, spec.top)
            if body["meta"]["cache"]["match"] == "near":
                near.append(elapsed)
        results["repeat_mix"] = repeat_mix(client, seed)
    results["engine_path_ms"] = summarise(fresh)
    results["engine_stage_ms"] = summarise(engine_ms)
    results["preprocess_stage_ms"] = summarise(preprocess_ms)
    results["cache_hit_ms"] = summarise(hits)
    results["cache_hit_server_timings_ms"] = {
        stage: summarise(values) for stage, values in sorted(hit_timings.items())
    }
    results["near_hit_ms"] = summarise(near) if near else {"n": 0}

    burst = [
        (meme_bytes(spec, "JPEG", quality=88), spec.top)
        for spec in corpus(concurrency * 5, seed=seed + 1)
    ]

    def one(item: tuple[bytes, str]) -> float | None:
        """The round trip of an answered request; None for a refusal (shed load)."""
        with httpx.Client(base_url=url, timeout=300) as http:
            started = time.perf_counter()
            response = http.post(
                ANALYZE, files={"image": ("m.jpg", item[0])}, data={"text": item[1]}
            )
            elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code in SHED_STATUSES:
            return None
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        return elapsed

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, burst))
    wall = time.perf_counter() - started
    latencies = [ms for ms in outcomes if ms is not None]
    results["burst"] = {
        "concurrency": concurrency,
        "requests": len(burst),
        "refused": len(outcomes) - len(latencies),
        "throughput_rps": round(len(latencies) / wall, 2),
        **(summarise(latencies) if latencies else {"n": 0, "p50": 0.0, "p95": 0.0}),
    }
    return results


def run_anchor(captured: list[tuple[bytes, str | None, dict[str, Any]]]) -> dict[str, Any]:
    """The bare-Serve anchor on its own Ray: the captured uploads again, one at a time.

    A client of the same settings; the same uploads, order and count as the exact hits;
    a warm-up request first, as for the service. Starts and shuts down its own Ray instance.
    """
    from loadtest.bare_serve import anchor_document, stored_answers
    from loadtest.harness.inprocess import serve_in_process

    folder = Path(tempfile.mkdtemp(prefix="memeserve-anchor-"))
    answers_path = folder / "answers.json"
    answers_path.write_text(json.dumps(stored_answers(captured)), "utf-8")
    # The replicas import loadtest.bare_serve: the repository root on their path.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    try:
        with (
            serve_in_process(anchor_document(answers_path)) as anchor,
            httpx.Client(base_url=anchor.url, timeout=120) as client,
        ):
            analyze(client, captured[0][0], captured[0][1])
            latencies = []
            for data, text, answer in captured:
                elapsed, body = analyze(client, data, text)
                if body != answer:
                    raise RuntimeError("the anchor did not return the stored answer")
                latencies.append(elapsed)
    finally:
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path
    return summarise(latencies)


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The goal ratios (p50s): exact hit / anchor ≤ 1.3, near hit / exact hit ≤ 2."""
    exact = results["cache_hit_ms"]["p50"]
    anchor = (results.get("anchor_ms") or {}).get("p50")
    near = results["near_hit_ms"].get("p50")
    exact_ratio = round(exact / anchor, 2) if anchor else None
    near_ratio = round(near / exact, 2) if near is not None and exact else None
    return {
        "exact_over_anchor": exact_ratio,
        "exact_over_anchor_goal": EXACT_GOAL,
        "exact_over_anchor_met": exact_ratio is not None and exact_ratio <= EXACT_GOAL,
        "near_over_exact": near_ratio,
        "near_over_exact_goal": NEAR_GOAL,
        "near_over_exact_met": near_ratio is not None and near_ratio <= NEAR_GOAL,
    }


def repeat_mix(
    client: httpx.Client, seed: int, count: int = 100, share: float = 0.4
) -> dict[str, Any]:
    """Traffic where ``share`` of requests repeat an earlier meme in transformed form.

    Every transform the library is built for (not the informative harsher crop) is
    drawn at random; an engine call is a response that was not a cache hit.
    """
    rng = random.Random(seed)
    names = [name for name in TRANSFORMS if name not in INFORMATIVE_TRANSFORMS]
    specs = corpus(count, seed=seed + 17)
    sent: list[MemeSpec] = []
    fresh = repeats = engine_calls = repeats_answered = false_hits = 0
    by_transform: dict[str, list[int]] = {}
    for index in range(count):
        if sent and rng.random() < share:
            spec = rng.choice(sent)
            name = rng.choice(names)
            data = encode(apply(name, draw_meme(spec), seed + index), "PNG")
            _, body = analyze(client, data, spec.top)
            repeats += 1
            hit = body["meta"]["cache"]["hit"]
            repeats_answered += hit
            by_transform.setdefault(name, [0, 0])[0] += 1
            by_transform[name][1] += hit
        else:
            spec = specs[index]
            sent.append(spec)
            _, body = analyze(client, meme_bytes(spec, "JPEG", quality=88), spec.top)
            fresh += 1
            hit = body["meta"]["cache"]["hit"]
            false_hits += hit  # every fresh meme is a new template: a hit would be wrong
        engine_calls += not hit
    return {
        "requests": count,
        "fresh": fresh,
        "transformed_repeats": repeats,
        "engine_calls": engine_calls,
        "engine_calls_saved": repeats_answered,
        "saved_share_of_repeats": round(repeats_answered / repeats, 3) if repeats else None,
        "false_hits_on_fresh": false_hits,
        "by_transform": {name: {"sent": n, "hits": h} for name, (n, h) in by_transform.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("autoscale_configs/dev-cpu.yaml"))
    parser.add_argument("--url", default=None, help="measure this running service instead")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-anchor", action="store_true", help="skip the bare-Serve anchor (and its ratio)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_latency.json")
    args = parser.parse_args(argv)

    service: Service | None = None
    ready_s = None
    url = args.url
    captured: list[tuple[bytes, str | None, dict[str, Any]]] = []
    try:
        if url is None:
            service = start_service(args.config, name="bench_latency")
            url, ready_s = service.url, service.ready_s
        results = run(url, args.requests, args.concurrency, args.seed, captured)
    finally:
        if service is not None:
            stop_service(service)
    # After the service has stopped: the two never share the machine's cores.
    results["anchor_ms"] = None if args.no_anchor else run_anchor(captured)
    results["goals"] = goals(results)
    results["config"] = str(args.config) if args.url is None else None
    results["ready_s"] = round(ready_s, 1) if ready_s is not None else None
    results["cpus"] = os.cpu_count()

    print(f"memeserve bench ({results['config'] or url}, {results['cpus']} CPUs)")
    if ready_s is not None:
        print(f"  start to ready            {ready_s:8.1f} s")
    for name, label in (
        ("engine_path_ms", "engine path (round trip)"),
        ("engine_stage_ms", "  engine stage"),
        ("preprocess_stage_ms", "  preprocess stage"),
        ("cache_hit_ms", "exact hit (round trip)"),
        ("near_hit_ms", "near hit (round trip)"),
        ("anchor_ms", "bare Serve anchor"),
    ):
        row = results[name]
        if not row or not row["n"]:
            print(f"  {label:26s} none")
            continue
        print(
            f"  {label:26s} p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f} ms  "
            f"max {row['max']:7.1f} ms  (n={row['n']})"
        )
    for stage, row in results["cache_hit_server_timings_ms"].items():
        print(
            f"    exact hit, server {stage:14s} p50 {row['p50']:7.2f} ms  p95 {row['p95']:7.2f} ms"
        )
    goal = results["goals"]
    for label, key in (
        ("exact hit / anchor", "exact_over_anchor"),
        ("near hit / exact", "near_over_exact"),
    ):
        ratio = goal[key]
        verdict = "met" if goal[f"{key}_met"] else "not met"
        shown = f"{ratio:.2f}x" if ratio is not None else "  n/a"
        print(f"  {label:26s} {shown:>7s}  (goal <= {goal[key + '_goal']}x: {verdict})")
    burst = results["burst"]
    print(
        f"  burst x{burst['concurrency']:<3d} {burst['requests']:3d} req     "
        f"{burst['throughput_rps']:6.2f} req/s answered ({burst['refused']} refused)  "
        f"p50 {burst['p50']:.1f} ms  p95 {burst['p95']:.1f} ms"
    )
    mix = results["repeat_mix"]
    print(
        f"  repeat mix: {mix['requests']} requests, {mix['transformed_repeats']} transformed "
        f"repeats -> {mix['engine_calls']} engine calls; {mix['engine_calls_saved']} saved "
        f"({mix['saved_share_of_repeats']:.0%} of repeats), "
        f"{mix['false_hits_on_fresh']} hits on fresh memes"
    )
    print(
        "  (lite engine: OCR + lexicon on CPU; no language model, so DESIGN.md §5's "
        "per-token floor does not apply)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), "utf-8")
    print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
