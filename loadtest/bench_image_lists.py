"""`python -m loadtest.bench_image_lists`: image-list lookups at 10**3 and 10**5 entries.

An image list is an :class:`~serve_app.scenes.marks.ImageMarks`: exact hits by pixel
hash, near hits by the FingerprintIndex plus the fingerprinter's detail check. This builds
one with ``--memes`` real generated memes (:mod:`loadtest.corpus`; the first
``--listed`` of them listed, the rest only looked up) and fills it up to each size with
synthetic entries: :class:`~serve_app.media.fingerprint.Fingerprint` objects with random
coarse and window codes and random detail bytes (drawing 10**5 real memes would take far too long;
the index and the exact-key dict are still full size). Then it times ``find()`` per
lookup (the median of ``--repeats`` runs of each) for:

* copies of listed memes: JPEG quality 70, resized to 0.5x, cropped by 3 % and by 5 %
  per side;
* memes that are not listed (originals);
* the listed templates under *another caption* (must not match: DESIGN.md §4).

and prints median and p95 lookup ms at each size, the ratio between the sizes, the recall
of listed copies (found with their own entry), false matches to other-caption variants
and to unlisted memes, and how many detail checks a lookup ran. Random fill codes are
spread uniformly, so they rarely fall within the coarse radius of a query; real lists
whose templates cluster would send a few more candidates to the detail check.
Writes JSON (default ``artifacts/bench_image_lists.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from loadtest.corpus import CAPTIONS, MemeSpec, corpus, draw_meme
from loadtest.harness.stats import latency_summary
from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.media.imaging import Limits, decode_image
from serve_app.scenes.marks import ImageMarks

SIZES = (1_000, 100_000)
RECALL_TARGET = 0.95
RATIO_TARGET = 3.0
"""Largest median lookup time at 10**5 entries relative to 10**3."""
_DETAIL_POOL = 256  # random detail blobs shared by the synthetic entries (bounds memory)
_LIMITS = Limits()


class CountingFingerprinter(Fingerprinter):
    """The real fingerprinter, counting the detail checks a lookup runs."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def near_distance(self, query: Fingerprint, stored: Fingerprint) -> int | None:
        self.checks += 1
        return super().near_distance(query, stored)


@dataclass(frozen=True)
class Query:
    """One lookup: its fingerprint, what it is, and the entry it should find (if any)."""

    fingerprint: Fingerprint
    category: str  # "copy:<transform>", "unlisted" or "other_caption"
    expected: str | None


def _decoded(image: Image.Image, fmt: str, **params: Any) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return decode_image(buffer.getvalue(), _LIMITS).image


