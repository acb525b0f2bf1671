"""Committed parts (JSONL + Parquet, atomically) and resume from them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from serve_app.bulk.parts import (
    clean_uncommitted,
    committed_ids,
    committed_parts,
    part_name,
    read_rows,
    run_stamp,
    write_part,
)
from serve_app.bulk.rows import COLUMNS, ScanRow, analysed_row, error_row
from serve_app.config.models import PolicyArgs
from serve_app.scenes.decide import decide
from tests.unit.bulk.fakes import an_analysis

WHEN = "2026-12-07T10:00:00.000+00:00"


def _rows(*ids: str) -> list[ScanRow]:
    analysis = decide(an_analysis(), "default", PolicyArgs())
    rows: list[ScanRow] = []
    for index, item_id in enumerate(ids):
        if index % 2:
            rows.append(
                error_row(
                    item_id=item_id,
                    path=f"/in/{item_id}",
                    status=400,
                    code="bad_input",
                    message="corrupt or truncated JPEG image",
                    model="m@1",
                    scanned_at=WHEN,
                )
            )
        else:
            rows.append(
                analysed_row(
                    item_id=item_id,
                    path=f"/in/{item_id}",
                    analysis=analysis,
                    cache_match=None,
                    scanned_at=WHEN,
                )
            )
    return rows


def test_a_part_is_one_jsonl_and_one_parquet_file_with_the_same_rows(tmp_path: Path) -> None:
    rows = _rows("a.png", "b.jpg", "c/d.png")
    jsonl, parquet = write_part(tmp_path, part_name(run_stamp()), rows)

    lines = [json.loads(line) for line in jsonl.read_text("utf-8").splitlines()]
    table = pq.read_table(parquet)
    assert lines == [row.model_dump() for row in rows]
    assert table.column_names == list(COLUMNS)
    assert table.to_pylist() == lines
    assert str(table.schema.field("status").type) == "int32"
    assert str(table.schema.field("sarcastic").type) == "bool"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([jsonl.name, parquet.name])


def test_committed_ids_are_every_id_of_every_committed_part(tmp_path: Path) -> None:
    run = run_stamp()
    write_part(tmp_path, part_name(run), _rows("a", "b"))
    write_part(tmp_path, part_name(run), _rows("c"))
    assert committed_ids(tmp_path) == {"a", "b", "c"}
    assert sorted(row["id"] for row in read_rows(tmp_path)) == ["a", "b", "c"]


def test_temporary_and_half_committed_parts_are_not_counted_and_are_removed(
    tmp_path: Path,
) -> None:
    run = run_stamp()
    write_part(tmp_path, part_name(run), _rows("done"))
    # A scan killed while writing: temporary files of one part ...
    killed = part_name(run)
    write_part(tmp_path, killed, _rows("half"))
    (tmp_path / f"{killed}.jsonl").rename(tmp_path / f".tmp-{killed}.jsonl")
    (tmp_path / f"{killed}.parquet").rename(tmp_path / f".tmp-{killed}.parquet")
    # ... and a part killed between its two renames (Parquet in place, JSONL not yet).
    between = part_name(run)
    write_part(tmp_path, between, _rows("between"))
    (tmp_path / f"{between}.jsonl").rename(tmp_path / f".tmp-{between}.jsonl")

    assert committed_ids(tmp_path) == {"done"}
    removed = clean_uncommitted(tmp_path)

    assert sorted(p.name for p in removed) == sorted(
        [
            f".tmp-{killed}.jsonl",
            f".tmp-{killed}.parquet",
            f".tmp-{between}.jsonl",
            f"{between}.parquet",
        ]
    )
    assert [p.name for p in committed_parts(tmp_path)] == [
        p.name for p in tmp_path.glob("part-*.jsonl")
    ]
    assert committed_ids(tmp_path) == {"done"}
    assert len(list(tmp_path.iterdir())) == 2


def test_ids_come_from_the_jsonl_when_the_parquet_is_gone(tmp_path: Path) -> None:
    _, parquet = write_part(tmp_path, part_name(run_stamp()), _rows("x", "y"))
    parquet.unlink()
    assert committed_ids(tmp_path) == {"x", "y"}


def test_an_absent_output_folder_has_nothing_committed(tmp_path: Path) -> None:
    assert committed_ids(tmp_path / "new") == set()
    assert clean_uncommitted(tmp_path / "new") == []
