"""`python -m loadtest.bench_dedupe`: near-duplicate recall, false merges and lookup cost.

For every generator of :mod:`loadtest.generators` (``classic``, ``photo`` and ``panels``,
which the fingerprint was tuned on, and ``heldout``, which it never was) it draws
``--templates`` templates x ``--captions`` caption sets each (the first sets swap one
caption slot at a time for one of about the same length, then all of them), and applies
each transform of :mod:`loadtest.transforms` to each meme. Then, for this project's
:class:`Fingerprinter` (candidates within ``coarse_radius`` through
:class:`FingerprintIndex`, then the detail check) and for the imagehash pHash and dHash
baselines at their customary threshold (Hamming ≤ 10 of 64 bits), it reports per
generator:

* recall per transform: the query matches the original it came from;
* caption false merges: a query (an original or any transformed copy) matches the
  original of a *different caption set on the same template*; for the cropping
  transforms also the other way round (the cropped copy stored, the other caption's
  original as the query), so a crop cannot open a hole in either direction;
* template false merges: a match to an original of another template of the generator
  (cropped copies again both ways round);

and overall: fingerprint µs/image (median), detail check µs (median, p99), and
:class:`FingerprintIndex` lookup µs (median, p99) at 10**5 and 10**6 entries (random codes
+ the corpus codes; a lookup is three radius searches, one per window code of the query),
next to a brute-force numpy scan.

Targets, on every generator: recall ≥ 0.95 on every transform but the crops, ≥ 0.9 on
the crops (``crop_5pct``: up to 5 % of each dimension in total; ``crop_5pct_each_side``:
0-5 % off each side; ``crop_2to5pct_each_side``: 2-5 % off each side, then JPEG q85), zero
caption false merges, index p99 ≤ 1 ms at 10**6. The held-out generator's rows are
targets too (exit status 1 if it misses one), and are printed apart.
Writes JSON (default ``artifacts/bench_dedupe.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loadtest.generators import GENERATORS, HELD_OUT, TUNING, caption_variants
from loadtest.transforms import CROP_TRANSFORMS, CROPPING_TRANSFORMS, GROUPS, TRANSFORMS, apply
from serve_app.media.fingerprint import (
    DETAIL,
    Fingerprint,
    Fingerprinter,
    FingerprintIndex,
    hamming,
)

BASELINE_THRESHOLD = 10
RECALL_TARGET = 0.95
CROP_RECALL_TARGET = 0.9
LOOKUP_P99_TARGET_US = 1000.0
METHODS = ("fingerprint", "phash", "dhash")


@dataclass(frozen=True)
class Sample:
    """One query image: which original it derives from (``variant``) and how."""

    generator: str
    template: int
    variant: int
    transform: str  # "original" for the undistorted meme


def _hash_fn(kind: str) -> Callable[[Image.Image], int]:
    import imagehash

    fn = imagehash.phash if kind == "phash" else imagehash.dhash

    def code(img: Image.Image) -> int:
        return int(str(fn(img)), 16)

    return code


def _timed(fn: Callable[[], Any]) -> tuple[Any, int]:
    start = time.perf_counter_ns()
    value = fn()
    return value, time.perf_counter_ns() - start


def build_corpus(
    generator: str, templates: int, captions: int, seed: int
) -> tuple[dict[tuple[int, int], Image.Image], list[tuple[Sample, Image.Image]]]:
    """Originals keyed by (template, variant), and every query image, of one generator."""
    gen = GENERATORS[generator]
    rng = random.Random(f"{generator}:{seed}")
    originals: dict[tuple[int, int], Image.Image] = {}
    queries: list[tuple[Sample, Image.Image]] = []
    for t in range(templates):
        template = seed * 1_000 + t
        for v, texts in enumerate(caption_variants(gen.layout(template), captions, rng)):
            img = gen.meme(template, texts)
            originals[(template, v)] = img
            queries.append((Sample(generator, template, v, "original"), img))
            for name in TRANSFORMS:
                copy = apply(name, img, seed * 7919 + template * 31 + v)
                queries.append((Sample(generator, template, v, name), copy))
    return originals, queries


def evaluate(
    name: str,
    match: Callable[[Any, Any], bool],
    stored: dict[tuple[int, int], Any],
    query_keys: list[tuple[Sample, Any]],
) -> dict[str, Any]:
    """Recall per transform and false merges, comparing every query with every original."""
    hits: dict[str, list[bool]] = {n: [] for n in TRANSFORMS}
    caption_pairs = caption_merges = template_pairs = template_merges = 0
    examples: list[str] = []
    crop_pairs = crop_merges = 0
    for sample, key in query_keys:
        for (template, variant), original in stored.items():
            own = template == sample.template and variant == sample.variant
            if own and sample.transform == "original":
                continue
            matched = match(key, original)
            if own:
                hits[sample.transform].append(matched)
            elif template == sample.template:
                caption_pairs += 1
                caption_merges += matched
                if matched and len(examples) < 5:
                    examples.append(f"{sample} ~ variant {variant}")
                if sample.transform in CROPPING_TRANSFORMS:
                    # The other way round: the cropped copy is what the store holds.
                    reverse = match(original, key)
                    crop_pairs += 2
                    crop_merges += matched + reverse
                    caption_pairs += 1
                    caption_merges += reverse
                    if reverse and len(examples) < 5:
                        examples.append(f"variant {variant} ~ stored {sample}")
            else:
                template_pairs += 1
                template_merges += matched
                if sample.transform in CROPPING_TRANSFORMS:
                    template_pairs += 1
                    template_merges += match(original, key)
    recall = {n: sum(h) / len(h) for n, h in hits.items()}
    return {
        "method": name,
        "recall": recall,
        "caption_pairs": caption_pairs,
        "caption_false_merges": caption_merges,
        "caption_false_merge_rate": caption_merges / max(1, caption_pairs),
        "caption_false_merge_examples": examples,
        "cropped_caption_pairs": crop_pairs,
        "cropped_caption_false_merges": crop_merges,
        "template_pairs": template_pairs,
        "template_false_merges": template_merges,
        "template_false_merge_rate": template_merges / max(1, template_pairs),
    }


def bench_index(
    sizes: list[int], corpus: list[Fingerprint], radius: int, queries: int, seed: int
) -> list[dict[str, Any]]:
    """Lookup latency of FingerprintIndex (coarse + window probes) vs a brute-force scan."""
    rng = np.random.default_rng(seed)
    corpus_coarse = np.array([fp.coarse for fp in corpus], dtype=np.uint64)
    corpus_keys = np.array([fp.window_key or 0 for fp in corpus], dtype=np.uint64)
    results = []
    for size in sizes:
        extra = size - len(corpus)
        coarse = np.concatenate([rng.integers(0, 2**64 - 1, extra, dtype=np.uint64), corpus_coarse])
        keys = np.concatenate([rng.integers(0, 2**64 - 1, extra, dtype=np.uint64), corpus_keys])
        index = FingerprintIndex(radius)
        _, build_ns = _timed(
            lambda idx=index, c=coarse, k=keys: idx.add_codes(np.arange(len(c)), c, k)
        )
        probe = []
        for i in range(queries):
            fp = corpus[i % len(corpus)]
            flip = 1 << (i % 64)
            probe.append(
                Fingerprint(
                    exact=f"probe {i}",
                    coarse=fp.coarse ^ flip,
                    detail=b"",
                    windows=tuple(w ^ flip for w in fp.windows),
                )
            )
        for i in range(queries // 4):
            codes = rng.integers(0, 2**63, 4).tolist()
            probe.append(
                Fingerprint(
                    exact=f"random {i}",
                    coarse=codes[0],
                    detail=b"",
                    windows=tuple(codes[1:]),
                )
            )

        def brute(fp: Fingerprint, k: np.ndarray = keys) -> list[int]:
            dist = np.full(len(k), 64, dtype=np.uint8)
            for w in fp.windows:
                dist = np.minimum(dist, np.bitwise_count(k ^ np.uint64(w)))
            return sorted(np.flatnonzero(dist <= radius).tolist())

        lookup = [_timed(lambda q=q, idx=index: idx.search(q))[1] for q in probe]
        brute_ns = [_timed(lambda q=q: brute(q))[1] for q in probe[: max(20, queries // 5)]]
        # Spot-check exactness while we are here.
        exact = all(sorted(i for i, _ in index.search(q)) == brute(q) for q in probe[:20])
        results.append(
            {
                "entries": size,
                "radius": radius,
                "probes_per_lookup": len(corpus[0].windows),
                "build_s": build_ns / 1e9,
                "lookup_us_median": statistics.median(lookup) / 1e3,
                "lookup_us_p99": float(np.percentile(lookup, 99)) / 1e3,
                "brute_us_median": statistics.median(brute_ns) / 1e3,
                "brute_us_p99": float(np.percentile(brute_ns, 99)) / 1e3,
                "approx_mb": index.approx_bytes() / 1e6,
                "exact_vs_brute_force": exact,
            }
        )
    return results


def run_generator(
    generator: str,
    args: argparse.Namespace,
    fingerprinter: Fingerprinter,
    timings: dict[str, list[int]],
) -> tuple[dict[str, Any], list[Fingerprint]]:
    """Build one generator's corpus and evaluate every method on it."""
    started = time.perf_counter()
    originals, queries = build_corpus(generator, args.templates, args.captions, args.seed)
    drawn = time.perf_counter() - started
    radius = fingerprinter.params.coarse_radius
    stored_fp = {k: fingerprinter.fingerprint(img) for k, img in originals.items()}
    query_fp: list[tuple[Sample, Fingerprint]] = []
    for sample, img in queries:
        fp, ns = _timed(lambda img=img: fingerprinter.fingerprint(img))
        timings["fingerprint"].append(ns)
        query_fp.append((sample, fp))

    def ours(query: Fingerprint, stored: Fingerprint) -> bool:
        if fingerprinter.coarse_distance(query, stored) > radius:
            return False  # the index would not propose it
        result, ns = _timed(lambda: fingerprinter.near_distance(query, stored))
        timings["near_distance"].append(ns)
        return result is not None

    methods: dict[str, Any] = {"fingerprint": evaluate("fingerprint", ours, stored_fp, query_fp)}
    for kind in ("phash", "dhash"):
        code = _hash_fn(kind)
        stored_h = {k: code(img) for k, img in originals.items()}
        query_h: list[tuple[Sample, int]] = []
        for sample, img in queries:
            h, ns = _timed(lambda img=img, code=code: code(img))
            timings[kind].append(ns)
            query_h.append((sample, h))
        methods[kind] = evaluate(
            kind, lambda a, b: hamming(a, b) <= BASELINE_THRESHOLD, stored_h, query_h
        )
    # Coarse distance (as the index sees it) of true pairs, to justify coarse_radius.
    own = {(s.template, s.variant): fp for s, fp in query_fp if s.transform == "original"}
    coarse: dict[str, list[int]] = {}
    for s, fp in query_fp:
        if s.transform != "original":
            d = fingerprinter.coarse_distance(fp, own[(s.template, s.variant)])
            coarse.setdefault(s.transform, []).append(d)
    result = {
        "generator": generator,
        "role": "held out" if generator in HELD_OUT else "tuning",
        "summary": GENERATORS[generator].summary,
        "originals": len(originals),
        "queries": len(queries),
        "elapsed_s": time.perf_counter() - started,
        "drawn_s": drawn,
        "methods": methods,
        "coarse_distance_true_pairs": {
            k: {"median": statistics.median(v), "max": max(v)} for k, v in coarse.items()
        },
    }
    print(
        f"{generator:8s} ({result['role']}): {args.templates} templates x {args.captions} "
        f"captions = {len(originals)} originals, {len(queries)} queries; drawn in {drawn:.0f}s, "
        f"evaluated in {result['elapsed_s'] - drawn:.0f}s",
        flush=True,
    )
    return result, [fp for _, fp in query_fp]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=16, help="per generator")
    parser.add_argument("--captions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--generators",
        default=",".join(GENERATORS),
        help=f"comma-separated subset of {', '.join(GENERATORS)}",
    )
    parser.add_argument("--quick", action="store_true", help="small corpus, fewer lookups")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench_dedupe.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.templates, args.captions = min(args.templates, 6), min(args.captions, 3)
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        parser.error(f"unknown generator(s): {', '.join(unknown)}")
    lookups = 400 if args.quick else 2000

    fingerprinter = Fingerprinter()
    params = fingerprinter.params
    started = time.perf_counter()
    timings: dict[str, list[int]] = {
        "fingerprint": [],
        "near_distance": [],
        "phash": [],
        "dhash": [],
    }
    per_generator: dict[str, Any] = {}
    corpus: list[Fingerprint] = []
    print(
        f"tuned on: {', '.join(g for g in TUNING if g in generators) or '—'}; held out "
        f"(never tuned on): {', '.join(g for g in HELD_OUT if g in generators) or '—'}",
        flush=True,
    )
    for generator in generators:
        per_generator[generator], fps = run_generator(generator, args, fingerprinter, timings)
        corpus.extend(fps)
    index_results = bench_index([100_000, 1_000_000], corpus, params.coarse_radius, lookups, 7)
    costs = {
        "fingerprint_us_median": statistics.median(timings["fingerprint"]) / 1e3,
        "near_distance_us_median": statistics.median(timings["near_distance"]) / 1e3,
        "near_distance_us_p99": float(np.percentile(timings["near_distance"], 99)) / 1e3,
        "phash_us_median": statistics.median(timings["phash"]) / 1e3,
        "dhash_us_median": statistics.median(timings["dhash"]) / 1e3,
    }
    targets = _report(per_generator, costs, index_results, params)
    sample = corpus[0]
    payload = {
        "args": vars(args) | {"json": str(args.json)},
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        "tuning_generators": [g for g in TUNING if g in generators],
        "held_out_generators": [g for g in HELD_OUT if g in generators],
        "params": asdict(params),
        "detail_side": DETAIL,
        "detail_bytes_median": statistics.median(len(fp.detail) for fp in corpus),
        "serialised_bytes_median": statistics.median(len(fp.to_bytes()) for fp in corpus),
        "serialised_bytes_max": max(len(fp.to_bytes()) for fp in corpus),
        "version": sample.version,
        "generators": per_generator,
        "costs": costs,
        "index": index_results,
        "targets": targets,
        "elapsed_s": time.perf_counter() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.json} in {payload['elapsed_s']:.1f}s total")
    return 0 if all(targets.values()) else 1


