"""Perceptual meme fingerprints: near-duplicate detection that still tells captions apart.

Exact repeats are found by :func:`serve_app.media.imaging.pixel_key`; this module finds
*near* repeats (re-encoded, rescaled, padded, slightly cropped, watermarked) in two
stages, so that a lookup is cheap and a wrong match is rare:

1. **Coarse key** — a 64-bit DCT hash (pHash-style: the 64 lowest zig-zag DCT
   coefficients after DC of a 32x32 luma thumbnail, thresholded at their median) of the
   image after a uniform border is trimmed. It goes into a
   :class:`~serve_app.media.hamming_index.HammingIndex`; candidates are the stored keys within
   ``coarse_radius`` bits. Like every global 64-bit hash it barely sees a caption, so
   it only proposes.
2. **Detail check** — a 64x64 luma thumbnail of the trimmed image (4 bits a pixel,
   2 KiB). :meth:`Fingerprinter.near_distance` aligns the two thumbnails (a per-axis
   scale + offset found from row/column profiles, refined by Gauss-Newton, which absorbs
   crops and trim differences), resamples one onto the other's grid by cubic
   convolution (stored onto query, and if that fails query onto stored: resampling
   costs each direction different pixels of a true pair, while a changed caption fails
   both), then measures per pixel the difference that a small misalignment of *shared*
   edges cannot explain::

       d = max(0, |q - s'| - edge_tolerance * min(|∇q|, |∇s'|))

   and averages ``max(0, d - excess_level)`` over overlapping 6x12 windows (a
   caption line is about 6 rows of 64 tall, so a changed caption fills a window instead
   of being diluted over the whole image). Any window above ``window_threshold`` means a
   different meme. Windows in the four corner regions, where watermarks go, are held to
   the looser ``corner_threshold``.

Everything is numpy + Pillow; the DCT is a matrix product.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from serve_app.media.imaging import pixel_key

FloatArray = npt.NDArray[np.float32]

THUMB: Final[int] = 64  # detail thumbnail side
_DCT_SIDE: Final[int] = 32  # coarse hash input side
_WORK_SIDE: Final[int] = 256  # images are box-reduced by an integer factor to about this
_LEVELS: Final[int] = 16  # detail quantisation (4 bits)
_DETAIL_BYTES: Final[int] = THUMB * THUMB // 2
_MAGIC: Final[bytes] = b"MFP"
_VERSION: Final[int] = 1
_MASK64: Final[int] = (1 << 64) - 1


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two unsigned 64-bit codes."""
    return ((a ^ b) & _MASK64).bit_count()


