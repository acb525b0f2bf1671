"""Marks on images, found again for the image and its near copies.

An :class:`ImageMarks` holds marks (a list entry, a review …), each on one image's
:class:`~serve_app.media.fingerprint.Fingerprint`, and answers "which marks apply to this
image?" with the fingerprint library's rule (DESIGN.md §4): an exact hit on the decoded
pixel hash, else candidates from a :class:`~serve_app.media.fingerprint.FingerprintIndex`
within ``coarse_radius`` (by the window codes that tolerate crops of a few percent a side;
by the whole-picture code for version 1 fingerprints), each confirmed by
:meth:`~serve_app.media.fingerprint.Fingerprinter.near_distance` (which refuses the same
template under another caption) — the same rule as
:class:`~serve_app.library.store.FingerprintLibrary`. Lookups cost an index probe plus one
detail check per candidate, not a pass over the marks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.media.fingerprint import Fingerprint, Fingerprinter, FingerprintIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarkHit:
    """A mark that applies to a looked-up image, and how closely it matched."""

    mark_id: str
    payload: dict[str, Any]
    """A copy of what :meth:`ImageMarks.add` was given."""
    match: Literal["exact", "near"]
    distance: int
    """0 for an exact hit, else
    :meth:`~serve_app.media.fingerprint.Fingerprinter.coarse_distance` (0..``coarse_radius``)."""


@dataclass(frozen=True)
class _Mark:
    item: int
    fingerprint: Fingerprint
    payload: dict[str, Any]


class ImageMarks:
    """Marks keyed by id, each on one image; exact + near-duplicate lookup.

    Not thread-safe: the owner (:class:`~serve_app.scenes.state.ScenesState`) serialises
    calls.
    """

    def __init__(self, fingerprinter: Fingerprinter) -> None:
        """Match with ``fingerprinter``'s thresholds (its ``coarse_radius`` and detail check)."""
        self.fingerprinter = fingerprinter
        self._marks: dict[str, _Mark] = {}
        self._by_item: dict[int, str] = {}
        self._by_exact: dict[str, dict[str, None]] = {}  # exact key -> mark ids (ordered set)
        self._index = FingerprintIndex(fingerprinter.params.coarse_radius)
        self._next_item = 0

    def add(self, mark_id: str, fingerprint: Fingerprint, payload: dict[str, Any]) -> None:
        """Put mark ``mark_id`` on ``fingerprint``'s image, replacing a mark of that id."""
        self.remove(mark_id)
        item = self._next_item
        self._next_item += 1
        self._marks[mark_id] = _Mark(item, fingerprint, dict(payload))
        self._by_item[item] = mark_id
        self._by_exact.setdefault(fingerprint.exact, {})[mark_id] = None
        self._index.add(item, fingerprint)

    def remove(self, mark_id: str) -> bool:
        """Forget mark ``mark_id``; whether it was there."""
        mark = self._marks.pop(mark_id, None)
        if mark is None:
            return False
        del self._by_item[mark.item]
        self._index.remove(mark.item)
        same = self._by_exact[mark.fingerprint.exact]
        del same[mark_id]
        if not same:
            del self._by_exact[mark.fingerprint.exact]
        return True

    def get(self, mark_id: str) -> tuple[Fingerprint, dict[str, Any]] | None:
        """The fingerprint and (a copy of) the payload of mark ``mark_id``, or None."""
        mark = self._marks.get(mark_id)
        return None if mark is None else (mark.fingerprint, dict(mark.payload))

    def find(self, fingerprint: Fingerprint) -> list[MarkHit]:
        """Every mark on this image or a near copy, nearest first (ties by mark id).

        Marks on the same decoded pixels are ``exact`` hits at distance 0; the others
        must pass :meth:`~serve_app.media.fingerprint.Fingerprinter.near_distance`.
        """
        exact_ids = self._by_exact.get(fingerprint.exact, {})
        hits = [
            MarkHit(mark_id, dict(self._marks[mark_id].payload), "exact", 0)
            for mark_id in exact_ids
        ]
        for item, _ in self._index.search(fingerprint):
            mark_id = self._by_item[item]
            if mark_id in exact_ids:
                continue
            mark = self._marks[mark_id]
            distance = self.fingerprinter.near_distance(fingerprint, mark.fingerprint)
            if distance is not None:
                hits.append(MarkHit(mark_id, dict(mark.payload), "near", distance))
        hits.sort(key=lambda hit: (hit.distance, hit.match != "exact", hit.mark_id))
        return hits

    def __len__(self) -> int:
        """Number of marks."""
        return len(self._marks)

    def __contains__(self, mark_id: object) -> bool:
        """Whether mark ``mark_id`` is held."""
        return mark_id in self._marks
