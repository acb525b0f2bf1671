"""The rows a scan writes, one per item, and the work row its stages pass on.

A :class:`ScanRow` is what lands in the output parts (JSONL and Parquet, the same
columns in the order of :data:`COLUMNS`): the item's id and path, an HTTP-like
``status`` (200, or the status the HTTP API gives the same file: 400, 404, 413, 415,
422, 502 …) with its ``error_code`` and ``error_message``, the full analysis as JSON
text, its main labels as columns, the risk under the scan's policy, how the fingerprint
library answered (``cache_match``), the model and the time of the scan.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import MemeServeError

CacheMatch = Literal["exact", "near"]


class ScanRow(BaseModel):
    """One item's result, as written to the output parts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(description="The item's id (path relative to INPUT, or the manifest's id).")
    path: str = Field(description="The file that was read (absolute).")
    status: int = Field(description="200, or the HTTP status the API gives this input.")
    error_code: str | None = Field(None, description="The API's error code; null on 200.")
    error_message: str | None = Field(None, description="The API's error message; null on 200.")
    analysis: str | None = Field(None, description="The full analysis as JSON text; null on error.")
    emotion: str | None = Field(None, description="analysis.emotion")
    intent: str | None = Field(None, description="analysis.intent")
    sarcastic: bool | None = Field(None, description="analysis.sarcastic")
    offensiveness: int | None = Field(None, description="analysis.offensiveness (0-3)")
    confidence: float | None = Field(None, description="analysis.confidence (0-1)")
    risk_level: str | None = Field(None, description="analysis.risk.level under the policy")
    risk_action: str | None = Field(None, description="analysis.risk.action under the policy")
    cache_match: CacheMatch | None = Field(
        None, description="exact / near: answered by the fingerprint library; null: not."
    )
    model: str = Field(description="The model that produced (or would produce) the analysis.")
    scanned_at: str = Field(description="When this row was written (ISO 8601, UTC).")

    @property
    def analysed(self) -> bool:
        """Answered by the engine in this scan (not by the library, not an error)."""
        return self.status == 200 and self.cache_match is None


COLUMNS: tuple[str, ...] = tuple(ScanRow.model_fields)
"""The output columns, in order."""


def analysed_row(
    *,
    item_id: str,
    path: str,
    analysis: dict[str, Any],
    cache_match: CacheMatch | None,
    scanned_at: str,
) -> ScanRow:
    """The row of an item with an analysis (already judged: ``risk`` has its action)."""
    risk = analysis["risk"]
    return ScanRow(
        id=item_id,
        path=path,
        status=200,
        analysis=json.dumps(analysis, ensure_ascii=False, sort_keys=True),
        emotion=analysis["emotion"],
        intent=analysis["intent"],
        sarcastic=bool(analysis["sarcastic"]),
        offensiveness=int(analysis["offensiveness"]),
        confidence=float(analysis["confidence"]),
        risk_level=risk["level"],
        risk_action=risk["action"],
        cache_match=cache_match,
        model=analysis["meta"]["model"],
        scanned_at=scanned_at,
    )


def error_row(
    *, item_id: str, path: str, status: int, code: str, message: str, model: str, scanned_at: str
) -> ScanRow:
    """The row of an item that got no analysis: the API's status, code and message."""
    return ScanRow(
        id=item_id,
        path=path,
        status=status,
        error_code=code,
        error_message=message,
        model=model,
        scanned_at=scanned_at,
    )


class WorkRow(TypedDict):
    """An item on its way through the scan's stages (one dict per item in a batch).

    ``data`` (the file's bytes), ``fingerprint`` and ``scope`` are set once the file
    was read and keyed; ``analysis`` (JSON text, policy-free as the library stores it)
    and ``cache_match`` once it is answered; ``status`` is 200 until something fails,
    then ``error_code`` and ``error_message`` say what.
    """

    id: str
    path: str
    text: str | None
    data: bytes | None
    fingerprint: bytes | None
    scope: str | None
    status: int
    error_code: str | None
    error_message: str | None
    analysis: str | None
    cache_match: str | None


WORK_FIELDS: tuple[str, ...] = tuple(WorkRow.__annotations__)


def new_work_row(item_id: str, path: str, text: str | None) -> WorkRow:
    """A fresh work row for an item (status 200, nothing read yet)."""
    return WorkRow(
        id=item_id,
        path=path,
        text=text,
        data=None,
        fingerprint=None,
        scope=None,
        status=200,
        error_code=None,
        error_message=None,
        analysis=None,
        cache_match=None,
    )


def fail(row: WorkRow, error: MemeServeError) -> WorkRow:
    """``row`` failed with ``error``: its status, code and message; the bytes dropped."""
    failed = row.copy()
    failed["data"] = None
    failed["status"] = error.status
    failed["error_code"] = error.code
    failed["error_message"] = error.message
    return failed


def needs_engine(row: WorkRow) -> bool:
    """Keyed, not failed, not answered yet: the engine's work."""
    return row["status"] == 200 and row["analysis"] is None and row["fingerprint"] is not None
