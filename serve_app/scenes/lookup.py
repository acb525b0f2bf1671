"""What one library lookup answers: the stored analysis, if any, and the image's marks."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.library.store import LibraryHit
from serve_app.scenes.state import Marks


@dataclass(frozen=True)
class Looked:
    """A FingerprintStore lookup: ``hit`` (or None) and the list entries and review of the image."""

    hit: LibraryHit | None
    marks: Marks = field(default_factory=Marks)
    epoch: str | None = None
    """The store's epoch when it answered (:meth:`FingerprintStore.epoch`)."""
