"""The exact-repeat result store: keys, LRU, TTL and level replacement."""

from __future__ import annotations

from serve_app.context_text import normalise_context, truncate_context
from serve_app.result_cache import ResultCache, cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_key_separates_context_model_and_prompt() -> None:
    base = cache_key("px", "你说得对", "m@1", "v1")
    assert base == cache_key("px", "你说得对", "m@1", "v1")
    assert (
        len(
            {
                base,
                cache_key("px", "另一句", "m@1", "v1"),
                cache_key("px", "你说得对", "m@2", "v1"),
                cache_key("px", "你说得对", "m@1", "v2"),
                cache_key("py", "你说得对", "m@1", "v1"),
            }
        )
        == 5
    )


def test_context_normalisation_folds_width_and_space() -> None:
    assert normalise_context("  你说得对，\n\n但是  ＡＢＣ ") == normalise_context(
        "你说得对, 但是 ABC"
    )
    assert normalise_context(None) == "" and normalise_context("\x00\x07") == ""
    assert truncate_context("一二三四", 2) == "一二"


def test_lru_evicts_the_least_recently_used() -> None:
    cache = ResultCache(max_entries=2, ttl_s=100)
    cache.put("a", {"n": 1}, 0)
    cache.put("b", {"n": 2}, 0)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", {"n": 3}, 0)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.stats().evictions == 1


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = ResultCache(max_entries=10, ttl_s=5, clock=clock)
    cache.put("a", {"n": 1}, 0)
    clock.now = 4.9
    assert cache.get("a") is not None
    clock.now = 5.1
    assert cache.get("a") is None
    assert cache.stats().entries == 0


def test_degraded_results_are_replaced_by_better_ones_never_the_reverse() -> None:
    cache = ResultCache(max_entries=10, ttl_s=100)
    assert cache.put("a", {"from": 2}, 2)
    assert cache.put("a", {"from": 0}, 0)
    assert not cache.put("a", {"from": 1}, 1)
    assert cache.get("a") == ({"from": 0}, 0)


def test_stats_count_hits_and_misses() -> None:
    cache = ResultCache(max_entries=10, ttl_s=100)
    cache.get("x")
    cache.put("x", {}, 0)
    cache.get("x")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stores, stats.hit_ratio) == (1, 1, 1, 0.5)