@dataclass(frozen=True)
class Fingerprint:
    """What the store keeps per image.

    ``exact`` is :func:`serve_app.media.imaging.pixel_key`; ``coarse`` the 64-bit index key;
    ``detail`` the opaque second-stage data (a 4-bit 64x64 luma thumbnail, 2048 bytes).
    """

    exact: str
    coarse: int
    detail: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.coarse <= _MASK64:
            raise ValueError(f"coarse must be an unsigned 64-bit int, got {self.coarse}")

    def to_bytes(self) -> bytes:
        """Versioned serialisation: magic, version, coarse, exact, detail (length-prefixed)."""
        exact = self.exact.encode("utf-8")
        if len(exact) > 255:
            raise ValueError("exact key longer than 255 bytes")
        return b"".join(
            (
                _MAGIC,
                bytes((_VERSION, len(exact))),
                struct.pack(">QH", self.coarse, len(self.detail)),
                exact,
                self.detail,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        """Parse :meth:`to_bytes` output; ``ValueError`` on garbage or another version."""
        head = len(_MAGIC) + 2 + 10
        if len(data) < head or not data.startswith(_MAGIC):
            raise ValueError("not a serialised Fingerprint")
        version, exact_len = data[3], data[4]
        if version != _VERSION:
            raise ValueError(f"unsupported Fingerprint version {version} (expected {_VERSION})")
        coarse, detail_len = struct.unpack(">QH", data[5:head])
        if len(data) != head + exact_len + detail_len:
            raise ValueError("serialised Fingerprint has the wrong length")
        try:
            exact = data[head : head + exact_len].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("serialised Fingerprint has a corrupt exact key") from None
        return cls(exact=exact, coarse=coarse, detail=bytes(data[head + exact_len :]))


@dataclass(frozen=True)
class FingerprintParams:
    """Match thresholds; the defaults are tuned by ``python -m loadtest.bench_dedupe``.

    ``coarse_radius``: Hamming radius of the index query (and an upper bound checked again
    by :meth:`Fingerprinter.near_distance`).
    ``edge_tolerance``: pixels of misalignment forgiven at edges both images share.
    ``excess_level``: grey levels (0-255) of unexplained difference that count.
    ``window_threshold``: largest mean excess allowed in any 6x12 window (of 64x64).
    ``corner_threshold``: largest mean excess in a corner zone (where watermarks go).
    ``window``: (rows, columns) of the comparison windows; ``trim_tolerance``: grey levels
    within which a line still counts as part of a uniform border.
    ``max_crop``: largest crop (fraction of a side) the alignment searches for.
    """

    coarse_radius: int = 12
    edge_tolerance: float = 0.5
    excess_level: float = 30.0
    window_threshold: float = 0.2
    corner_threshold: float = 16.0
    max_crop: float = 0.07
    window: tuple[int, int] = field(default=(6, 12))
    trim_tolerance: float = 6.0


def _dct_matrix(n: int) -> FloatArray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


def _zigzag(count: int, side: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    cells = sorted(
        ((i, j) for i in range(side) for j in range(side)),
        key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]),
    )[1 : count + 1]  # skip DC
    return np.array([c[0] for c in cells]), np.array([c[1] for c in cells])


_DCT: Final[FloatArray] = _dct_matrix(_DCT_SIDE)
_ZIG: Final[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]] = _zigzag(64, 12)
_BIT_WEIGHTS: Final[list[int]] = [1 << (63 - i) for i in range(64)]


def _border_depth(far: npt.NDArray[np.float32], near_fraction: npt.NDArray[np.float32]) -> int:
    """Border thickness from per-line statistics, outermost line first; 0 if no clear border.

    A line belongs to the border when ≥ 98 % of it is within tolerance of the outermost
    line's colour. The border only counts if it ends *sharply*: the first line after it
    (or the one after that, when the boundary line is a blend) is mostly far from the border
    colour. A gradient or a caption reaching the edge ends softly and is never trimmed, so
    the original and a padded copy trim to the same content.
    """
    near = near_fraction >= 0.98
    if len(near) == 0 or not near[0] or near.all():
        return 0
    first = int(np.argmin(near))
    for line in (first, first + 1):
        if line < len(far) and far[line] >= 0.5:
            return line
    return 0


