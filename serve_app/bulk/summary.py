"""What one scan run did: items, answers by source, errors by code, speed."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.bulk.parts import SUMMARY_FILE


@dataclass
class ScanSummary:
    """Figures of one run; :meth:`count` adds one written row."""

    items: int
    """Items in the input."""
    skipped: int
    """Items already in a committed part (done by an earlier run), not scanned again."""
    analysed: int = 0
    """Answered by the engine in this run."""
    exact_hits: int = 0
    near_hits: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Rows with an error, by error code."""
    passes: int = 0
    """Passes over the input (more than one when copies waited for their first)."""
    wall_s: float = 0.0
    """The whole run, listing and starting Ray included."""
    startup_s: float = 0.0
    """Of which: starting (or joining) Ray and loading the library."""

    def count(self, status: int, error_code: str | None, cache_match: str | None) -> None:
        """Add one written row."""
        if status != 200:
            self.errors[error_code or "unknown"] += 1
        elif cache_match == "exact":
            self.exact_hits += 1
        elif cache_match == "near":
            self.near_hits += 1
        else:
            self.analysed += 1

    @property
    def written(self) -> int:
        """Rows written in this run."""
        return self.analysed + self.exact_hits + self.near_hits + sum(self.errors.values())

    @property
    def items_per_s(self) -> float:
        """Rows written per second of wall time."""
        return self.written / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures as ``summary.json`` holds them."""
        return {
            "items": self.items,
            "skipped": self.skipped,
            "written": self.written,
            "analysed": self.analysed,
            "hits": {"exact": self.exact_hits, "near": self.near_hits},
            "errors": dict(sorted(self.errors.items())),
            "errors_total": sum(self.errors.values()),
            "passes": self.passes,
            "wall_s": round(self.wall_s, 2),
            "startup_s": round(self.startup_s, 2),
            "items_per_s": round(self.items_per_s, 3),
        }

    def table(self) -> str:
        """The figures as a two-column text table."""
        lines = [
            ("items", str(self.items)),
            ("skipped (already done)", str(self.skipped)),
            ("written", str(self.written)),
            ("analysed (engine)", str(self.analysed)),
            ("hits exact", str(self.exact_hits)),
            ("hits near", str(self.near_hits)),
            ("errors", str(sum(self.errors.values()))),
            *((f"  {code}", str(n)) for code, n in sorted(self.errors.items())),
            ("wall seconds", f"{self.wall_s:.1f}"),
            ("  of which Ray start", f"{self.startup_s:.1f}"),
            ("items/s", f"{self.items_per_s:.2f}"),
        ]
        width = max(len(name) for name, _ in lines)
        value_width = max(len(value) for _, value in lines)
        rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
        body = [f"| {name:<{width}} | {value:>{value_width}} |" for name, value in lines]
        return "\n".join([rule, *body, rule])


def write_summary(out: Path, summary: ScanSummary) -> Path:
    """Write ``summary.json`` in ``out`` (replacing the last run's); its path."""
    path = out / SUMMARY_FILE
    temp = out / f".{SUMMARY_FILE}.tmp"
    temp.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    temp.replace(path)
    return path
