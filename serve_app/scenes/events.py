"""The scenes event kinds and their bodies: strict pydantic models, one per kind.

A body is validated before it is appended (:meth:`~serve_app.scenes.store.ScenesStore.write`)
and again when it is applied (:meth:`~serve_app.scenes.state.ScenesState.apply`); the log
keeps the canonical form (:func:`canonical_body`). Bytes travel base64-encoded: a
``fingerprint`` is :meth:`~serve_app.media.fingerprint.Fingerprint.to_bytes`, a
``thumbnail`` an encoded image. An invalid body raises ``ValueError``
(:class:`InvalidEventBody`), an unknown kind :class:`UnknownEventKind` (also a
``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from serve_app.media.fingerprint import Fingerprint
from serve_app.understanding.labels import Emotion, Intent
from serve_app.understanding.normalize import normalize

logger = logging.getLogger(__name__)

LIST_NAME_PATTERN: Final[str] = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
"""List names (as the policies in ``serve_app.config.models`` name them)."""
ID_PATTERN: Final[str] = r"^[A-Za-z0-9_.:-]{1,128}$"
"""Entry and review ids: safe in a URL path segment."""
MAX_TERMS: Final[int] = 10_000
MAX_TERM_CHARS: Final[int] = 100
MAX_THUMBNAIL_B64: Final[int] = 400_000
"""A thumbnail's base64 text at most (about 300 KB of image)."""
MAX_FINGERPRINT_B64: Final[int] = 8_192

Action = Literal["block", "review", "pass"]
ACTIONS: Final[tuple[str, ...]] = ("block", "review", "pass")


class InvalidEventBody(ValueError):
    """An event body does not fit its kind's model."""


class UnknownEventKind(ValueError):
    """No model for this event kind (a newer writer's, or a typo)."""


def decode_b64(text: str) -> bytes:
    """Strict base64 (standard alphabet, padded); ``ValueError`` otherwise."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not valid base64") from None


def encode_b64(data: bytes) -> str:
    """Standard padded base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


def fingerprint_from_b64(text: str) -> Fingerprint:
    """The :class:`Fingerprint` serialised in ``text``; ``ValueError`` when it is not one."""
    return Fingerprint.from_bytes(decode_b64(text))


def fingerprint_to_b64(fingerprint: Fingerprint) -> str:
    """``fingerprint`` as an event body carries it."""
    return encode_b64(fingerprint.to_bytes())


def _check_fingerprint(text: str) -> str:
    fingerprint_from_b64(text)
    return text


def _check_b64(text: str) -> str:
    if not decode_b64(text):
        raise ValueError("empty")
    return text


def _clean_terms(terms: list[str]) -> list[str]:
    cleaned = list(dict.fromkeys(term.strip() for term in terms))
    for term in cleaned:
        if not term:
            raise ValueError("terms must not be blank")
        try:
            term.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"term {term!r} is not valid Unicode text") from None
        if not normalize(term):
            raise ValueError(
                f"term {term!r} has no letter or digit left after normalisation, so it "
                "could never match"
            )
    return cleaned


ListName = Annotated[str, Field(pattern=LIST_NAME_PATTERN)]
ItemId = Annotated[str, Field(pattern=ID_PATTERN)]
Who = Annotated[str, Field(min_length=1, max_length=128)]
Terms = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=MAX_TERM_CHARS)]],
    Field(min_length=1, max_length=MAX_TERMS),
    AfterValidator(_clean_terms),
]
FingerprintB64 = Annotated[
    str, Field(min_length=1, max_length=MAX_FINGERPRINT_B64), AfterValidator(_check_fingerprint)
]
ThumbnailB64 = Annotated[
    str, Field(min_length=1, max_length=MAX_THUMBNAIL_B64), AfterValidator(_check_b64)
]


class EventBody(BaseModel):
    """Base of the bodies: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TermsAdd(EventBody):
    """``terms.add``: put ``terms`` on list ``list`` with ``action`` (replacing their action)."""

    list_name: ListName = Field(alias="list")
    action: Action
    terms: Terms
    by: Who


class TermsRemove(EventBody):
    """``terms.remove``: take ``terms`` off list ``list`` (absent ones are ignored)."""

    list_name: ListName = Field(alias="list")
    terms: Terms
    by: Who


class ImagesAdd(EventBody):
    """``images.add``: an image (by fingerprint) on list ``list``; replaces ``entry_id``."""

    list_name: ListName = Field(alias="list")
    action: Action
    entry_id: ItemId
    fingerprint: FingerprintB64
    label: Annotated[str, Field(max_length=200)] | None = None
    by: Who
    thumbnail: ThumbnailB64 | None = None


class ImagesRemove(EventBody):
    """``images.remove``: take entry ``entry_id`` off list ``list`` (absent: no change)."""

    list_name: ListName = Field(alias="list")
    entry_id: ItemId
    by: Who


class Labels(EventBody):
    """The labels a reviewer sets (DESIGN.md §3 closed sets)."""

    emotion: Emotion
    intent: Intent
    sarcastic: bool
    offensiveness: Annotated[int, Field(ge=0, le=3)]


class Review(EventBody):
    """``review``: a reviewer's labels for an image and its near copies."""

    review_id: ItemId
    fingerprint: FingerprintB64
    request_id: Annotated[str, Field(max_length=128)] | None = None
    labels: Labels
    before: Labels | None = None
    reviewer: Who
    key: Annotated[str, Field(max_length=128)] | None = None
    note: Annotated[str, Field(max_length=2000)] | None = None
    thumbnail: ThumbnailB64 | None = None


EVENT_MODELS: Final[dict[str, type[EventBody]]] = {
    "terms.add": TermsAdd,
    "terms.remove": TermsRemove,
    "images.add": ImagesAdd,
    "images.remove": ImagesRemove,
    "review": Review,
}
"""Every event kind this version writes and understands."""


def parse_body(kind: str, body: Any) -> EventBody:
    """``body`` validated as event ``kind``.

    Raises :class:`UnknownEventKind` for a kind not in :data:`EVENT_MODELS` and
    :class:`InvalidEventBody` (naming the fields) for a body that does not fit.
    """
    model = EVENT_MODELS.get(kind)
    if model is None:
        raise UnknownEventKind(f"unknown event kind {kind!r} (known: {sorted(EVENT_MODELS)})")
    if not isinstance(body, dict):
        raise InvalidEventBody(f"{kind} body must be a JSON object")
    try:
        return model.model_validate(body, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise InvalidEventBody(f"invalid {kind} body: {problems}") from None


def canonical_body(parsed: EventBody) -> dict[str, Any]:
    """The JSON form of a validated body, as it is logged (aliases, every field)."""
    return parsed.model_dump(mode="json", by_alias=True)
