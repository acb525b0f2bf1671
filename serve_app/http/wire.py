"""Request and response bodies of the HTTP routes (DESIGN.md §3) around :class:`Analysis`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serve_app.understanding.analysis import Analysis


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalyzeJSONRequest(_Model):
    """JSON body of ``POST /v1/memes/analyze``."""

    image_base64: str = Field(
        min_length=1, description="The image bytes, base64 (a data: URL prefix is accepted)."
    )
    text: str | None = Field(None, description="Optional context: caption, comment, danmaku.")


class ErrorDetail(_Model):
    code: str
    message: str
    request_id: str


class ErrorBody(_Model):
    error: ErrorDetail


class BatchItem(_Model):
    """One item of ``POST /v1/memes/analyze/batch``."""

    id: str = Field(min_length=1, max_length=128, description="Caller's id; echoed in the result.")
    image_base64: str = Field(
        min_length=1, description="The image bytes, base64 (a data: URL prefix is accepted)."
    )
    text: str | None = Field(None, description="Optional context: caption, comment, danmaku.")


class BatchRequest(_Model):
    """JSON body of ``POST /v1/memes/analyze/batch``."""

    items: list[BatchItem] = Field(
        min_length=1, description="Memes to analyse; at most limits.max_batch_items."
    )


class BatchItemResult(_Model):
    """One item's outcome: ``result`` on success, ``error`` (the error body's detail) else."""

    id: str
    status: int = Field(description="The HTTP status this item alone would have had.")
    result: Analysis | None = None
    error: ErrorDetail | None = None


class BatchResponse(_Model):
    """Response of ``POST /v1/memes/analyze/batch``: one entry per item, in order."""

    request_id: str
    succeeded: int
    failed: int
    items: list[BatchItemResult]
