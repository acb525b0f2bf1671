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
* a concurrent burst: throughput at ``--concurrency`` clients.

Figures go to stdout and, as JSON, to ``artifacts/bench_latency.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.corpus import MemeSpec, corpus, draw_meme, encode, meme_bytes
from loadtest.harness.http import analyze
from loadtest.harness.service import ROOT, Service, start_service, stop_service
from loadtest.harness.stats import summarise
from loadtest.transforms import INFORMATIVE_TRANSFORMS, TRANSFORMS, apply


def run(url: str, requests: int, concurrency: int, seed: int) -> dict[str, Any]:
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
        for data, text in payloads:
            elapsed, body = analyze(client, data, text)
            if body["meta"]["cache"]["match"] != "exact":
                raise RuntimeError("a byte-identical repeat was not an exact hit")
            hits.append(elapsed)
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
    results["near_hit_ms"] = summarise(near) if near else {"n": 0}

    burst = [
        (meme_bytes(spec, "JPEG", quality=88), spec.top)
        for spec in corpus(concurrency * 5, seed=seed + 1)
    ]

    def one(item: tuple[bytes, str]) -> float:
        with httpx.Client(base_url=url, timeout=300) as http:
            return analyze(http, *item)[0]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(one, burst))
    wall = time.perf_counter() - started
    results["burst"] = {
        "concurrency": concurrency,
        "requests": len(burst),
        "throughput_rps": round(len(burst) / wall, 2),
        **summarise(latencies),
    }
    return results


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
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_latency.json")
    args = parser.parse_args(argv)

    service: Service | None = None
    ready_s = None
    url = args.url
    try:
        if url is None:
            service = start_service(args.config, name="bench_latency")
            url, ready_s = service.url, service.ready_s
        results = run(url, args.requests, args.concurrency, args.seed)
    finally:
        if service is not None:
            stop_service(service)
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
    ):
        row = results[name]
        if not row["n"]:
            print(f"  {label:26s} none")
            continue
        print(
            f"  {label:26s} p50 {row['p50']:7.1f} ms  p95 {row['p95']:7.1f} ms  "
            f"max {row['max']:7.1f} ms  (n={row['n']})"
        )
    burst = results["burst"]
    print(
        f"  burst x{burst['concurrency']:<3d} {burst['requests']:3d} req     "
        f"{burst['throughput_rps']:6.2f} req/s  "
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
