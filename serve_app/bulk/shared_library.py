"""The fingerprint library as one scan uses it: consulted and filled, shared by every stage.

A scan consults the same library the service uses (``args.cache``: the same SQLite file
or Redis keys) and stores every fresh answer in it at level 0, as the Structurer does.
One :class:`ScanLibrary` (in one Ray actor) holds the in-memory index, so an answer
stored for one block is found by every later lookup, whichever worker asks.

Repeats *inside* one scan: blocks are looked up before earlier blocks have left the
engine, so a copy of a meme still on its way to the engine would be analysed again.
A miss therefore marks its key **pending** (a second, in-memory index with the same
exact and near-duplicate rules); a later item matching a pending key is **deferred**
instead of analysed. Deferred items are scanned again in the next pass, when the
answer they wait for is stored: they are then ordinary library hits (exact or near),
or, if the first copy failed, ordinary misses. Each pass analyses at least the first
copy of every group, so the passes end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.config.models import CacheArgs
from serve_app.library.backends.memory import MemoryBackend
from serve_app.library.store import FingerprintLibrary, LibraryHit, StoreKey, library_from
from serve_app.media.fingerprint import Fingerprint

logger = logging.getLogger(__name__)

SCAN_LEVEL = 0
"""Scans run at level 0 (full image budget and prompt) and store their answers there."""

Looked = LibraryHit | Literal["miss", "defer"]
"""A lookup's answer: a stored analysis, a miss (analyse it), or defer (a copy is pending)."""


@dataclass(frozen=True)
class LookupQuery:
    """One keyed item to look up (and, if deferred, to scan again later)."""

    id: str
    path: str
    text: str | None
    fingerprint: bytes
    """:meth:`~serve_app.media.fingerprint.Fingerprint.to_bytes`."""
    scope: str


@dataclass(frozen=True)
class StoreItem:
    """A fresh analysis to store under the key of the item it answers."""

    fingerprint: bytes
    scope: str
    analysis: dict[str, Any]


def store_key(fingerprint: bytes, scope: str) -> StoreKey:
    """The library key of a work row's fingerprint bytes and scope."""
    return StoreKey(fingerprint=Fingerprint.from_bytes(fingerprint), scope=scope)


class ScanLibrary:
    """The library of one scan, with the pending index and the deferred items."""

    def __init__(self, cache: CacheArgs, library: FingerprintLibrary | None = None) -> None:
        self.cache = cache
        self.library = library if library is not None else library_from(cache)
        self._pending = self._new_pending()
        self._deferred: list[LookupQuery] = []

    def _new_pending(self) -> FingerprintLibrary:
        return FingerprintLibrary(
            self.library.fingerprinter,
            MemoryBackend(),
            max_entries=self.cache.max_entries,
            max_bytes=int(self.cache.max_memory_mb * 1024 * 1024),
            ttl_s=self.cache.ttl_s,
            near=self.cache.near,
        )

    def open(self) -> int:
        """Load what the backend holds; returns how many entries were taken."""
        return self.library.sync()

    def begin_pass(self) -> None:
        """Forget pending keys and deferred items, and take what others stored meanwhile."""
        self._pending = self._new_pending()
        self._deferred = []
        self.library.sync()

    def lookup(self, queries: list[LookupQuery]) -> list[Looked]:
        """One answer per query, in order (see the module docstring)."""
        answers: list[Looked] = []
        for query in queries:
            key = store_key(query.fingerprint, query.scope)
            hit = self.library.lookup(key, SCAN_LEVEL)
            if hit is not None:
                answers.append(hit)
            elif self._pending.lookup(key, SCAN_LEVEL) is not None:
                self._deferred.append(query)
                answers.append("defer")
            else:
                self._pending.store(key, {}, SCAN_LEVEL)
                answers.append("miss")
        return answers

    def store(self, items: list[StoreItem]) -> int:
        """Store fresh analyses at level 0; returns how many were stored.

        Stored with source ``service``, as the Structurer stores them: they are the
        service's own answers (the backends know the sources ``service`` and ``import``).
        """
        stored = 0
        for item in items:
            key = store_key(item.fingerprint, item.scope)
            stored += self.library.store(key, item.analysis, SCAN_LEVEL)
        return stored

    def take_deferred(self) -> list[LookupQuery]:
        """The items deferred in this pass (and forget them)."""
        deferred, self._deferred = self._deferred, []
        return deferred

    def stats(self) -> dict[str, Any]:
        """The library's figures (lookups, hits, stores …)."""
        return self.library.stats().as_dict()

    def close(self) -> None:
        """Close the backend."""
        self.library.backend.close()
