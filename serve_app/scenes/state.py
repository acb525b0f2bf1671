"""The scenes state: term lists, image lists and reviews, rebuilt by applying log events.

:class:`ScenesState` is a pure fold over the event log (:mod:`serve_app.scenes.log`):
:meth:`ScenesState.apply` takes one :class:`~serve_app.scenes.log.Event` at a time, in
sequence order, and the queries answer from memory. It knows nothing of Ray or HTTP; the
FingerprintStore replica holds one through a :class:`~serve_app.scenes.store.ScenesStore`.

Image-list entries and reviews are found for an image *and its near copies* with the
fingerprint library's rule (:mod:`serve_app.scenes.marks`). A review is authoritative for
the image it was made on and every near copy of it; when several reviewed images match a
lookup, the latest review (highest sequence number) applies.

Event kinds this version does not know are skipped with a warning, so an older reader
keeps working on a log a newer writer extended.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.scenes.events import (
    ACTIONS,
    EVENT_MODELS,
    ImagesAdd,
    ImagesRemove,
    Review,
    TermsAdd,
    TermsRemove,
    fingerprint_from_b64,
    parse_body,
)
from serve_app.scenes.log import Event
from serve_app.scenes.marks import ImageMarks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageListHit:
    """An image-list entry that applies to a looked-up image."""

    list_name: str
    action: str
    """``block``, ``review`` or ``pass``."""
    entry_id: str
    label: str | None
    match: Literal["exact", "near"]
    distance: int
    """0 for an exact hit, else the Hamming distance through which the index found it
    (:meth:`~serve_app.media.fingerprint.Fingerprinter.coarse_distance`)."""


@dataclass(frozen=True)
class ReviewHit:
    """The review that applies to a looked-up image."""

    review_id: str
    labels: dict[str, Any]
    """``emotion``, ``intent``, ``sarcastic``, ``offensiveness`` as the reviewer set them."""
    reviewer: str
    at: float
    match: Literal["exact", "near"]
    distance: int


@dataclass(frozen=True)
class Marks:
    """Everything the scenes know about one image: list entries and the applying review."""

    images: tuple[ImageListHit, ...] = ()
    """Nearest first."""
    review: ReviewHit | None = None

    @property
    def empty(self) -> bool:
        """No list entry and no review applies."""
        return not self.images and self.review is None


@dataclass(frozen=True)
class _ImageEntry:
    list_name: str
    entry_id: str
    action: str
    label: str | None
    by: str
    at: float
    seq: int
    thumbnail: str | None


@dataclass(frozen=True)
class _ReviewRecord:
    review_id: str
    seq: int
    at: float
    reviewer: str
    key: str | None
    request_id: str | None
    labels: dict[str, Any]
    before: dict[str, Any] | None
    note: str | None
    thumbnail: str | None


def _image_mark_id(list_name: str, entry_id: str) -> str:
    # Neither part may contain "/" (events.LIST_NAME_PATTERN, events.ID_PATTERN).
    return f"{list_name}/{entry_id}"


class ScenesState:
    """Term lists, image lists and reviews as of the last applied event; thread-safe."""

    def __init__(self, fingerprinter: Fingerprinter) -> None:
        """Match images with ``fingerprinter`` (the library's, so both agree on near copies)."""
        self.fingerprinter = fingerprinter
        self._lock = threading.RLock()
        self._last_seq = 0
        self._terms_version = 0
        self._terms: dict[str, dict[str, str]] = {}
        self._images: dict[str, dict[str, _ImageEntry]] = {}
        self._image_marks = ImageMarks(fingerprinter)
        self._review_marks = ImageMarks(fingerprinter)  # one mark per reviewed image
        self._latest_reviews: dict[str, _ReviewRecord] = {}  # exact key -> latest review
        self._superseded: set[str] = set()  # reviewed images a later review of a copy answers
        self._audit: list[_ReviewRecord] = []  # every review, by seq
        self._audit_seqs: list[int] = []
        self._unknown: Counter[str] = Counter()

    # -- applying ----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Sequence number of the last event applied or skipped (0: none yet)."""
        with self._lock:
            return self._last_seq

    @property
    def terms_version(self) -> int:
        """Sequence number of the last term event applied (0: none); changes iff terms may."""
        with self._lock:
            return self._terms_version

    @property
    def unknown_events(self) -> dict[str, int]:
        """Events skipped because their kind is unknown to this version, per kind."""
        with self._lock:
            return dict(self._unknown)

    def apply(self, event: Event) -> bool:
        """Apply ``event``; whether it changed anything the state tracks.

        Events at or below :attr:`last_seq` are ignored (a replay overlapping what was
        applied). An unknown kind is skipped with a warning (logged once per kind). An
        invalid body raises ``ValueError`` and leaves the state as it was.
        """
        with self._lock:
            if event.seq <= self._last_seq:
                return False
            if event.kind not in EVENT_MODELS:
                if not self._unknown[event.kind]:
                    logger.warning(
                        "skipping scenes event kind %r (seq %d): unknown to this version; "
                        "later ones are skipped silently",
                        event.kind,
                        event.seq,
                    )
                self._unknown[event.kind] += 1
                self._last_seq = event.seq
                return False
            body = parse_body(event.kind, event.body)
            if isinstance(body, TermsAdd | TermsRemove):
                self._apply_terms(body, event)
            elif isinstance(body, ImagesAdd):
                self._apply_image_add(body, event)
            elif isinstance(body, ImagesRemove):
                self._apply_image_remove(body)
            elif isinstance(body, Review):
                self._apply_review(body, event)
            self._last_seq = event.seq
            return True

    def _apply_terms(self, body: TermsAdd | TermsRemove, event: Event) -> None:
        if isinstance(body, TermsAdd):
            terms = self._terms.setdefault(body.list_name, {})
            for term in body.terms:
                terms[term] = body.action
        else:
            terms = self._terms.get(body.list_name, {})
            for term in body.terms:
                terms.pop(term, None)
            if not terms:
                self._terms.pop(body.list_name, None)
        self._terms_version = event.seq

    def _apply_image_add(self, body: ImagesAdd, event: Event) -> None:
        fingerprint = fingerprint_from_b64(body.fingerprint)
        entries = self._images.setdefault(body.list_name, {})
        entries.pop(body.entry_id, None)  # re-added: moves to the end
        entries[body.entry_id] = _ImageEntry(
            list_name=body.list_name,
            entry_id=body.entry_id,
            action=body.action,
            label=body.label,
            by=body.by,
            at=event.at,
            seq=event.seq,
            thumbnail=body.thumbnail,
        )
        self._image_marks.add(
            _image_mark_id(body.list_name, body.entry_id),
            fingerprint,
            {"list": body.list_name, "entry_id": body.entry_id},
        )

    def _apply_image_remove(self, body: ImagesRemove) -> None:
        entries = self._images.get(body.list_name, {})
        if entries.pop(body.entry_id, None) is None:
            return
        self._image_marks.remove(_image_mark_id(body.list_name, body.entry_id))
        if not entries:
            del self._images[body.list_name]

    def _apply_review(self, body: Review, event: Event) -> None:
        fingerprint = fingerprint_from_b64(body.fingerprint)
        record = _ReviewRecord(
            review_id=body.review_id,
            seq=event.seq,
            at=event.at,
            reviewer=body.reviewer,
            key=body.key,
            request_id=body.request_id,
            labels=body.labels.model_dump(mode="json"),
            before=None if body.before is None else body.before.model_dump(mode="json"),
            note=body.note,
            thumbnail=body.thumbnail,
        )
        # Reviewed images this one is a copy of are now answered by this review: they
        # leave the export (lookups already prefer the latest review among the matches).
        for hit in self._review_marks.find(fingerprint):
            self._superseded.add(hit.mark_id)
        self._superseded.discard(fingerprint.exact)
        self._latest_reviews[fingerprint.exact] = record
        self._review_marks.add(fingerprint.exact, fingerprint, {"seq": event.seq})
        self._audit.append(record)
        self._audit_seqs.append(event.seq)

    # -- terms -------------------------------------------------------------------------

    def term_entries(self) -> list[tuple[str, str, str]]:
        """Every ``(term, list, action)``, by list then term."""
        with self._lock:
            return [
                (term, list_name, action)
                for list_name in sorted(self._terms)
                for term, action in sorted(self._terms[list_name].items())
            ]

    def term_lists(self) -> dict[str, dict[str, str]]:
        """list → term → action (a copy; lists with no terms are absent)."""
        with self._lock:
            return {name: dict(terms) for name, terms in sorted(self._terms.items())}

    # -- image lists -------------------------------------------------------------------

    def image_lists(self) -> dict[str, list[dict[str, Any]]]:
        """list → its entries (``entry_id``, ``action``, ``label``, ``by``, ``at``), oldest first.

        Lists with no entries are absent; thumbnails come from :meth:`image_entry`.
        """
        with self._lock:
            return {
                name: [
                    {
                        "entry_id": e.entry_id,
                        "action": e.action,
                        "label": e.label,
                        "by": e.by,
                        "at": e.at,
                    }
                    for e in entries.values()
                ]
                for name, entries in sorted(self._images.items())
            }

    def image_entry(self, list_name: str, entry_id: str) -> dict[str, Any] | None:
        """One image-list entry with its ``seq`` and ``thumbnail`` (base64 or None), or None."""
        with self._lock:
            entry = self._images.get(list_name, {}).get(entry_id)
            if entry is None:
                return None
            return {
                "list": entry.list_name,
                "entry_id": entry.entry_id,
                "action": entry.action,
                "label": entry.label,
                "by": entry.by,
                "at": entry.at,
                "seq": entry.seq,
                "thumbnail": entry.thumbnail,
            }

    def list_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """list → ``{"terms": {action: count}, "images": {action: count}}`` (every action)."""
        with self._lock:
            stats: dict[str, dict[str, dict[str, int]]] = {}
            for name in sorted({*self._terms, *self._images}):
                terms = Counter(self._terms.get(name, {}).values())
                images = Counter(e.action for e in self._images.get(name, {}).values())
                stats[name] = {
                    "terms": {action: terms[action] for action in ACTIONS},
                    "images": {action: images[action] for action in ACTIONS},
                }
            return stats

    # -- lookups -----------------------------------------------------------------------

    def marks_for(self, fingerprint: Fingerprint) -> Marks:
        """The image-list entries and the review that apply to this image or a near copy."""
        with self._lock:
            images: list[ImageListHit] = []
            for hit in self._image_marks.find(fingerprint):
                entry = self._images[hit.payload["list"]][hit.payload["entry_id"]]
                images.append(
                    ImageListHit(
                        list_name=entry.list_name,
                        action=entry.action,
                        entry_id=entry.entry_id,
                        label=entry.label,
                        match=hit.match,
                        distance=hit.distance,
                    )
                )
            review: ReviewHit | None = None
            reviewed = self._review_marks.find(fingerprint)
            if reviewed:
                latest = max(reviewed, key=lambda hit: int(hit.payload["seq"]))
                record = self._latest_reviews[latest.mark_id]
                review = ReviewHit(
                    review_id=record.review_id,
                    labels=dict(record.labels),
                    reviewer=record.reviewer,
                    at=record.at,
                    match=latest.match,
                    distance=latest.distance,
                )
            return Marks(images=tuple(images), review=review)

    # -- reviews -----------------------------------------------------------------------

    def audit(self, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        """Review events, newest first: at most ``limit``, only those below ``before_seq``.

        Each: ``review_id``, ``seq``, ``at``, ``reviewer``, ``key``, ``request_id``,
        ``before``, ``after`` (the labels set) and ``note``. Page on with the last ``seq``.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            end = len(self._audit)
            if before_seq is not None:
                end = bisect.bisect_left(self._audit_seqs, before_seq)
            page = self._audit[max(0, end - limit) : end][::-1]
            return [
                {
                    "review_id": r.review_id,
                    "seq": r.seq,
                    "at": r.at,
                    "reviewer": r.reviewer,
                    "key": r.key,
                    "request_id": r.request_id,
                    "before": None if r.before is None else dict(r.before),
                    "after": dict(r.labels),
                    "note": r.note,
                }
                for r in page
            ]

    def reviews(self) -> list[dict[str, Any]]:
        """The latest review of each reviewed image, oldest first (for an export).

        An image reviewed again, or whose near copy was reviewed later, appears once, with
        the later review (the one :meth:`marks_for` answers with). Each: ``review_id``,
        ``seq``, ``at``, ``reviewer``, ``labels``, ``before``, ``request_id`` and
        ``thumbnail`` (base64 or None).
        """
        with self._lock:
            latest = sorted(
                (r for exact, r in self._latest_reviews.items() if exact not in self._superseded),
                key=lambda r: r.seq,
            )
            return [
                {
                    "review_id": r.review_id,
                    "seq": r.seq,
                    "at": r.at,
                    "reviewer": r.reviewer,
                    "labels": dict(r.labels),
                    "before": None if r.before is None else dict(r.before),
                    "request_id": r.request_id,
                    "thumbnail": r.thumbnail,
                }
                for r in latest
            ]