def _crop_each_side(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def crop(img: Image.Image) -> Image.Image:
        dx, dy = round(fraction * img.width), round(fraction * img.height)
        return _decoded(img.crop((dx, dy, img.width - dx, img.height - dy)), "PNG")

    return crop


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q70": lambda img: _decoded(img, "JPEG", quality=70),
    "resize_0.5": lambda img: _decoded(img.resize((img.width // 2, img.height // 2)), "PNG"),
    "crop_3pct_each_side": _crop_each_side(0.03),
    "crop_5pct_each_side": _crop_each_side(0.05),
}


def _other_caption(spec: MemeSpec, rng: random.Random) -> MemeSpec:
    """The same template with another top caption, of the same length where possible."""
    others = [c for c in CAPTIONS if c not in (spec.top, spec.bottom)]
    same_length = [c for c in others if len(c) == len(spec.top)]
    return MemeSpec(spec.template, rng.choice(same_length or others), spec.bottom, spec.size)


def build_real(
    fingerprinter: Fingerprinter, count: int, listed: int, seed: int
) -> tuple[dict[str, Fingerprint], list[Query]]:
    """Fingerprints of the ``listed`` entries and every query (copies, unlisted, variants)."""
    rng = random.Random(seed)
    entries: dict[str, Fingerprint] = {}
    queries: list[Query] = []
    for n, spec in enumerate(corpus(count, seed=seed)):
        image = _decoded(draw_meme(spec), "PNG")
        fingerprint = fingerprinter.fingerprint(image)
        if n >= listed:
            queries.append(Query(fingerprint, "unlisted", None))
            continue
        entry_id = f"real-{n}"
        entries[entry_id] = fingerprint
        for name, transform in TRANSFORMS.items():
            copy = fingerprinter.fingerprint(transform(image))
            queries.append(Query(copy, f"copy:{name}", entry_id))
        variant = _decoded(draw_meme(_other_caption(spec, rng)), "PNG")
        queries.append(Query(fingerprinter.fingerprint(variant), "other_caption", None))
    return entries, queries


def build_marks(
    fingerprinter: Fingerprinter, real: dict[str, Fingerprint], size: int, seed: int
) -> ImageMarks:
    """An ImageMarks of ``size`` entries: the real ones plus random synthetic ones."""
    rng = random.Random(seed)
    details = [rng.randbytes(len(next(iter(real.values())).detail)) for _ in range(_DETAIL_POOL)]
    marks = ImageMarks(fingerprinter)
    windows = len(next(iter(real.values())).windows)
    for n in range(size - len(real)):
        fingerprint = Fingerprint(
            exact=f"synthetic-{n:06d}",
            coarse=rng.getrandbits(64),
            detail=details[n % _DETAIL_POOL],
            windows=tuple(rng.getrandbits(64) for _ in range(windows)),
        )
        marks.add(f"synthetic-{n}", fingerprint, {"n": n})
    for entry_id, fingerprint in real.items():
        marks.add(entry_id, fingerprint, {"entry_id": entry_id})
    return marks


def run_size(
    fingerprinter: CountingFingerprinter,
    real: dict[str, Fingerprint],
    queries: list[Query],
    size: int,
    seed: int,
    repeats: int,
) -> dict[str, Any]:
    """Build an ImageMarks of ``size`` and time every query against it.

    Each query runs ``repeats`` times and counts with its median time, so a moment of
    interference from other processes on a shared machine does not become the p95.
    """
    started = time.perf_counter()
    marks = build_marks(fingerprinter, real, size, seed)
    build_s = time.perf_counter() - started
    for query in queries[:50]:  # warm up (caches, branch predictors)
        marks.find(query.fingerprint)
    timings: dict[str, list[float]] = {}
    found: dict[str, int] = {}
    false_hits: dict[str, int] = {}
    fingerprinter.checks = 0
    for query in queries:
        rounds = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            hits = marks.find(query.fingerprint)
            rounds.append((time.perf_counter_ns() - start) / 1e3)
        timings.setdefault(query.category, []).append(statistics.median(rounds))
        ids = {hit.mark_id for hit in hits}
        if query.expected is not None:
            found[query.category] = found.get(query.category, 0) + (query.expected in ids)
            ids.discard(query.expected)
        false_hits[query.category] = false_hits.get(query.category, 0) + bool(ids)
    every = [t for values in timings.values() for t in values]
    copies = [
        t for category, values in timings.items() if category.startswith("copy:") for t in values
    ]
    return {
        "size": len(marks),
        "build_s": round(build_s, 2),
        "lookup_us": {
            "all": latency_summary(every),
            "copies": latency_summary(copies),
            **{category: latency_summary(values) for category, values in sorted(timings.items())},
        },
        "recall": {
            category: round(found.get(category, 0) / len(values), 4)
            for category, values in sorted(timings.items())
            if category.startswith("copy:")
        },
        "false_matches": false_hits,
        "detail_checks_per_lookup": round(fingerprinter.checks / (repeats * len(queries)), 2),
    }


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.3f}"


def report(results: list[dict[str, Any]]) -> dict[str, bool]:
    """Print the tables; return each target and whether it is met."""
    print("\nfind() lookup ms (median / p95) by query kind")
    categories = list(results[0]["lookup_us"])
    print(f"{'query':26s}" + "".join(f"{r['size']:>22,d}" for r in results))
    for category in categories:
        figures = [r["lookup_us"][category] for r in results]
        cells = "".join(f"{_ms(f['p50']):>13s} / {_ms(f['p95']):>6s}" for f in figures)
        print(f"{category:26s}{cells}")
    small, large = results[0]["lookup_us"]["all"], results[-1]["lookup_us"]["all"]
    ratio_p50 = large["p50"] / small["p50"]
    ratio_p95 = large["p95"] / small["p95"]
    print(
        f"\nratio {results[-1]['size']:,} / {results[0]['size']:,} entries: "
        f"median x{ratio_p50:.2f}, p95 x{ratio_p95:.2f}"
    )
    print("\nrecall of listed copies (found with their own entry)")
    for category in results[0]["recall"]:
        print(f"  {category:26s}" + "".join(f"{r['recall'][category]:>10.3f}" for r in results))
    print("\nlookups with a wrong match (another entry than their own, or any for unlisted)")
    for category in results[0]["false_matches"]:
        print(
            f"  {category:26s}"
            + "".join(f"{r['false_matches'][category]:>10d}" for r in results)
            + f"   of {results[0]['lookup_us'][category]['n']}"
        )
    print(
        "\ndetail checks per lookup: "
        + ", ".join(f"{r['size']:,}: {r['detail_checks_per_lookup']}" for r in results)
    )
    print("build s: " + ", ".join(f"{r['size']:,}: {r['build_s']}" for r in results))
    targets = {
        f"recall of listed copies ≥ {RECALL_TARGET} (each transform, each size)": all(
            value >= RECALL_TARGET for r in results for value in r["recall"].values()
        ),
        "no match to another caption of a listed template": all(
            r["false_matches"].get("other_caption", 0) == 0 for r in results
        ),
        "no match for unlisted memes": all(
            r["false_matches"].get("unlisted", 0) == 0 for r in results
        ),
        f"median lookup at {results[-1]['size']:,} ≤ {RATIO_TARGET}x that at "
        f"{results[0]['size']:,}": ratio_p50 <= RATIO_TARGET,
    }
    print("\ntargets")
    for label, ok in targets.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return targets


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memes", type=int, default=300, help="real memes drawn")
    parser.add_argument("--listed", type=int, default=200, help="of them put on the list")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each lookup")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench_image_lists.json"))
    args = parser.parse_args(argv)
    if not 0 < args.listed < args.memes:
        parser.error("need 0 < --listed < --memes")

    fingerprinter = CountingFingerprinter()
    started = time.perf_counter()
    real, queries = build_real(fingerprinter, args.memes, args.listed, args.seed)
    print(
        f"{args.memes} real memes ({len(real)} listed), {len(queries)} queries, drawn and "
        f"fingerprinted in {time.perf_counter() - started:.1f}s; coarse radius "
        f"{fingerprinter.params.coarse_radius}",
        flush=True,
    )
    results = [
        run_size(fingerprinter, real, queries, size, args.seed, max(1, args.repeats))
        for size in SIZES
    ]
    targets = report(results)
    payload = {
        "args": vars(args) | {"json": str(args.json)},
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "sizes": results,
        "targets": targets,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.json} in {payload['elapsed_s']:.1f}s total")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
