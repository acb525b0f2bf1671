"""FingerprintStore: the result store shared by every Preprocessor and Structurer replica.

One replica owns the in-memory index so that a repeat is a hit whichever replica
sees it. This version answers exact repeats (decoded-pixel hash + context + model);
near-duplicate lookup extends the same deployment.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from serve_app.config import CacheArgs
from serve_app.request_context import configure_logging
from serve_app.result_cache import ResultCache

logger = logging.getLogger(__name__)


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.05},
)
class FingerprintStore:
    """Serve wrapper around :class:`serve_app.result_cache.ResultCache`."""

    def __init__(self, cache_args: dict[str, Any]) -> None:
        configure_logging()
        args = CacheArgs.model_validate(cache_args)
        self._enabled = args.enabled
        self._cache = ResultCache(max_entries=args.max_entries, ttl_s=args.ttl_s)

    def get(self, key: str) -> tuple[dict[str, Any], int] | None:
        """The stored analysis and its degradation level, or ``None``."""
        if not self._enabled:
            return None
        return self._cache.get(key)

    def put(self, key: str, analysis: dict[str, Any], level: int) -> bool:
        """Store a fresh analysis; returns whether it was stored."""
        if not self._enabled:
            return False
        return self._cache.put(key, analysis, level)

    def stats(self) -> dict[str, Any]:
        """Entries, hits, misses and hit ratio for /v1/status."""
        stats = self._cache.stats()
        return {
            "enabled": self._enabled,
            "entries": stats.entries,
            "max_entries": stats.max_entries,
            "hits": stats.hits,
            "misses": stats.misses,
            "stores": stats.stores,
            "evictions": stats.evictions,
            "hit_ratio": round(stats.hit_ratio, 4),
            "exact_hits": stats.hits,
            "near_hits": 0,
        }
