"""A scan's output folder: committed parts, written atomically, and resume from them.

Each block of rows becomes one part in two formats, ``part-<run>-<n>.jsonl`` and
``part-<run>-<n>.parquet``, with the same rows. Each file is written under a temporary
name (``.tmp-…``) in the same folder, flushed to disk and then renamed with
``os.replace``; the Parquet file first, the JSONL file last. **A part is committed when
its JSONL file exists**: a killed scan leaves at most temporary files and a Parquet file
without its JSONL, which :func:`clean_uncommitted` removes on the next run, whose items
are then scanned again. :func:`committed_ids` is what the next run skips.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.bulk.rows import COLUMNS, ScanRow

logger = logging.getLogger(__name__)

PART_PREFIX = "part-"
TEMP_PREFIX = ".tmp-"
JSONL = ".jsonl"
PARQUET = ".parquet"
SUMMARY_FILE = "summary.json"


def parquet_schema() -> Any:
    """The Parquet schema of :class:`~serve_app.bulk.rows.ScanRow`, column for column."""
    import pyarrow as pa

    types = {
        "status": pa.int32(),
        "sarcastic": pa.bool_(),
        "offensiveness": pa.int32(),
        "confidence": pa.float64(),
    }
    return pa.schema([pa.field(name, types.get(name, pa.string())) for name in COLUMNS])


def run_stamp() -> str:
    """A name for one scan run: UTC time and a random suffix (sorts by time)."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def part_name(run: str) -> str:
    """A fresh part name of ``run`` (no suffix)."""
    return f"{PART_PREFIX}{run}-{uuid.uuid4().hex[:10]}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_part(out: Path, name: str, rows: Sequence[ScanRow]) -> tuple[Path, Path]:
    """Write ``rows`` as part ``name`` (Parquet, then JSONL) and commit it; the two paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = out / f"{name}{PARQUET}"
    jsonl = out / f"{name}{JSONL}"
    temp_parquet = out / f"{TEMP_PREFIX}{name}{PARQUET}"
    temp_jsonl = out / f"{TEMP_PREFIX}{name}{JSONL}"
    records = [row.model_dump() for row in rows]
    table = pa.Table.from_pylist(records, schema=parquet_schema())
    with temp_parquet.open("wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    with temp_jsonl.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp_parquet, parquet)
    os.replace(temp_jsonl, jsonl)  # the commit
    _fsync_dir(out)
    return jsonl, parquet


def committed_parts(out: Path) -> list[Path]:
    """The committed parts' JSONL files, sorted by name."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.glob(f"{PART_PREFIX}*{JSONL}") if p.is_file())


def clean_uncommitted(out: Path) -> list[Path]:
    """Remove what a killed scan left: temporary files, Parquet parts without JSONL."""
    if not out.is_dir():
        return []
    removed: list[Path] = []
    leftovers = list(out.glob(f"{TEMP_PREFIX}{PART_PREFIX}*"))
    leftovers += [
        p for p in out.glob(f"{PART_PREFIX}*{PARQUET}") if not p.with_suffix(JSONL).exists()
    ]
    for path in sorted(leftovers):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        logger.info("removed %d uncommitted files from %s", len(removed), out)
    return removed


def _jsonl_ids(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)["id"]


def part_ids(jsonl: Path) -> list[str]:
    """The ids of one committed part (its Parquet ``id`` column where it has one)."""
    parquet = jsonl.with_suffix(PARQUET)
    if parquet.exists():
        import pyarrow.parquet as pq

        try:
            ids: list[str] = pq.read_table(parquet, columns=["id"]).column("id").to_pylist()
            return ids
        except Exception as exc:  # unreadable Parquet: the JSONL is the record
            logger.warning("reading ids from %s failed (%s); reading the JSONL", parquet, exc)
    return list(_jsonl_ids(jsonl))


def committed_ids(out: Path) -> set[str]:
    """Every id in a committed part of ``out``: what the next run skips."""
    done: set[str] = set()
    for jsonl in committed_parts(out):
        done.update(part_ids(jsonl))
    return done


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Every committed row of ``out`` (from the JSONL files), for tests and small outputs."""
    rows: list[dict[str, Any]] = []
    for jsonl in committed_parts(out):
        with jsonl.open("r", encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows
