"""Request and response bodies of the HTTP routes (DESIGN.md §3) around :class:`Analysis`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.understanding.analysis import Analysis
from serve_app.understanding.labels import Emotion, Intent


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalyzeJSONRequest(_Model):
    """JSON body of ``POST /v1/memes/analyze``."""

    image_base64: str = Field(
        min_length=1, description="The image bytes, base64 (a data: URL prefix is accepted)."
    )
    text: str | None = Field(None, description="Optional context: caption, comment, danmaku.")
    policy: str | None = Field(
        None,
        max_length=64,
        description="Scene policy that judges this request (default: `default`; the "
        "x-memeserve-policy header is the fallback).",
    )


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
    policy: str | None = Field(
        None, max_length=64, description="Scene policy for this item (else the batch's)."
    )


class BatchRequest(_Model):
    """JSON body of ``POST /v1/memes/analyze/batch``."""

    items: list[BatchItem] = Field(
        min_length=1, description="Memes to analyse; at most limits.max_batch_items."
    )
    policy: str | None = Field(
        None,
        max_length=64,
        description="Scene policy for every item without its own (default: `default`; the "
        "x-memeserve-policy header is the fallback).",
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


# --------------------------------------------------------------------------- scenes
# Bodies of the admin routes (term and image lists, reviews, decisions).

ListAction = Literal["block", "review", "pass"]


class TermsWrite(_Model):
    """``POST /v1/lists/{name}/terms``: add terms with one action."""

    action: ListAction = Field(description="block / review / pass.")
    terms: list[str] = Field(
        min_length=1, max_length=10_000, description="Terms; matched after normalisation."
    )


class TermsRemove(_Model):
    """``POST /v1/lists/{name}/terms/remove``."""

    terms: list[str] = Field(min_length=1, max_length=10_000, description="Terms to remove.")


class ImageWrite(_Model):
    """``POST /v1/lists/{name}/images`` as JSON (multipart: fields image, action, label)."""

    image_base64: str = Field(min_length=1, description="The image bytes, base64.")
    action: ListAction = Field(description="block / review / pass.")
    label: str | None = Field(None, max_length=200, description="A note shown with the entry.")


class ImageRemove(_Model):
    """``POST /v1/lists/{name}/images/remove``."""

    entry_id: str = Field(min_length=1, max_length=128, description="The entry to remove.")


class ReviewLabels(_Model):
    """A reviewer's labels; a field left out keeps the decision's (or last review's) value."""

    emotion: Emotion | None = None
    intent: Intent | None = None
    sarcastic: bool | None = None
    offensiveness: int | None = Field(None, ge=0, le=3)


class ReviewRequest(_Model):
    """``POST /v1/reviews`` as JSON: a correction of a kept decision (multipart: by image)."""

    request_id: str = Field(
        min_length=1, max_length=128, description="The request whose image is reviewed."
    )
    labels: ReviewLabels = Field(description="The correct labels.")
    reviewer: str | None = Field(
        None, max_length=64, description="Who reviewed (default: the API key's name)."
    )
    note: str | None = Field(None, max_length=2000, description="Why, for the audit.")


class AcceptRequest(_Model):
    """``POST /v1/decisions/{request_id}/accept``: the model's labels were right."""

    reviewer: str | None = Field(
        None, max_length=64, description="Who reviewed (default: the API key's name)."
    )


class ImageReview(ReviewLabels):
    """``POST /v1/reviews`` as multipart: an image and its labels (JSON form for the schema)."""

    image_base64: str = Field(min_length=1, description="The image bytes, base64.")
    reviewer: str | None = Field(None, max_length=64, description="Who reviewed.")
    note: str | None = Field(None, max_length=2000, description="Why, for the audit.")


# --------------------------------------------------------------------------- jobs


class JobRequest(_Model):
    """``POST /v1/jobs``: items as the batch route's, a policy, an optional callback."""

    items: list[BatchItem] = Field(min_length=1, description="Memes; at most jobs.max_items.")
    policy: str | None = Field(
        None, max_length=64, description="Scene policy for items without their own."
    )
    callback_url: str | None = Field(
        None,
        max_length=2000,
        description="Where the finished job is POSTed, signed (x-memeserve-signature); its "
        "host must be on jobs.callback_hosts.",
    )
