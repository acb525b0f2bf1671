"""`python -m loadtest.bench_terms`: term-list matching cost at 10**3 and 10**5 terms.

For each size, builds a :class:`~serve_app.understanding.terms.TermMatcher` over that many
random Chinese terms (2–6 hanzi, fixed seed) spread over three lists (block, review,
pass), then times ``find({"ocr": [3 OCR-like lines], "context": [a 40-character
comment]})`` over ``--calls`` calls after a short warm-up. Prints the build time in
seconds and the per-call median and p95 in µs, then the ratio of the two medians: with
one Aho–Corasick automaton the cost of a call should barely depend on the number of
terms. The texts contain a few planted terms so that every call reports hits.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from typing import Final

from loadtest.harness.stats import summarise
from serve_app.understanding.terms import TermAction, TermEntry, TermMatcher

logger = logging.getLogger(__name__)

SIZES: Final[tuple[int, ...]] = (1_000, 100_000)
LISTS: Final[tuple[tuple[str, TermAction], ...]] = (
    ("platform_block", "block"),
    ("platform_review", "review"),
    ("platform_pass", "pass"),
)
# Terms are drawn from the whole CJK Unified Ideographs block, so random terms rarely
# occur in the texts by chance and the hits per call stay the planted ones.
HANZI_RANGE: Final[tuple[int, int]] = (0x4E00, 0x9FA5)
OCR_LINES: Final[tuple[str, ...]] = (
    "当你说得对，但是原神是一款……",
    "老板：今天加班  我：绷不住了😂",
    "ＹＹＤＳ！笑死，这波破大防",
)
CONTEXT: Final[str] = "这图我真的会谢，评论区全是阴阳怪气的，有一说一还挺好笑的哈哈哈"
PLANTED: Final[tuple[str, ...]] = ("你说得对", "破大防", "阴阳怪气")


def random_terms(count: int, seed: int) -> list[TermEntry]:
    """``count`` random 2–6 hanzi terms over the three lists, plus the planted ones."""
    rng = random.Random(seed)
    entries = [
        TermEntry(
            "".join(chr(rng.randint(*HANZI_RANGE)) for _ in range(rng.randint(2, 6))),
            *LISTS[i % len(LISTS)],
        )
        for i in range(count - len(PLANTED))
    ]
    entries += [TermEntry(term, *LISTS[1]) for term in PLANTED]
    return entries


def time_calls(matcher: TermMatcher, calls: int) -> tuple[list[float], int]:
    """Per-call µs of ``matcher.find`` over the benchmark texts, and the hits per call."""
    sources = {"ocr": list(OCR_LINES), "context": [CONTEXT]}
    hits = 0
    for _ in range(min(100, calls)):
        hits = len(matcher.find(sources))
    samples: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        matcher.find(sources)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples, hits


def run(sizes: Sequence[int], calls: int, seed: int) -> dict[int, dict[str, float]]:
    """Build and time a matcher per size; print and return its figures."""
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        entries = random_terms(size, seed)
        started = time.perf_counter()
        matcher = TermMatcher(entries)
        build_s = time.perf_counter() - started
        samples, hits = time_calls(matcher, calls)
        summary = summarise(samples)
        results[size] = {"build_s": build_s, "p50_us": summary["p50"], "p95_us": summary["p95"]}
        print(
            f"terms={size:>7,}  entries={len(matcher):>7,}  build={build_s:7.3f} s  "
            f"find: median={summary['p50']:8.1f} µs  p95={summary['p95']:8.1f} µs  "
            f"(n={summary['n']}, hits/call={hits})"
        )
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        ratio = large["p50_us"] / small["p50_us"] if small["p50_us"] else float("nan")
        print(f"median ratio {sizes[-1]:,} / {sizes[0]:,} terms: {ratio:.2f}x")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.sizes, args.calls, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
