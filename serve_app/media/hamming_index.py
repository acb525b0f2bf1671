"""Radius search over 64-bit codes by multi-index hashing (numpy, no extensions).

The 64 bits are split into ``m`` disjoint blocks of at most 16 bits. For a query radius
``r`` the ``r + 1`` "units" are dealt round-robin to the blocks; a block holding
``u_i ≥ 1`` units is probed with every value within Hamming distance ``u_i - 1`` of the
query's block. **Guarantee (exactness):** a stored code at distance ``d ≤ r`` differs by
``d_i`` bits in block ``i`` with ``Σ d_i = d``; were it missed, then ``d_i ≥ u_i`` for every
block, so ``d ≥ Σ u_i = r + 1`` — a contradiction. Every candidate is then checked with its
full 64-bit distance, so :meth:`HammingIndex.search` returns exactly the brute-force
answer for every radius. Up to ``max_radius`` it probes as above; beyond that it scans all
codes (still exact, just linear).

Layout: codes live in a slot array; per block, a CSR table (slots sorted by block value
plus a dense offsets array of ``2**bits + 1`` entries, all blocks concatenated into one
table) covers the slots added before the last rebuild, and newer slots (at most
``max(4096, n / 32)``) are scanned directly. The codes are also kept in each block's
bucket order, so verifying the candidates reads contiguous runs instead of one random
slot per candidate (the main cost at 10**6 codes), for 8 bytes a code per block. A query
is a fixed number of numpy calls: all blocks' probes are one cached array per radius.
Removal marks a slot dead; the tables are rebuilt (and dead slots dropped) when the tail
or the dead fraction grows too large, so ``add`` is amortised O(1).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from itertools import combinations
from typing import Final

import numpy as np
import numpy.typing as npt

_MASK64: Final[int] = (1 << 64) - 1
_MAX_BLOCK_BITS: Final[int] = 16


def block_count(max_radius: int, bits: int = 64) -> int:
    """Number of blocks for ``max_radius``: blocks of ≤ 16 bits, probed to radius ≤ 3.

    Four 16-bit blocks serve radius ≤ 15: at radius 12 that is 697 + 3 x 137 bucket probes
    and, at 10**6 random codes (~15 a bucket), about 17 000 candidates to verify; fewer,
    wider blocks would need far more probes, more, narrower ones far fuller buckets.
    """
    return max(math.ceil(bits / _MAX_BLOCK_BITS), math.ceil((max_radius + 1) / 4))


class HammingIndex:
    """Exact Hamming-radius search over unsigned 64-bit codes keyed by integer item ids."""

    def __init__(self, max_radius: int = 12, capacity: int = 1024) -> None:
        """Index tuned for radii up to ``max_radius`` (larger radii fall back to a scan)."""
        if not 0 <= max_radius <= 64:
            raise ValueError("max_radius must be within 0..64")
        self.max_radius = max_radius
        self.blocks = block_count(max_radius)
        base, extra = divmod(64, self.blocks)
        widths = [base + (1 if i < extra else 0) for i in range(self.blocks)]
        self._shifts = [sum(widths[i + 1 :]) for i in range(self.blocks)]
        self._widths = widths
        self._masks = [(1 << w) - 1 for w in widths]
        self._codes = np.zeros(capacity, dtype=np.uint64)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._alive = np.zeros(capacity, dtype=bool)
        self._size = 0  # slots used (alive or dead)
        self._slot_of: dict[int, int] = {}
        self._built = 0  # slots covered by the CSR tables
        # All blocks' CSR tables, concatenated: block b's buckets start at _bases[b] in
        # _offsets, and its slots at b * _built in _order.
        self._bases = [0]
        for width in widths:
            self._bases.append(self._bases[-1] + (1 << width) + 1)
        self._base_array = np.array(self._bases[:-1], dtype=np.int64)
        self._order: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._sorted_codes: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self._offsets: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._probes: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
        # Per query radius: every probe's XOR mask (all blocks, concatenated) and how many
        # belong to each block.
        self._plans: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]] = {}
        self._rebuild()

    # ------------------------------------------------------------------ mutation
    def add(self, item_id: int, code: int) -> None:
        """Insert ``item_id`` with ``code`` (replacing any earlier code for that id)."""
        if not 0 <= code <= _MASK64:
            raise ValueError(f"code must be an unsigned 64-bit int, got {code}")
        if item_id in self._slot_of:
            self.remove(item_id)
        if self._size == len(self._codes):
            self._grow()
        slot = self._size
        self._codes[slot] = code
        self._ids[slot] = item_id
        self._alive[slot] = True
        self._slot_of[item_id] = slot
        self._size += 1
        if self._size - self._built > max(4096, self._built // 32):
            self._rebuild()

    def add_many(self, item_ids: npt.ArrayLike, codes: npt.ArrayLike) -> None:
        """Bulk :meth:`add` (one table rebuild); later duplicates of an id win."""
        ids = np.asarray(item_ids, dtype=np.int64).ravel()
        values = np.asarray(codes, dtype=np.uint64).ravel()
        if ids.shape != values.shape:
            raise ValueError("item_ids and codes differ in length")
        id_list = ids.tolist()
        for item_id in id_list:
            if item_id in self._slot_of:
                self.remove(item_id)
        while self._size + len(ids) > len(self._codes):
            self._grow()
        start = self._size
        end = start + len(ids)
        self._codes[start:end] = values
        self._ids[start:end] = ids
        self._alive[start:end] = True
        for offset, item_id in enumerate(id_list):
            previous = self._slot_of.get(item_id)
            if previous is not None:  # duplicate inside this batch
                self._alive[previous] = False
            self._slot_of[item_id] = start + offset
        self._size = end
        self._rebuild()

    def remove(self, item_id: int) -> None:
        """Forget ``item_id``; unknown ids are ignored."""
        slot = self._slot_of.pop(item_id, None)
        if slot is None:
            return
        self._alive[slot] = False
        if self._size - len(self._slot_of) > max(4096, self._size // 2):
            self._rebuild()

    # ------------------------------------------------------------------ queries
    def search(self, code: int, radius: int) -> list[tuple[int, int]]:
        """All ``(item_id, distance)`` with Hamming distance ≤ ``radius``, nearest first.

        Exact for every radius (see the module docstring); ties are ordered by item id.
        """
        if radius < 0 or not self._slot_of:
            return []
        code &= _MASK64
        if radius > self.max_radius or radius >= 64:
            slots = np.flatnonzero(self._alive[: self._size])
            distances = np.bitwise_count(self._codes[slots] ^ np.uint64(code))
        else:
            slots, distances = self._candidates(code, radius)
        keep = (distances <= radius) & self._alive[slots]
        slots, distances = slots[keep], distances[keep]
        if len(slots) > 1:  # a code can be found through several blocks
            slots, first = np.unique(slots, return_index=True)
            distances = distances[first]
        ids = self._ids[slots]
        order = np.lexsort((ids, distances))
        return list(zip(ids[order].tolist(), distances[order].astype(int).tolist(), strict=True))

    def search_any(self, codes: Sequence[int], radius: int) -> list[tuple[int, int]]:
        """``(item_id, distance)`` within ``radius`` of *any* of ``codes``, nearest first.

        The distance is the smallest to any of the codes; the same answer as merging
        :meth:`search` over each code, in one pass over the buckets (a multi-probe lookup
        pays the per-call overhead once).
        """
        if radius < 0 or not self._slot_of or not len(codes):
            return []
        queries = np.array([c & _MASK64 for c in codes], dtype=np.uint64)
        if radius > self.max_radius or radius >= 64:
            slots = np.flatnonzero(self._alive[: self._size])
            distances = np.bitwise_count(self._codes[slots][:, None] ^ queries[None, :]).min(1)
        else:
            slots, distances = self._candidates_many(queries, radius)
        keep = (distances <= radius) & self._alive[slots]
        slots, distances = slots[keep], distances[keep]
        if len(slots) > 1:  # found through several blocks or codes: keep the nearest
            order = np.lexsort((distances, slots))
            slots, distances = slots[order], distances[order]
            slots, first = np.unique(slots, return_index=True)
            distances = distances[first]
        ids = self._ids[slots]
        order = np.lexsort((ids, distances))
        return list(zip(ids[order].tolist(), distances[order].astype(int).tolist(), strict=True))

    def brute_force(self, code: int, radius: int) -> list[tuple[int, int]]:
        """Reference answer by a linear numpy scan (for tests and benchmarks)."""
        alive = np.flatnonzero(self._alive[: self._size])
        distances = np.bitwise_count(self._codes[alive] ^ np.uint64(code & _MASK64))
        keep = distances <= radius
        ids, distances = self._ids[alive][keep], distances[keep]
        order = np.lexsort((ids, distances))
        return list(zip(ids[order].tolist(), distances[order].astype(int).tolist(), strict=True))

    def __len__(self) -> int:
        """Number of items stored."""
        return len(self._slot_of)

    def __contains__(self, item_id: object) -> bool:
        """Whether ``item_id`` is stored."""
        return item_id in self._slot_of

    def approx_bytes(self) -> int:
        """Estimated memory held (arrays, CSR tables, the id dict and its int objects)."""
        arrays = self._codes.nbytes + self._ids.nbytes + self._alive.nbytes
        tables = self._order.nbytes + self._offsets.nbytes + self._sorted_codes.nbytes
        probes = sum(p.nbytes for p in self._probes.values())
        probes += sum(masks.nbytes + owner.nbytes for masks, owner in self._plans.values())
        # dict table + two int objects (key, value) per entry.
        mapping = sys.getsizeof(self._slot_of) + len(self._slot_of) * 2 * 32
        return arrays + tables + probes + mapping

    # ------------------------------------------------------------------ internals
    def _block_values(self, codes: npt.NDArray[np.uint64], block: int) -> npt.NDArray[np.int64]:
        shifted = codes >> np.uint64(self._shifts[block])
        return (shifted & np.uint64(self._masks[block])).astype(np.int64)

    def _probe_masks(self, block: int, radius: int) -> npt.NDArray[np.int64]:
        """All XOR masks of weight ≤ ``radius`` within the block's width (cached)."""
        key = (self._widths[block], radius)
        masks = self._probes.get(key)
        if masks is None:
            width = self._widths[block]
            values = [
                sum(1 << b for b in bits)
                for r in range(min(radius, width) + 1)
                for bits in combinations(range(width), r)
            ]
            masks = np.array(values, dtype=np.int64)
            self._probes[key] = masks
        return masks

    def _plan(self, radius: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
        """Every bucket probe for ``radius``, all blocks concatenated (cached).

        The ``radius + 1`` units are dealt round-robin; a block with ``u ≥ 1`` units is
        probed at every value within ``u - 1`` bits of the query's (see the module doc).
        Returns the probes' XOR masks and the block each belongs to.
        """
        plan = self._plans.get(radius)
        if plan is None:
            units = [0] * self.blocks
            for i in range(radius + 1):
                units[i % self.blocks] += 1
            masks = [
                self._probe_masks(block, unit - 1) if unit else np.zeros(0, dtype=np.int64)
                for block, unit in enumerate(units)
            ]
            owner = np.repeat(np.arange(self.blocks), [len(m) for m in masks])
            plan = (np.concatenate(masks), owner)
            self._plans[radius] = plan
        return plan

    def _candidates(
        self, code: int, radius: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Slots found by the probes (alive or not, maybe repeated) and their distances."""
        query = np.uint64(code)
        tail = np.arange(self._built, self._size, dtype=np.int64)
        tail_distances = np.bitwise_count(self._codes[tail] ^ query)
        if not self._built:
            return tail, tail_distances
        masks, owner = self._plan(radius)
        values = np.array(
            [(code >> shift) & mask for shift, mask in zip(self._shifts, self._masks, strict=True)],
            dtype=np.int64,
        )
        # Each probe's bucket in the concatenated offsets table: its block's base plus the
        # query's block value with the probe's bits flipped.
        buckets = (values[owner] ^ masks) + self._base_array[owner]
        starts = self._offsets[buckets]
        lengths = self._offsets[buckets + 1] - starts
        nonempty = lengths > 0
        starts, lengths = starts[nonempty], lengths[nonempty]
        total = int(lengths.sum())
        if total == 0:
            return tail, tail_distances
        # Positions of the ranges [start, start + length), concatenated without a loop.
        steps = np.ones(total, dtype=np.int64)
        heads = np.cumsum(lengths)[:-1]
        steps[0] = starts[0]
        steps[heads] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
        positions = np.cumsum(steps)
        # Codes are stored in bucket order too, so this reads runs, not random slots.
        distances = np.bitwise_count(self._sorted_codes[positions] ^ query)
        close = distances <= radius
        slots = self._order[positions[close]].astype(np.int64)
        return np.concatenate((slots, tail)), np.concatenate((distances[close], tail_distances))

    def _candidates_many(
        self, queries: npt.NDArray[np.uint64], radius: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """:meth:`_candidates` for several codes at once; distances to the nearest code."""
        tail = np.arange(self._built, self._size, dtype=np.int64)
        tail_distances = np.bitwise_count(self._codes[tail][:, None] ^ queries[None, :]).min(
            1, initial=64
        )
        if not self._built:
            return tail, tail_distances.astype(np.uint8)
        masks, owner = self._plan(radius)
        values = np.array(
            [
                [
                    (int(code) >> shift) & mask
                    for shift, mask in zip(self._shifts, self._masks, strict=True)
                ]
                for code in queries.tolist()
            ],
            dtype=np.int64,
        )
        buckets = ((values[:, owner] ^ masks[None, :]) + self._base_array[owner][None, :]).ravel()
        which = np.repeat(np.arange(len(queries)), len(masks))
        starts = self._offsets[buckets]
        lengths = self._offsets[buckets + 1] - starts
        nonempty = lengths > 0
        starts, lengths, which = starts[nonempty], lengths[nonempty], which[nonempty]
        total = int(lengths.sum())
        if total == 0:
            return tail, tail_distances.astype(np.uint8)
        steps = np.ones(total, dtype=np.int64)
        heads = np.cumsum(lengths)[:-1]
        steps[0] = starts[0]
        steps[heads] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
        positions = np.cumsum(steps)
        distances = np.bitwise_count(
            self._sorted_codes[positions] ^ np.repeat(queries[which], lengths)
        )
        close = distances <= radius
        slots = self._order[positions[close]].astype(np.int64)
        return (
            np.concatenate((slots, tail)),
            np.concatenate((distances[close], tail_distances.astype(np.uint8))),
        )

    def _grow(self) -> None:
        capacity = max(1024, 2 * len(self._codes))
        self._codes = np.resize(self._codes, capacity)
        self._ids = np.resize(self._ids, capacity)
        alive = np.zeros(capacity, dtype=bool)
        alive[: self._size] = self._alive[: self._size]
        self._alive = alive

    def _rebuild(self) -> None:
        """Drop dead slots if many, and rebuild the per-block CSR tables over all slots."""
        if self._size - len(self._slot_of) > self._size // 4:
            keep = np.flatnonzero(self._alive[: self._size])
            count = len(keep)
            self._codes[:count] = self._codes[keep]
            self._ids[:count] = self._ids[keep]
            self._alive[:count] = True
            self._alive[count : self._size] = False
            self._size = count
            self._slot_of = dict(zip(self._ids[:count].tolist(), range(count), strict=True))
        codes = self._codes[: self._size]
        orders, tables = [], []
        for block in range(self.blocks):
            values = self._block_values(codes, block)
            orders.append(np.argsort(values, kind="stable").astype(np.int32))
            counts = np.bincount(values, minlength=self._masks[block] + 1)
            offsets = np.empty(len(counts) + 1, dtype=np.int64)
            offsets[0] = block * self._size  # where this block's slots start in _order
            np.cumsum(counts, out=offsets[1:])
            offsets[1:] += offsets[0]
            tables.append(offsets)
        self._order = np.concatenate(orders)
        self._offsets = np.concatenate(tables)
        self._sorted_codes = codes[self._order]
        self._built = self._size