def _recall_goal(transform: str) -> float:
    return CROP_RECALL_TARGET if transform in CROP_TRANSFORMS else RECALL_TARGET


def _report(
    per_generator: dict[str, Any],
    costs: dict[str, float],
    index_results: list[dict[str, Any]],
    params: Any,
) -> dict[str, bool]:
    names = list(per_generator)
    roles = {g: ("*" if per_generator[g]["role"] == "held out" else "") for g in names}
    heads = [g + roles[g] for g in names]
    print("\nrecall per transform, this project (* = held out, never tuned on)")
    print(f"{'group':10s} {'transform':24s}" + "".join(f"{h:>10s}" for h in heads) + "  target")
    for group, members in GROUPS.items():
        for t in members:
            row = "".join(
                f"{per_generator[g]['methods']['fingerprint']['recall'][t]:10.3f}" for g in names
            )
            print(f"{group:10s} {t:24s}{row}  ≥ {_recall_goal(t)}")
    print("\nrecall per transform, baselines pHash / dHash (Hamming ≤ 10)")
    print(f"{'transform':35s}" + "".join(f"{h:>14s}" for h in heads))
    for members in GROUPS.values():
        for t in members:
            cells = "".join(
                f"{per_generator[g]['methods']['phash']['recall'][t]:7.2f}/"
                f"{per_generator[g]['methods']['dhash']['recall'][t]:<6.2f}"
                for g in names
            )
            print(f"{t:35s}{cells}")
    print("\nfalse merges (merged / pairs)")
    print(f"{'':35s}" + "".join(f"{h:>14s}" for h in heads))
    for label, key, pairs in (
        ("caption, this project", "caption_false_merges", "caption_pairs"),
        ("  of which cropped, both ways", "cropped_caption_false_merges", "cropped_caption_pairs"),
        ("template, this project", "template_false_merges", "template_pairs"),
    ):
        cells = "".join(
            f"{per_generator[g]['methods']['fingerprint'][key]:>7d}/"
            f"{per_generator[g]['methods']['fingerprint'][pairs]:<6d}"
            for g in names
        )
        print(f"{label:35s}{cells}")
    for kind in ("phash", "dhash"):
        for label, key, pairs in (
            (f"caption, {kind}", "caption_false_merges", "caption_pairs"),
            (f"template, {kind}", "template_false_merges", "template_pairs"),
        ):
            cells = "".join(
                f"{per_generator[g]['methods'][kind][key]:>7d}/"
                f"{per_generator[g]['methods'][kind][pairs]:<6d}"
                for g in names
            )
            print(f"{label:35s}{cells}")
    for g in names:
        examples = per_generator[g]["methods"]["fingerprint"]["caption_false_merge_examples"]
        if examples:
            print(f"  {g} caption merges, e.g.: " + "; ".join(examples[:3]))
    print(
        f"\nfingerprint µs/image (median): {costs['fingerprint_us_median']:.0f} "
        f"(pHash {costs['phash_us_median']:.0f}, dHash {costs['dhash_us_median']:.0f}); "
        f"detail check µs (median / p99, candidates only): "
        f"{costs['near_distance_us_median']:.0f} / {costs['near_distance_us_p99']:.0f}"
    )
    print(
        f"\nFingerprintIndex radius {params.coarse_radius} lookups "
        f"({index_results[0]['probes_per_lookup'] if index_results else 0} probes each)"
    )
    print(
        f"{'entries':>10s} {'median µs':>10s} {'p99 µs':>8s} {'brute med':>10s}"
        f" {'brute p99':>10s} {'MB':>7s} {'exact':>6s}"
    )
    for r in index_results:
        print(
            f"{r['entries']:>10d} {r['lookup_us_median']:>10.0f} {r['lookup_us_p99']:>8.0f} "
            f"{r['brute_us_median']:>10.0f} {r['brute_us_p99']:>10.0f} "
            f"{r['approx_mb']:>7.1f} {r['exact_vs_brute_force']!s:>6s}"
        )
    targets: dict[str, bool] = {}
    for g in names:
        ours = per_generator[g]["methods"]["fingerprint"]
        tag = f"{g}{' (held out)' if roles[g] else ''}"
        for t, value in ours["recall"].items():
            goal = _recall_goal(t)
            targets[f"{tag}: recall {t} ≥ {goal}"] = value >= goal
        targets[f"{tag}: zero caption false merges"] = ours["caption_false_merges"] == 0
    big = [r for r in index_results if r["entries"] == 1_000_000]
    targets[f"lookup p99 ≤ {LOOKUP_P99_TARGET_US:.0f} µs at 10^6"] = bool(big) and all(
        r["lookup_us_p99"] <= LOOKUP_P99_TARGET_US and r["exact_vs_brute_force"] for r in big
    )
    failed = [label for label, ok in targets.items() if not ok]
    print(f"\ntargets (this project): {len(targets) - len(failed)} of {len(targets)} met")
    for label in failed:
        print(f"  FAIL  {label}")
    return targets


if __name__ == "__main__":
    sys.exit(main())
