"""A scan run's summary figures, its table and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.bulk.summary import ScanSummary, write_summary


def _summary() -> ScanSummary:
    summary = ScanSummary(items=12, skipped=2, passes=2, wall_s=4.0, startup_s=1.5)
    for status, code, match in [
        (200, None, None),
        (200, None, None),
        (200, None, None),
        (200, None, "exact"),
        (200, None, "exact"),
        (200, None, "near"),
        (415, "unsupported_media_type", None),
        (400, "bad_input", None),
        (400, "bad_input", None),
        (404, "not_found", None),
    ]:
        summary.count(status, code, match)
    return summary


def test_the_figures_add_up() -> None:
    figures = _summary().as_dict()
    assert figures == {
        "items": 12,
        "skipped": 2,
        "written": 10,
        "analysed": 3,
        "hits": {"exact": 2, "near": 1},
        "errors": {"bad_input": 2, "not_found": 1, "unsupported_media_type": 1},
        "errors_total": 4,
        "passes": 2,
        "wall_s": 4.0,
        "startup_s": 1.5,
        "items_per_s": 2.5,
    }


def test_the_table_shows_every_figure() -> None:
    table = _summary().table()
    lines = table.splitlines()
    assert lines[0] == lines[-1] and lines[0].startswith("+-")
    assert len({len(line) for line in lines}) == 1  # aligned
    for label, value in [
        ("items", "12"),
        ("skipped (already done)", "2"),
        ("analysed (engine)", "3"),
        ("hits exact", "2"),
        ("hits near", "1"),
        ("errors", "4"),
        ("  bad_input", "2"),
        ("wall seconds", "4.0"),
        ("  of which Ray start", "1.5"),
        ("items/s", "2.50"),
    ]:
        assert any(
            line.startswith(f"| {label} ") and line.rstrip("|").strip().endswith(value)
            for line in lines
        ), label


def test_no_time_no_rate() -> None:
    assert ScanSummary(items=0, skipped=0).items_per_s == 0.0


def test_summary_json_is_written_in_the_output_folder(tmp_path: Path) -> None:
    path = write_summary(tmp_path, _summary())
    assert path == tmp_path / "summary.json"
    assert json.loads(path.read_text("utf-8"))["hits"] == {"exact": 2, "near": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
