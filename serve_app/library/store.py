"""The fingerprint library: analysed memes answered again, exactly or as near duplicates.

Framework-free; the FingerprintStore deployment wraps one instance. Entries are keyed
by (image, scope), the scope being the normalised request context, the model and the
prompt version (:func:`scope_of`), so another context or model is always a miss.

Lookup is two-staged: an exact hit on the decoded-pixel hash, else the
:class:`~serve_app.media.fingerprint.FingerprintIndex` yields candidates within the coarse
radius (by the window codes that tolerate crops; by the whole-picture code for version 1
fingerprints) and :meth:`~serve_app.media.fingerprint.Fingerprinter.near_distance`
confirms one (DESIGN.md §4: a template with another caption must not match).

Memory is bounded (entries and bytes, LRU) and entries expire (TTL, wall clock). The
backend (:mod:`serve_app.library.backends`) persists every stored analysis; on start
the library loads it, and :meth:`FingerprintLibrary.sync` picks up what other
processes wrote since (other nodes on Redis, ``memeserve library import``).

A result produced at a degraded level is served only while the graph is at that
level or worse; at a better level it counts as a miss, and the fresh result from
the engine replaces it. A degraded result never replaces a better one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.config.models import CacheArgs
from serve_app.library.backends import (
    LibraryBackend,
    LibraryRecord,
    LibraryUnavailable,
    open_backend,
)
from serve_app.media.fingerprint import Fingerprint, Fingerprinter, FingerprintIndex

logger = logging.getLogger(__name__)

# Python object overhead per entry beyond its payload bytes (dicts, dataclass, strings).
_ENTRY_OVERHEAD_BYTES = 600


def scope_of(context: str, model: str, prompt_version: str) -> str:
    """What besides the image a stored answer depends on: context, model, prompt."""
    digest = hashlib.blake2b(context.encode("utf-8"), digest_size=12).hexdigest()
    return f"{digest}:{model}:{prompt_version}"


def upload_key(data: bytes, scope: str) -> str:
    """The key of the upload's bytes in ``scope``: the ingress's shortcut for resent files."""
    return f"{hashlib.blake2b(data, digest_size=16).hexdigest()}:{scope}"


@dataclass(frozen=True)
class StoreKey:
    """Where one request's answer lives: its image fingerprint and its scope."""

    fingerprint: Fingerprint
    scope: str
    upload: str | None = None
    """:func:`upload_key` of the bytes this key was computed from, if known."""

    @property
    def entry_id(self) -> str:
        """The exact key: decoded-pixel hash plus scope."""
        return f"{self.fingerprint.exact}:{self.scope}"


@dataclass(frozen=True)
class LibraryHit:
    """A stored analysis answering a request."""

    analysis: dict[str, Any]
    level: int
    match: Literal["exact", "near"]
    distance: int
    fingerprint: Fingerprint | None = None
    """The stored entry's fingerprint (set by :meth:`FingerprintLibrary.lookup_upload`,
    whose caller has none of its own)."""


@dataclass
class _Entry:
    item: int
    entry_id: str
    scope: str
    fingerprint: Fingerprint
    analysis: dict[str, Any]
    level: int
    stored_at: float
    size: int
    uploads: list[str]
    """Upload keys that lead to this entry (the in-memory shortcut for resent bytes)."""


# Upload keys remembered per entry; the first few variants of a meme are the common ones.
_UPLOADS_PER_ENTRY = 8
_UPLOAD_KEY_BYTES = 200


