"""HammingIndex: exactly the brute-force answer, for random and clustered codes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from serve_app.media.hamming_index import HammingIndex, block_count


def _brute(items: dict[int, int], code: int, radius: int) -> list[tuple[int, int]]:
    found = [(i, bin(c ^ code).count("1")) for i, c in items.items()]
    return sorted(((i, d) for i, d in found if d <= radius), key=lambda x: (x[1], x[0]))


def _flip(code: int, count: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), count):
        code ^= 1 << bit
    return code


@pytest.mark.parametrize("max_radius", [0, 4, 12, 20])
def test_random_codes_match_brute_force(max_radius: int) -> None:
    rng = random.Random(max_radius)
    index = HammingIndex(max_radius=max_radius)
    items = {i: rng.getrandbits(64) for i in range(3000)}
    for i, c in items.items():
        index.add(i, c)
    codes = list(items.values())
    for q in range(60):
        base = codes[q * 37 % len(codes)]
        query = _flip(base, rng.randrange(0, max_radius + 2), rng) if q % 3 else rng.getrandbits(64)
        for radius in {0, max_radius // 2, max_radius, max_radius + 3}:
            assert index.search(query, radius) == _brute(items, query, radius)


def test_adversarial_clustered_codes_match_brute_force() -> None:
    """Codes that share blocks (so buckets overflow) and sit around the radius boundary."""
    rng = random.Random(7)
    index = HammingIndex(max_radius=12)
    centres = [rng.getrandbits(64) for _ in range(5)]
    items: dict[int, int] = {}
    for i in range(4000):
        centre = centres[i % 5]
        if i % 4 == 0:
            code = centre & ~0xFFFF | rng.getrandbits(16)  # only one block varies
        else:
            code = _flip(centre, rng.randrange(0, 17), rng)
        items[i] = code
    items[99_999] = centres[0]
    index.add_many(list(items), list(items.values()))
    for q in range(80):
        query = _flip(centres[q % 5], rng.randrange(0, 14), rng)
        for radius in (0, 1, 6, 11, 12):
            assert index.search(query, radius) == _brute(items, query, radius)


def test_add_after_build_and_remove() -> None:
    rng = random.Random(3)
    index = HammingIndex(max_radius=10)
    items = {i: rng.getrandbits(64) for i in range(500)}
    index.add_many(list(items), list(items.values()))
    for i in range(500, 800):  # these land in the unindexed tail
        items[i] = _flip(items[i - 500], rng.randrange(0, 8), rng)
        index.add(i, items[i])
    for i in range(0, 800, 3):
        index.remove(i)
        del items[i]
    index.remove(123_456)  # unknown: no error
    assert len(index) == len(items)
    assert 1 not in items or 1 in index
    assert 0 not in index
    for q in range(0, 800, 17):
        query = _flip(items.get(q, rng.getrandbits(64)), 3, rng)
        for radius in (0, 5, 10, 14):
            assert index.search(query, radius) == _brute(items, query, radius)


def test_radius_zero_and_replacement() -> None:
    index = HammingIndex(max_radius=8)
    index.add(1, 0xDEADBEEF)
    index.add(2, 0xDEADBEEF)
    index.add(3, 0xDEADBEEE)
    assert index.search(0xDEADBEEF, 0) == [(1, 0), (2, 0)]
    assert index.search(0xDEADBEEF, 1) == [(1, 0), (2, 0), (3, 1)]
    index.add(1, 0)  # re-adding an id replaces its code
    assert index.search(0xDEADBEEF, 0) == [(2, 0)]
    assert index.search(0, 0) == [(1, 0)]
    assert len(index) == 3
    assert index.search(0, -1) == []


def test_many_removals_compact_and_stay_exact() -> None:
    rng = random.Random(11)
    index = HammingIndex(max_radius=6)
    items = {i: rng.getrandbits(64) for i in range(12_000)}
    index.add_many(list(items), list(items.values()))
    before = index.approx_bytes()
    for i in range(10_000):
        index.remove(i)
        del items[i]
    assert len(index) == 2000
    assert index.approx_bytes() < before
    for code in list(items.values())[:30]:
        assert index.search(code, 6) == _brute(items, code, 6)
    assert HammingIndex().search(5, 3) == []


def test_codes_are_validated_and_extremes_work() -> None:
    index = HammingIndex(max_radius=4)
    with pytest.raises(ValueError):
        index.add(1, 2**64)
    with pytest.raises(ValueError):
        index.add(1, -1)
    with pytest.raises(ValueError):
        HammingIndex(max_radius=65)
    index.add(1, 2**64 - 1)
    index.add(2, 0)
    assert index.search(2**64 - 1, 0) == [(1, 0)]
    assert index.search(0, 64) == [(2, 0), (1, 64)]


def test_block_count_grows_with_radius() -> None:
    assert block_count(0) == 4
    assert block_count(12) == 4
    assert block_count(15) == 4
    assert block_count(16) == 5
    assert HammingIndex(max_radius=12).blocks == 4


def test_approx_bytes_scales_with_entries() -> None:
    small, large = HammingIndex(), HammingIndex()
    small.add_many(np.arange(1000), np.arange(1000, dtype=np.uint64))
    large.add_many(np.arange(100_000), np.arange(100_000, dtype=np.uint64))
    assert 0 < small.approx_bytes() < large.approx_bytes()
    assert large.approx_bytes() > 100_000 * 8 * 4


def test_large_radius_plan_and_tail_stay_exact() -> None:
    """Radii past max_radius scan; probes of every radius share the cached plans."""
    rng = random.Random(5)
    index = HammingIndex(max_radius=16)  # five blocks of unequal width
    assert index.blocks == 5
    items = {i: rng.getrandbits(64) for i in range(6000)}
    index.add_many(list(items), list(items.values()))
    for i in range(6000, 6300):  # unindexed tail
        items[i] = _flip(items[i - 6000], rng.randrange(0, 10), rng)
        index.add(i, items[i])
    for q in range(40):
        query = _flip(items[q * 150], rng.randrange(0, 18), rng)
        for radius in (0, 3, 9, 16, 20):
            assert index.search(query, radius) == _brute(items, query, radius)


@pytest.mark.parametrize("radius", [0, 5, 12, 20])
def test_search_any_is_the_nearest_of_searching_each_code(radius: int) -> None:
    """Several query codes at once: every item near any of them, at its smallest distance."""
    rng = random.Random(radius)
    centres = [rng.getrandbits(64) for _ in range(40)]

    def near(code: int) -> int:
        for _ in range(rng.randrange(0, 14)):
            code ^= 1 << rng.randrange(64)
        return code

    index = HammingIndex(max_radius=12)
    index.add_many(
        range(3000), np.array([near(rng.choice(centres)) for _ in range(3000)], np.uint64)
    )
    for item in range(3000, 3050):  # a tail added after the last rebuild
        index.add(item, near(rng.choice(centres)))
    index.remove(7)
    for _ in range(25):
        codes = [near(rng.choice(centres)) for _ in range(3)]
        merged: dict[int, int] = {}
        for code in codes:
            for item, distance in index.search(code, radius):
                merged[item] = min(distance, merged.get(item, 65))
        expected = sorted(merged.items(), key=lambda pair: (pair[1], pair[0]))
        assert index.search_any(codes, radius) == expected
    assert index.search_any([], radius) == []
