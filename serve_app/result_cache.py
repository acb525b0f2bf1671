"""Exact-repeat result store: LRU + TTL over analyses keyed by content.

The key joins the decoded-pixel hash, the normalised context text and the model and
prompt versions (:func:`cache_key`), so a new model or prompt never serves an old
answer. A result produced at a degraded level is kept with its level and replaced by
a result from a better level; it never replaces a better one.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def cache_key(pixel_key: str, context: str, model: str, prompt_version: str) -> str:
    """The store key for one (image, context, model, prompt) combination."""
    context_digest = hashlib.blake2b(context.encode("utf-8"), digest_size=12).hexdigest()
    return f"{pixel_key}:{context_digest}:{model}:{prompt_version}"


@dataclass
class _Entry:
    analysis: dict[str, Any]
    level: int
    stored_at: float


@dataclass(frozen=True)
class CacheStats:
    """Figures for /v1/status."""

    entries: int
    max_entries: int
    hits: int
    misses: int
    stores: int
    evictions: int

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class ResultCache:
    """In-memory LRU with a time-to-live; not thread-safe (one actor owns it)."""

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._hits = self._misses = self._stores = self._evictions = 0

    def get(self, key: str) -> tuple[dict[str, Any], int] | None:
        """The stored analysis and the level it was produced at, or ``None``."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.stored_at > self.ttl_s:
            del self._entries[key]
            entry = None
        if entry is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.analysis, entry.level

    def put(self, key: str, analysis: dict[str, Any], level: int) -> bool:
        """Store unless a fresher result from a better (lower) level is already there."""
        current = self._entries.get(key)
        now = self._clock()
        if current is not None and now - current.stored_at <= self.ttl_s and current.level < level:
            return False
        self._entries[key] = _Entry(analysis=analysis, level=level, stored_at=now)
        self._entries.move_to_end(key)
        self._stores += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1
        return True

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            max_entries=self.max_entries,
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            evictions=self._evictions,
        )
