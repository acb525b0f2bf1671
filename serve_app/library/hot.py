"""Hot answers: each Ingress replica's small copy of the store's answers for resent bytes.

A meme that goes viral arrives as the same bytes many times a second. The fingerprint
library answers such a repeat from its upload key without decoding, but the answer is
one hop away (the FingerprintStore replica). :class:`HotAnswers` keeps the last
``max_entries`` of those answers in the Ingress replica itself, so a byte-identical
repeat is answered with no hop at all.

What it may serve is bounded three ways:

* **Epoch.** The store names its state by an epoch (its instance and the last scenes
  event applied: lists, reviews). An answer is kept only when it was looked up at the
  epoch this replica last heard; hearing a new one (:meth:`HotAnswers.heard`, every
  ``sync_s``) empties the copy. A review or list change made through *this* replica
  empties it at once (:meth:`HotAnswers.clear`); through another, within ``sync_s``.
* **Freshness.** Nothing is served once the epoch has not been heard for
  ``stale_after_s`` (the store unreachable: this copy cannot vouch for itself).
* **Age.** An answer is dropped ``ttl_s`` after it was looked up, so an entry the
  library evicted or an operator removed stops being served within that time.

Pure: no asyncio, no I/O; the clock is injected. Not thread-safe (one event loop).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class _Kept(Generic[V]):
    value: V
    level: int
    at: float


class HotAnswers(Generic[V]):
    """The store's recent answers for upload keys, valid at one epoch (LRU, TTL)."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._items: OrderedDict[str, _Kept[V]] = OrderedDict()
        self._epoch: str | None = None
        self._heard_at: float | None = None
        self.hits = 0
        self.cleared = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def epoch(self) -> str | None:
        """The store's epoch last heard (None before the first)."""
        return self._epoch

    def get(self, upload: str, max_level: int) -> V | None:
        """The kept answer for ``upload`` made at ``max_level`` or better, if still valid."""
        if not self._items:
            return None
        now = self._clock()
        if self._heard_at is None or now - self._heard_at > self.stale_after_s:
            return None
        kept = self._items.get(upload)
        if kept is None:
            return None
        if now - kept.at > self.ttl_s:
            del self._items[upload]
            return None
        if kept.level > max_level:
            return None
        self._items.move_to_end(upload)
        self.hits += 1
        return kept.value

    def put(self, upload: str, value: V, level: int, epoch: str | None) -> bool:
        """Keep the store's answer for ``upload``, looked up at ``epoch``; False (not
        kept) when that is not the epoch last heard or the copy is off."""
        if self.max_entries <= 0 or epoch is None or epoch != self._epoch:
            return False
        self._items[upload] = _Kept(value, level, self._clock())
        self._items.move_to_end(upload)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return True

    def heard(self, epoch: str) -> None:
        """The store's epoch, as just asked; a new one empties the copy."""
        if epoch != self._epoch:
            self._epoch = epoch
            self.clear()
        self._heard_at = self._clock()

    def lost(self) -> None:
        """The store did not answer: serve nothing until an epoch is heard again."""
        self._heard_at = None
        self.clear()

    def clear(self) -> None:
        """Forget every kept answer (a write went through this replica, or a new epoch)."""
        if self._items:
            self.cleared += 1
        self._items.clear()

    def figures(self) -> dict[str, int | str | None]:
        """For ``/v1/status``: entries, hits, times emptied, the epoch."""
        return {
            "entries": len(self._items),
            "max_entries": self.max_entries,
            "hits": self.hits,
            "cleared": self.cleared,
            "epoch": self._epoch,
        }
