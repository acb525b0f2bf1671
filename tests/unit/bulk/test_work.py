"""The per-item work of a scan: read and key, library answers, the engine, the output row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.bulk.rows import WorkRow, needs_engine, new_work_row
from serve_app.bulk.shared_library import StoreItem
from serve_app.bulk.work import EngineWorker, answer_from_library, finish, read_and_key
from serve_app.config.models import (
    AppArgs,
    ControllerUserConfig,
    LimitsArgs,
    PolicyArgs,
    StructurerUserConfig,
)
from serve_app.library.store import LibraryHit
from serve_app.media.fingerprint import Fingerprinter
from tests.support.hostile import UNIT_CASES, HostileCase
from tests.unit.bulk.fakes import FAIL, GARBLE, ScriptedEngine, an_analysis, png

ARGS = AppArgs()
FINGERPRINTER = Fingerprinter()
LEVEL_0 = ControllerUserConfig().level(0)


def _read(path: Path, text: str | None = None, args: AppArgs = ARGS) -> WorkRow:
    row = new_work_row(path.name, str(path), text)
    return read_and_key(row, args=args, fingerprinter=FINGERPRINTER)


def test_a_good_file_is_read_and_keyed(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(png((200, 30, 30)))
    row = _read(path, "破防了")
    assert row["status"] == 200 and row["error_code"] is None
    assert row["data"] == path.read_bytes()
    assert row["fingerprint"] and row["scope"]
    assert needs_engine(row)


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda case: case.name)
def test_hostile_files_get_the_status_and_code_the_api_gives(
    tmp_path: Path, case: HostileCase
) -> None:
    path = tmp_path / case.filename
    path.write_bytes(case.build())
    row = _read(path)
    assert row["status"] == case.status
    if case.ok:
        assert needs_engine(row)
    else:
        assert row["error_code"] == case.code and row["data"] is None
        assert case.mentions.lower() in (row["error_message"] or "").lower()


def test_a_missing_file_is_404_not_found(tmp_path: Path) -> None:
    row = _read(tmp_path / "gone.png")
    assert (row["status"], row["error_code"]) == (404, "not_found")
    assert "gone.png" in (row["error_message"] or "")


def test_an_oversize_file_is_413_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png((1, 2, 3)) + b"\0" * 5000)
    args = AppArgs(limits=LimitsArgs(max_bytes=1024))
    row = _read(path, args=args)
    assert (row["status"], row["error_code"]) == (413, "payload_too_large")
    assert row["error_message"] == f"image is {path.stat().st_size} bytes; the limit is 1024"


def test_an_over_long_text_is_422(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(png((9, 9, 9)))
    row = _read(path, "字" * (ARGS.limits.max_text_chars + 1))
    assert (row["status"], row["error_code"]) == (422, "invalid_request")


def _worker(engine: ScriptedEngine, stored: list[StoreItem]) -> EngineWorker:
    return EngineWorker(ARGS, StructurerUserConfig(), LEVEL_0, stored.extend, engine=engine)


def test_the_engine_answers_misses_and_fresh_model_answers_are_stored(tmp_path: Path) -> None:
    rows = []
    for index, text in enumerate([None, FAIL, GARBLE, "你说得对"]):
        path = tmp_path / f"{index}.png"
        path.write_bytes(png((index * 40, 10, 10)))
        rows.append(_read(path, text))
    missing = _read(tmp_path / "missing.png")
    engine = ScriptedEngine()
    stored: list[StoreItem] = []
    worker = _worker(engine, stored)

    out = worker.analyse([*rows, missing])
    again = worker.analyse(rows[:1])
    worker.close()
    worker.close()

    assert engine.started == 1 and engine.shutdowns == 1  # one engine, started once
    assert [len(batch) for batch in engine.batches] == [4, 1]  # one engine call per block
    assert [row["status"] for row in out] == [200, 502, 200, 200, 404]
    assert out[1]["error_code"] == "engine_error"
    assert all(row["data"] is None for row in out)
    fresh = json.loads(out[0]["analysis"] or "{}")
    assert fresh["emotion"] == "sarcasm" and fresh["meta"]["cache"]["hit"] is False
    assert fresh["meta"]["degradation_level"] == 0 and fresh["request_id"].startswith("scan-")
    # The unreadable answer is the Structurer's fallback: answered, never stored.
    assert json.loads(out[2]["analysis"] or "{}")["meta"]["warnings"]
    assert [item.fingerprint for item in stored] == [
        rows[0]["fingerprint"],
        rows[3]["fingerprint"],
        rows[0]["fingerprint"],
    ]
    assert again[0]["status"] == 200


def test_a_library_hit_is_answered_as_the_service_answers_it(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(png((3, 4, 5)))
    stored = an_analysis()
    row = answer_from_library(_read(path), LibraryHit(stored, level=0, match="near", distance=3))
    assert row["data"] is None and row["cache_match"] == "near" and not needs_engine(row)
    analysis = json.loads(row["analysis"] or "{}")
    assert analysis["meta"]["cache"] == {"hit": True, "match": "near", "distance": 3}
    assert analysis["meta"]["timings_ms"]["engine"] == 0.0
    assert analysis["request_id"] != stored["request_id"]
    assert analysis["explanation"] == stored["explanation"]


def test_finish_judges_by_the_policy_and_keeps_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(png((3, 4, 5)))
    hit = answer_from_library(_read(path), LibraryHit(an_analysis(), 0, "exact", 0))
    row = finish(hit, model="scripted@1", policy=PolicyArgs())
    assert row.status == 200 and row.cache_match == "exact"
    assert (row.risk_level, row.risk_action) == ("high", "block")
    assert json.loads(row.analysis or "{}")["risk"]["policy"] == "default"

    soft = PolicyArgs(
        level_actions={"none": "pass", "low": "pass", "medium": "pass", "high": "tag"}
    )
    assert finish(hit, model="m", policy=soft, policy_name="soft").risk_action == "tag"

    error = finish(_read(tmp_path / "gone.png"), model="m@1", policy=PolicyArgs())
    assert (error.status, error.error_code, error.model) == (404, "not_found", "m@1")
    assert error.analysis is None and error.scanned_at.endswith("+00:00")
