"""FingerprintStore: the fingerprint library shared by every Preprocessor and Structurer.

One replica owns the in-memory index, so a repeat is a hit whichever replica sees it;
the backend (SQLite by default, Redis across nodes) keeps the library across restarts
and is polled for what other processes added (:mod:`serve_app.library.store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ray import serve

from serve_app.config.models import CacheArgs
from serve_app.library.backends import LibraryUnavailable
from serve_app.library.store import FingerprintLibrary, LibraryHit, StoreKey, library_from
from serve_app.observability.logs import configure_logging
from serve_app.observability.metrics import count_cache_lookup
from serve_app.observability.tracing import annotate, stage

logger = logging.getLogger(__name__)


def _observed(kind: str, hit: LibraryHit | None) -> LibraryHit | None:
    """Count one lookup by kind and result, and note the result on its span."""
    result = hit.match if hit is not None else "miss"
    annotate(
        {"memeserve.cache.match": result, "memeserve.cache.distance": hit.distance if hit else None}
    )
    count_cache_lookup(kind, result)
    return hit


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.05},
)
class FingerprintStore:
    """Serve wrapper around :class:`serve_app.library.store.FingerprintLibrary`."""

    async def __init__(self, cache_args: dict[str, Any]) -> None:  # type: ignore[misc]
        configure_logging()
        self._args = CacheArgs.model_validate(cache_args)
        self._library: FingerprintLibrary | None = None
        self._sync_task: asyncio.Task[None] | None = None
        if not self._args.enabled:
            return
        self._library = library_from(self._args)
        try:
            loaded = await asyncio.to_thread(self._library.sync)
            logger.info("fingerprint library loaded %d entries (%s)", loaded, self._args.backend)
        except LibraryUnavailable as exc:
            logger.error("fingerprint library backend unavailable at start: %s", exc)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        assert self._library is not None
        rounds = 0
        while True:
            await asyncio.sleep(self._args.sync_period_s)
            rounds += 1
            try:
                taken = await asyncio.to_thread(self._library.sync)
                if taken:
                    logger.info("fingerprint library took %d new entries from the backend", taken)
                if rounds % 720 == 0:  # hourly at the default period
                    await asyncio.to_thread(self._library.purge_expired)
            except LibraryUnavailable as exc:
                logger.warning("fingerprint library sync failed: %s", exc)
            except Exception:
                logger.exception("fingerprint library sync failed")

    def lookup_upload(self, upload: str, max_level: int) -> LibraryHit | None:
        """The stored analysis for bytes already seen in this scope (no decoding), or None."""
        if self._library is None:
            return None
        with stage("cache_lookup", {"memeserve.cache.kind": "upload"}):
            return _observed("upload", self._library.lookup_upload(upload, max_level))

    def lookup(self, key: StoreKey, max_level: int) -> LibraryHit | None:
        """The stored analysis for ``key`` produced at ``max_level`` or better, or ``None``."""
        if self._library is None:
            return None
        with stage("cache_lookup", {"memeserve.cache.kind": "fingerprint"}):
            return _observed("fingerprint", self._library.lookup(key, max_level))

    def store(self, key: StoreKey, analysis: dict[str, Any], level: int) -> bool:
        """Store a fresh analysis; returns whether it was stored."""
        if self._library is None:
            return False
        return self._library.store(key, analysis, level)

    def stats(self) -> dict[str, Any]:
        """Entries, hits (exact/near), misses and hit ratio for /v1/status."""
        if self._library is None:
            return {"enabled": False}
        figures = self._library.stats().as_dict()
        try:
            backend = self._library.backend.stats()
        except LibraryUnavailable as exc:
            backend = {"kind": self._args.backend, "error": str(exc)[:200]}
        return {"enabled": True, "near": self._args.near, **figures, "backend": backend}

    async def __del__(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._library is not None:
            self._library.backend.close()