@dataclass(frozen=True)
class LibraryStats:
    """Figures for /v1/status and ``memeserve library stats``."""

    entries: int
    max_entries: int
    bytes: int
    max_bytes: int
    lookups: int
    upload_hits: int
    exact_hits: int
    near_hits: int
    misses: int
    degraded_skips: int
    stores: int
    evictions: int
    expired: int
    backend_errors: int

    @property
    def hits(self) -> int:
        return self.exact_hits + self.near_hits

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain figures, with the derived hits and hit ratio."""
        return {
            "entries": self.entries,
            "max_entries": self.max_entries,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "lookups": self.lookups,
            "hits": self.hits,
            "upload_hits": self.upload_hits,
            "exact_hits": self.exact_hits,
            "near_hits": self.near_hits,
            "misses": self.misses,
            "hit_ratio": round(self.hit_ratio, 4),
            "degraded_skips": self.degraded_skips,
            "stores": self.stores,
            "evictions": self.evictions,
            "expired": self.expired,
            "backend_errors": self.backend_errors,
        }


class FingerprintLibrary:
    """Exact + near-duplicate result store over a persistent backend; thread-safe."""

    def __init__(
        self,
        fingerprinter: Fingerprinter,
        backend: LibraryBackend,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        near: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fingerprinter = fingerprinter
        self.backend = backend
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.near = near
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_item: dict[int, str] = {}
        self._uploads: dict[str, tuple[str, Literal["exact", "near"], int]] = {}
        self._index = FingerprintIndex(fingerprinter.params.coarse_radius)
        self._next_item = 0
        self._bytes = 0
        self._cursor = 0
        self._lookups = self._upload_hits = self._exact_hits = self._near_hits = 0
        self._misses = 0
        self._degraded_skips = self._stores = self._evictions = self._expired = 0
        self._backend_errors = 0

    # -- lookup ---------------------------------------------------------------------------

    def lookup_upload(self, upload: str, max_level: int = 0) -> LibraryHit | None:
        """The answer for bytes already seen in this scope, without decoding them; or None.

        A miss here is not counted: the full :meth:`lookup` follows it.
        """
        now = self._clock()
        with self._lock:
            known = self._uploads.get(upload)
            if known is None:
                return None
            entry_id, match, distance = known
            entry = self._live(entry_id, now)
            if entry is None or entry.level > max_level:
                return None
            self._entries.move_to_end(entry_id)
            self._lookups += 1
            self._upload_hits += 1
            if match == "exact":
                self._exact_hits += 1
            else:
                self._near_hits += 1
            return LibraryHit(entry.analysis, entry.level, match, distance, entry.fingerprint)

    def count_resent(self, answered: Mapping[str, int]) -> None:
        """Count hits on resent bytes that an Ingress answered from its hot copy
        (:mod:`serve_app.library.hot`), by match (``exact``/``near``), as upload hits."""
        with self._lock:
            for match, count in answered.items():
                self._lookups += count
                self._upload_hits += count
                if match == "exact":
                    self._exact_hits += count
                else:
                    self._near_hits += count

    def lookup(self, key: StoreKey, max_level: int = 0) -> LibraryHit | None:
        """The best stored answer for ``key`` produced at ``max_level`` or better, or None."""
        now = self._clock()
        with self._lock:
            self._lookups += 1
            degraded = False
            entry = self._live(key.entry_id, now)
            if entry is not None:
                if entry.level <= max_level:
                    self._exact_hits += 1
                    return self._hit(entry, key, "exact", 0)
                degraded = True
            if self.near:
                best = self._nearest(key, max_level, now)
                if best is not None:
                    self._near_hits += 1
                    return self._hit(best[0], key, "near", best[1])
            self._misses += 1
            if degraded:
                self._degraded_skips += 1
            return None

    def _hit(
        self, entry: _Entry, key: StoreKey, match: Literal["exact", "near"], distance: int
    ) -> LibraryHit:
        self._entries.move_to_end(entry.entry_id)
        if key.upload is not None:
            self._remember_upload(entry, key.upload, match, distance)
        return LibraryHit(entry.analysis, entry.level, match, distance)

    def _remember_upload(
        self, entry: _Entry, upload: str, match: Literal["exact", "near"], distance: int
    ) -> None:
        if (
            upload in self._uploads
            or len(entry.uploads) >= _UPLOADS_PER_ENTRY
            or entry.entry_id not in self._entries
        ):
            return
        self._uploads[upload] = (entry.entry_id, match, distance)
        entry.uploads.append(upload)
        entry.size += _UPLOAD_KEY_BYTES
        self._bytes += _UPLOAD_KEY_BYTES

    def _nearest(self, key: StoreKey, max_level: int, now: float) -> tuple[_Entry, int] | None:
        best: tuple[_Entry, int] | None = None
        for item, _ in self._index.search(key.fingerprint):
            entry = self._live(self._by_item[item], now)
            if entry is None or entry.scope != key.scope or entry.level > max_level:
                continue
            distance = self.fingerprinter.near_distance(key.fingerprint, entry.fingerprint)
            if distance is not None and (best is None or distance < best[1]):
                best = (entry, distance)
        return best

    def _live(self, entry_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(entry_id)
        if entry is not None and now - entry.stored_at > self.ttl_s:
            self._drop(entry)
            self._expired += 1
            return None
        return entry

    # -- store ----------------------------------------------------------------------------

    def store(
        self, key: StoreKey, analysis: dict[str, Any], level: int, source: str = "service"
    ) -> bool:
        """Keep ``analysis`` unless a live answer from a better level is already there."""
        now = self._clock()
        with self._lock:
            current = self._live(key.entry_id, now)
            if current is not None and current.level < level:
                return False
            record = LibraryRecord(
                entry_id=key.entry_id,
                exact_key=key.fingerprint.exact,
                scope=key.scope,
                fingerprint=key.fingerprint.to_bytes(),
                analysis=analysis,
                level=level,
                stored_at=now,
                source=source,
            )
            entry = self._insert(record, key.fingerprint)
            if key.upload is not None:
                self._remember_upload(entry, key.upload, "exact", 0)
            self._stores += 1
        try:
            self.backend.put(record)
        except LibraryUnavailable as exc:
            with self._lock:
                self._backend_errors += 1
            logger.warning("library backend unavailable; kept in memory only: %s", exc)
        return True

    def _insert(self, record: LibraryRecord, fingerprint: Fingerprint) -> _Entry:
        existing = self._entries.get(record.entry_id)
        if existing is not None:
            self._drop(existing)
        size = (
            len(record.fingerprint)
            + len(json.dumps(record.analysis, ensure_ascii=False).encode("utf-8"))
            + len(record.entry_id)
            + _ENTRY_OVERHEAD_BYTES
        )
        item = self._next_item
        self._next_item += 1
        entry = _Entry(
            item=item,
            entry_id=record.entry_id,
            scope=record.scope,
            fingerprint=fingerprint,
            analysis=record.analysis,
            level=record.level,
            stored_at=record.stored_at,
            size=size,
            uploads=[],
        )
        self._entries[record.entry_id] = entry
        self._by_item[item] = record.entry_id
        self._index.add(item, fingerprint)
        self._bytes += size
        self._evict()
        return entry

    def _drop(self, entry: _Entry) -> None:
        for upload in entry.uploads:
            self._uploads.pop(upload, None)
        del self._entries[entry.entry_id]
        del self._by_item[entry.item]
        self._index.remove(entry.item)
        self._bytes -= entry.size

    def _evict(self) -> None:
        while self._entries and (
            len(self._entries) > self.max_entries
            or self._bytes + self._index.approx_bytes() > self.max_bytes
        ):
            _, oldest = next(iter(self._entries.items()))
            self._drop(oldest)
            self._evictions += 1

    # -- persistence ----------------------------------------------------------------------

    def sync(self, batch: int = 1000) -> int:
        """Load records the backend gained since the last sync (all of them the first time).

        Returns how many were taken into memory. Raises ``LibraryUnavailable`` when the
        backend cannot be read.
        """
        taken = 0
        while True:
            records, cursor = self.backend.load_since(self._cursor, batch)
            now = self._clock()
            with self._lock:
                for record in records:
                    if now - record.stored_at > self.ttl_s:
                        continue
                    current = self._entries.get(record.entry_id)
                    if current is not None and (
                        current.stored_at >= record.stored_at or current.level < record.level
                    ):
                        continue  # our own write coming back, or not an improvement
                    try:
                        fingerprint = Fingerprint.from_bytes(record.fingerprint)
                    except ValueError as exc:
                        logger.warning("skipping library record %s: %s", record.entry_id, exc)
                        continue
                    self._insert(record, fingerprint)
                    taken += 1
                self._cursor = cursor
            if len(records) < batch:
                return taken

    def purge_expired(self) -> int:
        """Drop expired entries from memory and the backend; returns how many the backend had."""
        now = self._clock()
        with self._lock:
            for entry in [e for e in self._entries.values() if now - e.stored_at > self.ttl_s]:
                self._drop(entry)
                self._expired += 1
        return self.backend.purge_older_than(now - self.ttl_s)

    def stats(self) -> LibraryStats:
        """Current figures."""
        with self._lock:
            return LibraryStats(
                entries=len(self._entries),
                max_entries=self.max_entries,
                bytes=self._bytes + self._index.approx_bytes(),
                max_bytes=self.max_bytes,
                lookups=self._lookups,
                upload_hits=self._upload_hits,
                exact_hits=self._exact_hits,
                near_hits=self._near_hits,
                misses=self._misses,
                degraded_skips=self._degraded_skips,
                stores=self._stores,
                evictions=self._evictions,
                expired=self._expired,
                backend_errors=self._backend_errors,
            )


def library_from(cache: CacheArgs) -> FingerprintLibrary:
    """A library over the backend ``cache`` names, with its bounds (not loaded: ``sync``)."""
    backend = open_backend(
        cache.backend,
        sqlite_path=cache.sqlite_path,
        redis_url=cache.redis_url,
        redis_prefix=cache.redis_prefix,
        ttl_s=cache.ttl_s,
    )
    return FingerprintLibrary(
        Fingerprinter(),
        backend,
        max_entries=cache.max_entries,
        max_bytes=int(cache.max_memory_mb * 1024 * 1024),
        ttl_s=cache.ttl_s,
        near=cache.near,
    )
