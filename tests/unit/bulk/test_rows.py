"""The row schema of a scan's output and the work rows between its stages."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serve_app.bulk.rows import (
    COLUMNS,
    ScanRow,
    analysed_row,
    error_row,
    fail,
    needs_engine,
    new_work_row,
)
from serve_app.config.models import PolicyArgs
from serve_app.errors import UnsupportedMediaType
from serve_app.scenes.decide import decide
from tests.unit.bulk.fakes import an_analysis


def test_the_columns_are_the_documented_ones_in_order() -> None:
    assert COLUMNS == (
        "id",
        "path",
        "status",
        "error_code",
        "error_message",
        "analysis",
        "emotion",
        "intent",
        "sarcastic",
        "offensiveness",
        "confidence",
        "risk_level",
        "risk_action",
        "cache_match",
        "model",
        "scanned_at",
    )


def test_an_analysed_row_carries_the_labels_and_the_whole_analysis() -> None:
    analysis = decide(an_analysis(), "default", PolicyArgs())
    row = analysed_row(
        item_id="a/b.png",
        path="/in/a/b.png",
        analysis=analysis,
        cache_match="near",
        scanned_at="2026-12-07T10:00:00.000+00:00",
    )
    assert (row.status, row.error_code, row.error_message) == (200, None, None)
    assert (row.emotion, row.intent, row.sarcastic) == ("sarcasm", "offensive", True)
    assert (row.offensiveness, row.confidence) == (3, 0.9)
    assert (row.risk_level, row.risk_action) == ("high", "block")
    assert row.cache_match == "near" and row.model == "scripted@1"
    assert row.analysis is not None and json.loads(row.analysis) == analysis
    assert json.loads(row.analysis)["risk"]["policy"] == "default"
    assert not row.analysed  # answered by the library
    assert list(row.model_dump()) == list(COLUMNS)


def test_an_error_row_has_the_api_status_code_and_message_and_no_labels() -> None:
    row = error_row(
        item_id="x.jpg",
        path="/in/x.jpg",
        status=415,
        code="unsupported_media_type",
        message="svg is not an allowed image type",
        model="memeserve-lite:lite-1",
        scanned_at="2026-12-07T10:00:00.000+00:00",
    )
    assert row.status == 415 and row.error_code == "unsupported_media_type"
    assert row.analysis is None and row.emotion is None and row.risk_action is None
    assert not row.analysed


def test_the_row_schema_is_strict() -> None:
    good = error_row(
        item_id="x", path="/x", status=404, code="not_found", message="m", model="m", scanned_at="t"
    ).model_dump()
    with pytest.raises(ValidationError):
        ScanRow.model_validate({**good, "extra": 1})
    with pytest.raises(ValidationError):
        ScanRow.model_validate({**good, "status": "404"})
    with pytest.raises(ValidationError):
        ScanRow.model_validate({**good, "cache_match": "fuzzy"})


def test_a_failed_work_row_drops_its_bytes_and_needs_no_engine() -> None:
    row = new_work_row("a", "/a", None)
    row["data"], row["fingerprint"], row["scope"] = b"bytes", b"fp", "scope"
    assert needs_engine(row)
    failed = fail(row, UnsupportedMediaType("no"))
    assert failed["data"] is None and failed["status"] == 415
    assert (failed["error_code"], failed["error_message"]) == ("unsupported_media_type", "no")
    assert not needs_engine(failed)
    assert row["status"] == 200  # the original is untouched