def trim_box(rgb: npt.NDArray[np.int16], tolerance: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``rgb`` (H, W, 3) without a uniform border.

    At most 25 % of a side is trimmed; see :func:`_border_depth` for what counts.
    """
    height, width = rgb.shape[:2]
    depth_y, depth_x = max(1, height // 4), max(1, width // 4)
    # (region, outermost line, axis along which a line runs)
    sides = (
        (rgb[:, :depth_x], rgb[:, 0], 0),  # left: lines are columns
        (rgb[:depth_y], rgb[0], 1),  # top: lines are rows
        (rgb[:, ::-1][:, :depth_x], rgb[:, -1], 0),  # right
        (rgb[::-1][:depth_y], rgb[-1], 1),  # bottom
    )
    depths = []
    for region, edge, axis in sides:
        ref = np.rint(np.median(edge, axis=0)).astype(np.int16)
        diff = np.abs(region - ref)
        # Explicit channel max: a reduction over a length-3 axis is slow in numpy.
        deviation = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
        near_fraction = (deviation <= tolerance).mean(axis=axis)
        far = (deviation > 3 * tolerance).mean(axis=axis)
        depths.append(_border_depth(far, near_fraction))
    left, top, right, bottom = depths
    return left, top, width - right, height - bottom


def _gradient(a: FloatArray) -> FloatArray:
    g = np.zeros_like(a)
    g[:, 1:-1] = np.abs(a[:, 2:] - a[:, :-2])
    g[1:-1] += np.abs(a[2:] - a[:-2])
    return g * 0.5


def _interp_matrix(
    scale: float, offset: float, n: int, *, cubic: bool = False
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Interpolation matrix taking stored samples to query positions, and validity.

    Linear while aligning (cheap, and the fit does not need more); ``cubic`` (Keys'
    convolution, a = -1/2) for the warp that is scored: a linear warp blurs the stored
    thumbnail by up to a quarter pixel of variance, and on caption strokes (near the
    thumbnail's Nyquist limit) that blur alone lifted a window of most cropped copies over
    ``window_threshold``. Samples beyond the edge repeat the edge.
    """
    idx = (scale * _centres(n) + offset) * n - 0.5
    valid = (idx >= -0.5) & (idx <= n - 0.5)
    idx = np.minimum(np.maximum(idx, 0.0), n - 1.0)
    base = np.floor(idx)
    f = idx - base
    rows = np.arange(n)[:, None]
    # Taps base-1 .. base+2 go to columns shifted by one of an (n, n + 3) matrix (distinct
    # per row, so a plain assignment); the pad columns then fold back onto the edges.
    cols = base.astype(np.intp)[:, None] + _TAPS
    m = np.zeros((n, n + 3), dtype=np.float64)
    if cubic:
        f2 = f * f
        f3 = f2 * f
        m[rows, cols] = np.stack(
            (
                -0.5 * f3 + f2 - 0.5 * f,
                1.5 * f3 - 2.5 * f2 + 1,
                -1.5 * f3 + 2 * f2 + 0.5 * f,
                0.5 * f3 - 0.5 * f2,
            ),
            axis=1,
        )
    else:
        m[rows, cols[:, 1:3]] = np.stack((1 - f, f), axis=1)
    m[:, 1] += m[:, 0]
    m[:, n] += m[:, n + 1] + m[:, n + 2]
    return m[:, 1 : n + 1].astype(np.float32), valid


@lru_cache(maxsize=4)
def _centres(n: int) -> npt.NDArray[np.float64]:
    """Sample centres of an ``n``-sample axis in [0, 1]."""
    return (np.arange(n) + 0.5) / n


_TAPS: Final[npt.NDArray[np.intp]] = np.arange(4)  # base - 1 .. base + 2, shifted by one


_STRIDE: Final[int] = 2


# Watermark zones: 12 % of the height x 24 % of the width at each corner (a small text
# mark ≤ 20 % wide plus its margin fits). Caption lines are centred, so they stay visible
# to the main test.
_ZONE_H: Final[int] = round(0.12 * THUMB)
_ZONE_W: Final[int] = round(0.24 * THUMB)
_ZONE_SLICES: Final[tuple[tuple[slice, slice], ...]] = tuple(
    (ys, xs)
    for ys in (slice(0, _ZONE_H), slice(THUMB - _ZONE_H, THUMB))
    for xs in (slice(0, _ZONE_W), slice(THUMB - _ZONE_W, THUMB))
)


@lru_cache(maxsize=2)
def _corner_zones(n: int) -> npt.NDArray[np.bool_]:
    zones = np.zeros((n, n), dtype=bool)
    for z in _ZONE_SLICES:
        zones[z] = True
    return zones


def _window_sums_1d(values: FloatArray, width: int, axis: int) -> FloatArray:
    """Sums over windows of ``width`` at stride 2 along ``axis``."""
    table = np.cumsum(values, axis=axis, dtype=np.float64)
    count = (values.shape[axis] - width) // _STRIDE + 1
    if axis == 0:
        upper = table[width - 1 :: _STRIDE][:count]
        lower = np.concatenate((np.zeros_like(table[:1]), table[_STRIDE - 1 :: _STRIDE]))[:count]
    else:
        upper = table[..., width - 1 :: _STRIDE][..., :count]
        lower = np.concatenate(
            (np.zeros_like(table[..., :1]), table[..., _STRIDE - 1 :: _STRIDE]), axis=-1
        )[..., :count]
    return (upper - lower).astype(np.float32)


class Fingerprinter:
    """Computes fingerprints and decides whether two of them are the same meme."""

    def __init__(self, params: FingerprintParams | None = None) -> None:
        """Use ``params`` (defaults: :class:`FingerprintParams`)."""
        self.params: FingerprintParams = params or FingerprintParams()
        p = self.params
        # Alignment grid: scales within ±2·max_crop in 0.02 steps, offsets in 1-pixel steps;
        # Gauss-Newton refines the best grid point to sub-pixel precision.
        k = math.ceil(2 * p.max_crop / 0.02)
        m = math.ceil(1.2 * p.max_crop * THUMB)
        scales = (1 + np.arange(-k, k + 1) * 0.02).astype(np.float32)
        offsets = (np.arange(-m, m + 1) / THUMB).astype(np.float32)
        self._grid = [(float(a), float(b)) for a in scales for b in offsets]
        u = (np.arange(THUMB, dtype=np.float32) + 0.5) / THUMB
        idx = (scales[:, None, None] * u + offsets[None, :, None]) * THUMB - 0.5
        idx = idx.reshape(len(self._grid), THUMB)
        self._grid_valid = ((idx >= 0) & (idx <= THUMB - 1)).astype(np.float32)
        idx = np.clip(idx, 0, THUMB - 1)
        self._grid_lo = np.floor(idx).astype(np.intp)
        self._grid_hi = np.minimum(self._grid_lo + 1, THUMB - 1)
        self._grid_w = (idx - self._grid_lo).astype(np.float32)
        count = self._grid_valid.sum(axis=1)
        # Candidates that leave under 80 % of the profile overlapping are never chosen.
        self._grid_norm = np.where(count >= 0.8 * THUMB, 1.0 / np.maximum(count, 1), np.inf)

    # ---------------------------------------------------------------- fingerprint
    def fingerprint(self, image: Image.Image, *, exact: str | None = None) -> Fingerprint:
        """Fingerprint a decoded RGB image (as :func:`~serve_app.media.imaging.decode_image` gives).

        ``exact`` may pass an already computed :func:`~serve_app.media.imaging.pixel_key` of
        ``image`` (hashing the pixels is most of the cost for large images).
        """
        exact = pixel_key(image) if exact is None else exact
        work = image if image.mode == "RGB" else image.convert("RGB")
        factor = max(work.size) // _WORK_SIDE
        if factor > 1:
            work = work.reduce(factor)
        box = trim_box(np.asarray(work, dtype=np.int16), self.params.trim_tolerance)
        thumb = work.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(thumb, dtype=np.float32)
        return Fingerprint(exact=exact, coarse=_coarse_code(pixels), detail=_pack(pixels))

    # ---------------------------------------------------------------- comparison
    def near_distance(self, query: Fingerprint, stored: Fingerprint) -> int | None:
        """``None`` if not the same meme, else the coarse Hamming distance (0..radius).

        Same ``exact`` key: 0. Coarse keys further apart than ``coarse_radius``: ``None``.
        Otherwise the detail check decides. A 0 does not imply an exact repeat.
        """
        if query.exact == stored.exact:
            return 0
        distance = hamming(query.coarse, stored.coarse)
        if distance > self.params.coarse_radius:
            return None
        return distance if self.detail_match(query.detail, stored.detail) else None

    def detail_match(self, query: bytes, stored: bytes) -> bool:
        """The second stage alone: do the two detail thumbnails show the same meme?"""
        return self._passes(self.detail_scores(query, stored))

    def detail_scores(self, query: bytes, stored: bytes) -> tuple[float, float]:
        """Worst window score outside and inside the corner regions (lower = more alike).

        The thumbnails are compared as they are, then aligned: first the stored one is
        warped onto the query's grid, and if that does not pass, the query onto the
        stored one's grid (the inverse mapping). Resampling loses a little of whichever
        thumbnail is warped, and a cropped copy's thumbnail is sharper than its original's,
        so the two directions fail on different pixels of a true pair, while a different
        caption fails in both. The first comparison that passes is returned, else the one
        with the lowest main score.
        """
        q = _unpack(query)
        s = _unpack(stored)
        everywhere = np.ones(THUMB, dtype=bool)
        best = self._score(q, s, everywhere, everywhere)
        if self._passes(best):
            return best
        ax, bx, ay, by = self._align(q, s)
        warped, valid_y, valid_x = _warp(s, (ax, bx, ay, by), cubic=True)
        forward = self._score(q, warped, valid_y, valid_x)
        if self._passes(forward):
            return forward
        best = min(best, forward, key=lambda pair: pair[0])
        warped, valid_y, valid_x = _warp(q, (1 / ax, -bx / ax, 1 / ay, -by / ay), cubic=True)
        backward = self._score(warped, s, valid_y, valid_x)
        if self._passes(backward):
            return backward
        return min(best, backward, key=lambda pair: pair[0])

    def _passes(self, scores: tuple[float, float]) -> bool:
        p = self.params
        return scores[0] <= p.window_threshold and scores[1] <= p.corner_threshold

    def _score(
        self,
        q: FloatArray,
        s: FloatArray,
        valid_y: npt.NDArray[np.bool_],
        valid_x: npt.NDArray[np.bool_],
    ) -> tuple[float, float]:
        p = self.params
        d = np.abs(q - s)
        d -= p.edge_tolerance * np.minimum(_gradient(q), _gradient(s))
        d -= p.excess_level
        np.maximum(d, 0.0, out=d)
        # The outermost ring carries trim remnants and interpolation edges.
        rows = valid_y.astype(np.float32)
        cols = valid_x.astype(np.float32)
        rows[[0, -1]] = 0.0
        cols[[0, -1]] = 0.0
        valid = np.outer(rows, cols)
        d *= valid
        zones = _corner_zones(THUMB)
        # Watermark zones: their own, looser test (mean excess per zone).
        corner = max(float(d[z].sum() / max(1.0, float(valid[z].sum()))) for z in _ZONE_SLICES)
        d[zones] = 0.0
        valid[zones] = 0.0
        wh, ww = p.window
        totals = _window_sums_1d(_window_sums_1d(d, wh, 0), ww, 1)
        counts = _window_sums_1d(_window_sums_1d(valid, wh, 0), ww, 1)
        score = np.where(counts >= 0.5 * wh * ww, totals / np.maximum(counts, 1.0), 0.0)
        return float(score.max()), corner

    def _align(self, q: FloatArray, s: FloatArray) -> tuple[float, float, float, float]:
        """Per-axis (scale, offset) mapping query coordinates in [0, 1] to stored ones."""
        ax, bx = self._align_1d(q.mean(0), s.mean(0))
        mx, vx = _interp_matrix(ax, bx, THUMB)
        # Row profiles over the columns both images share, so a side crop does not bias them.
        ay, by = self._align_1d(q[:, vx].mean(1), (s @ mx.T)[:, vx].mean(1))
        return _refine(q, s, (ax, bx, ay, by), self.params.max_crop)

    def _align_1d(self, pq: FloatArray, ps: FloatArray) -> tuple[float, float]:
        values = ps[self._grid_lo] * (1 - self._grid_w) + ps[self._grid_hi] * self._grid_w
        err = (np.square(values - pq) * self._grid_valid).sum(axis=1) * self._grid_norm
        return self._grid[int(np.argmin(err))]


def _warp(
    s: FloatArray, params: tuple[float, float, float, float], *, cubic: bool = False
) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    ax, bx, ay, by = params
    mx, vx = _interp_matrix(ax, bx, THUMB, cubic=cubic)
    my, vy = _interp_matrix(ay, by, THUMB, cubic=cubic)
    warped: FloatArray = (my @ s @ mx.T).astype(np.float32, copy=False)
    return warped, vy, vx


def _refine(
    q: FloatArray, s: FloatArray, start: tuple[float, float, float, float], max_crop: float
) -> tuple[float, float, float, float]:
    """Gauss-Newton on (scale_x, offset_x, scale_y, offset_y) for sub-pixel alignment."""
    n = THUMB
    u = _centres(n)
    p = np.array(start, dtype=np.float64)
    for _ in range(3):
        w, vy, vx = _warp(s, (p[0], p[1], p[2], p[3]))
        # The overlap is a rectangle; leave out the outermost ring of the thumbnail.
        rows = np.flatnonzero(vy[1:-1]) + 1
        cols = np.flatnonzero(vx[1:-1]) + 1
        if len(rows) < 2 or len(cols) < 2:
            break
        ys = slice(int(rows[0]), int(rows[-1]) + 1)
        xs = slice(int(cols[0]), int(cols[-1]) + 1)
        sx = (w[ys, xs.start + 1 : xs.stop + 1] - w[ys, xs.start - 1 : xs.stop - 1]) * (
            0.5 * n / p[0]
        )
        sy = (w[ys.start + 1 : ys.stop + 1, xs] - w[ys.start - 1 : ys.stop - 1, xs]) * (
            0.5 * n / p[2]
        )
        r = (q[ys, xs] - w[ys, xs]).ravel()
        jac = np.stack(
            (
                (sx * u[xs][None, :]).ravel(),
                sx.ravel(),
                (sy * u[ys][:, None]).ravel(),
                sy.ravel(),
            ),
            axis=1,
        ).astype(np.float64)
        hess = jac.T @ jac
        hess += np.eye(4) * (1e-3 * np.trace(hess) / 4 + 1e-9)
        step = np.minimum(np.maximum(np.linalg.solve(hess, jac.T @ r), -0.02), 0.02)
        p += step
        p[[0, 2]] = np.minimum(np.maximum(p[[0, 2]], 1 - 2 * max_crop), 1 + 2 * max_crop)
        p[[1, 3]] = np.minimum(np.maximum(p[[1, 3]], -1.5 * max_crop), 1.5 * max_crop)
        if np.abs(step).max() < 1e-4:
            break
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def _coarse_code(pixels: FloatArray) -> int:
    half = pixels.reshape(_DCT_SIDE, 2, _DCT_SIDE, 2).mean(axis=(1, 3))
    coefficients = (_DCT @ half @ _DCT.T)[_ZIG]
    bits = coefficients > np.median(coefficients)
    return sum(w for w, bit in zip(_BIT_WEIGHTS, bits.tolist(), strict=True) if bit)


def _pack(pixels: FloatArray) -> bytes:
    levels = np.clip(np.rint(pixels * ((_LEVELS - 1) / 255.0)), 0, _LEVELS - 1).astype(np.uint8)
    flat = levels.ravel()
    return ((flat[0::2] << 4) | flat[1::2]).tobytes()


def _unpack(detail: bytes) -> FloatArray:
    if len(detail) != _DETAIL_BYTES:
        raise ValueError(f"detail must be {_DETAIL_BYTES} bytes, got {len(detail)}")
    packed = np.frombuffer(detail, dtype=np.uint8)
    levels = np.empty(THUMB * THUMB, dtype=np.float32)
    levels[0::2] = packed >> 4
    levels[1::2] = packed & 0x0F
    return (levels * (255.0 / (_LEVELS - 1))).reshape(THUMB, THUMB)
