"""Perceptual meme fingerprints: near-duplicate detection that still tells captions apart.

Exact repeats are found by :func:`serve_app.media.imaging.pixel_key`; this module finds
*near* repeats (re-encoded, rescaled, padded, cropped by a few percent per side,
watermarked) in two stages, so that a lookup is cheap and a wrong match is rare. Both
stages see the image after a uniform border is trimmed (:func:`trim_box`).

1. **Candidates** — 64-bit DCT codes (pHash-style: the 64 lowest zig-zag DCT
   coefficients after DC of a 32x32 luma thumbnail, thresholded at their median), each in
   a :class:`~serve_app.media.hamming_index.HammingIndex` (:class:`FingerprintIndex`):

   * ``coarse``, the code of the whole picture (as in version 1 fingerprints; what a
     version 1 fingerprint on either side is compared by);
   * ``windows``, codes of central windows with ``WINDOW_MARGINS`` cut off each side. A
     stored fingerprint is indexed by its middle window (:data:`KEY_WINDOW`); a query
     probes with all three. A copy cropped by c per side sees the original's middle
     window through its own window of margin ≈ (0.08 - c) / (1 - 2c), a padded one
     through a wider margin, so crops of 2-5 % per side and pads stay within
     ``coarse_radius`` where the whole-picture code drifts past it.

   Like every global 64-bit hash these barely see a caption, so they only propose.
2. **Detail check** — a 256x256 luma thumbnail of the trimmed picture (4 bits a pixel,
   zlib-compressed: 3-9 KiB for a meme). At 64x64 (version 1) a caption line under 6 % of
   the height, thin strokes, or a wide picture squeezed into the square left two captions
   of one template within a few grey levels of each other; at 256 they differ by whole
   strokes. :meth:`Fingerprinter.near_distance` aligns the two thumbnails (a per-axis
   scale + offset: a grid search on row/column profiles at 64x64, then Gauss-Newton at 64
   and at 256), resamples one onto the other's grid by cubic convolution (stored onto
   query, and if that fails query onto stored), then measures per pixel the difference
   that a misalignment of at most half a pixel cannot explain: how far each value lies
   outside the range the other image takes within ±½ pixel (its *envelope*), the smaller
   of the two ways round::

       d = max(0, min(dist(q, envelope(s')), dist(s', envelope(q))) - detail_excess)

   and averages ``d`` over overlapping windows of ``detail_window`` (4.7 % of the height,
   about half a caption line, so a changed word fills a window instead of being diluted
   over the picture). Any window above ``detail_window_threshold`` means a different
   meme. Small corner zones, where watermarks go (a text mark ≤ 7 % tall and ≤ 23 %
   wide, or a logo ≤ 12.5 % square), are held to the looser ``detail_corner_threshold``;
   a caption that lies wholly inside one is indistinguishable from a watermark.

Version 1 fingerprints (64x64 detail, no window codes) still load: they are compared by
their coarse code and by the version 1 detail check on the 64x64 reduction of the other
side's thumbnail, with its own thresholds (``edge_tolerance`` … ``window``), so a library
or a scenes log written by version 1 keeps answering near copies.

Everything is numpy + Pillow (+ zlib); the DCT is a matrix product.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from serve_app.media.hamming_index import HammingIndex
from serve_app.media.imaging import pixel_key

FloatArray = npt.NDArray[np.float32]

THUMB: Final[int] = 64  # alignment grid; version 1 detail side
DETAIL: Final[int] = 256  # detail thumbnail side
_DCT_SIDE: Final[int] = 32  # DCT code input side
_TRIM_SIDE: Final[int] = 256  # the trim box is found on the image box-reduced to about this
_LEVELS: Final[int] = 16  # detail quantisation (4 bits)
_LEGACY_DETAIL_BYTES: Final[int] = THUMB * THUMB // 2
_DETAIL_RAW_BYTES: Final[int] = DETAIL * DETAIL // 2
_MAGIC: Final[bytes] = b"MFP"
VERSION: Final[int] = 2
LEGACY_VERSION: Final[int] = 1
_MASK64: Final[int] = (1 << 64) - 1
# Central windows whose DCT codes a fingerprint carries (fraction cut off each side), and
# which of them is the stored (indexed) key.
WINDOW_MARGINS: Final[tuple[float, ...]] = (0.045, 0.08, 0.115)
KEY_WINDOW: Final[int] = 1


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two unsigned 64-bit codes."""
    return ((a ^ b) & _MASK64).bit_count()


@dataclass(frozen=True)
class Fingerprint:
    """What the store keeps per image.

    ``exact`` is :func:`serve_app.media.imaging.pixel_key`; ``coarse`` the 64-bit code of
    the whole (trimmed) picture; ``windows`` the codes of its central windows
    (:data:`WINDOW_MARGINS`; empty in version 1); ``detail`` the opaque second-stage data
    (version 2: a zlib-compressed 4-bit 256x256 luma thumbnail; version 1: a raw 4-bit
    64x64 one, 2048 bytes); ``source`` the (width, height) in pixels of the trimmed picture
    the thumbnail was resampled from ((0, 0): unknown; version 1 has none), so that a
    small copy is compared at the resolution it has.
    """

    exact: str
    coarse: int
    detail: bytes
    windows: tuple[int, ...] = ()
    version: int = VERSION
    source: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not 0 <= self.coarse <= _MASK64:
            raise ValueError(f"coarse must be an unsigned 64-bit int, got {self.coarse}")
        if any(not 0 <= code <= _MASK64 for code in self.windows):
            raise ValueError("window codes must be unsigned 64-bit ints")
        if self.version not in (LEGACY_VERSION, VERSION):
            raise ValueError(f"unsupported Fingerprint version {self.version}")
        if self.version == LEGACY_VERSION and self.windows:
            raise ValueError("version 1 fingerprints carry no window codes")
        if len(self.windows) > 255:
            raise ValueError("at most 255 window codes")
        if len(self.source) != 2 or not all(0 <= v <= 0xFFFF for v in self.source):
            raise ValueError(f"source must be two sizes within 0..65535, got {self.source}")
        if self.version == LEGACY_VERSION and self.source != (0, 0):
            raise ValueError("version 1 fingerprints carry no source size")

    @property
    def window_key(self) -> int | None:
        """The code a store indexes besides ``coarse`` (``None`` for version 1)."""
        return self.windows[KEY_WINDOW] if len(self.windows) > KEY_WINDOW else None

    def to_bytes(self) -> bytes:
        """Versioned serialisation.

        Version 2: magic, version, exact length, coarse, detail length, window count,
        windows, source width and height, exact, detail. Version 1 (kept for fingerprints
        loaded from it): the same without the window count, windows and source.
        """
        exact = self.exact.encode("utf-8")
        if len(exact) > 255:
            raise ValueError("exact key longer than 255 bytes")
        if len(self.detail) > 0xFFFF:
            raise ValueError("detail longer than 65535 bytes")
        head = [
            _MAGIC,
            bytes((self.version, len(exact))),
            struct.pack(">QH", self.coarse, len(self.detail)),
        ]
        if self.version != LEGACY_VERSION:
            head.append(bytes((len(self.windows),)))
            head.append(struct.pack(f">{len(self.windows)}Q", *self.windows))
            head.append(struct.pack(">HH", *self.source))
        return b"".join((*head, exact, self.detail))

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        """Parse :meth:`to_bytes` output (either version); ``ValueError`` on anything else."""
        head = len(_MAGIC) + 2 + 10
        if len(data) < head or not data.startswith(_MAGIC):
            raise ValueError("not a serialised Fingerprint")
        version, exact_len = data[3], data[4]
        if version not in (LEGACY_VERSION, VERSION):
            raise ValueError(
                f"unsupported Fingerprint version {version} "
                f"(expected {LEGACY_VERSION} or {VERSION})"
            )
        coarse, detail_len = struct.unpack(">QH", data[5:head])
        windows: tuple[int, ...] = ()
        source = (0, 0)
        if version != LEGACY_VERSION:
            if len(data) < head + 1:
                raise ValueError("serialised Fingerprint has the wrong length")
            count = data[head]
            end = head + 1 + 8 * count
            if len(data) < end + 4:
                raise ValueError("serialised Fingerprint has the wrong length")
            windows = struct.unpack(f">{count}Q", data[head + 1 : end])
            source = struct.unpack(">HH", data[end : end + 4])
            head = end + 4
        if len(data) != head + exact_len + detail_len:
            raise ValueError("serialised Fingerprint has the wrong length")
        try:
            exact = data[head : head + exact_len].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("serialised Fingerprint has a corrupt exact key") from None
        return cls(
            exact=exact,
            coarse=coarse,
            detail=bytes(data[head + exact_len :]),
            windows=windows,
            version=version,
            source=(source[0], source[1]),
        )


@dataclass(frozen=True)
class FingerprintParams:
    """Match thresholds; the defaults are tuned by ``python -m loadtest.bench_dedupe``.

    ``coarse_radius``: Hamming radius of the index queries (and an upper bound checked
    again by :meth:`Fingerprinter.near_distance`).
    ``detail_excess``: grey levels (0-255) of unexplained difference that count.
    ``detail_window_threshold``: largest mean excess allowed in any ``detail_window``
    (rows, columns of the 256x256 thumbnail; both even).
    ``detail_corner_threshold``: largest mean excess in a corner zone (where watermarks go).
    ``max_crop``: largest crop (fraction of a side) the alignment searches for.
    ``trim_tolerance``: grey levels within which a line still counts as part of a uniform
    border.

    The version 1 detail check (a version 1 fingerprint on either side) keeps its own:
    ``edge_tolerance`` (pixels of misalignment forgiven at edges both images share),
    ``excess_level``, ``window_threshold`` (largest mean excess in a ``window`` of the
    64x64 thumbnail) and ``corner_threshold``.
    """

    coarse_radius: int = 12
    detail_excess: float = 20.0
    detail_window_threshold: float = 1.5
    detail_corner_threshold: float = 48.0
    detail_window: tuple[int, int] = field(default=(12, 24))
    max_crop: float = 0.07
    trim_tolerance: float = 6.0
    edge_tolerance: float = 0.5
    excess_level: float = 30.0
    window_threshold: float = 0.2
    corner_threshold: float = 16.0
    window: tuple[int, int] = field(default=(6, 12))


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


def _longest_run(mask: npt.NDArray[np.bool_]) -> int:
    """Length of the longest run of ``True`` in a 1-D mask."""
    if not mask.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max())


def _border_depth(
    far: npt.NDArray[np.bool_],
    near_fraction: npt.NDArray[np.float64],
    step_fraction: npt.NDArray[np.float64],
) -> int:
    """Border thickness from per-line statistics, outermost line first; 0 if no clear border.

    ``far`` (lines x positions) marks the pixels far (3 tolerances) from the border colour;
    ``step_fraction`` is the share of each line's middle 2 tolerances from it. A line
    belongs to the border when ≥ 98 % of it is within tolerance of the outermost line's
    colour. The border only counts if it ends *sharply*: the first line after it (or the one
    after that, when the boundary line is a blend) is mostly far from the border colour,
    or ≥ 90 % of it stepped 2 tolerances away at once (a pad on a mount of a close colour),
    or holds one unbroken far run of at least a quarter of the line (a picture beside a
    plain panel of the border's colour; a caption's strokes are never that long); or one
    of the four lines after those holds an unbroken far run of half the line (a thin frame
    line, with a JPEG block's ringing between it and the border). A gradient or a caption
    reaching the edge ends softly and is never trimmed, so the original and a padded copy
    trim to the same content.
    """
    near = near_fraction >= 0.98
    if len(near) == 0 or not near[0] or near.all():
        return 0
    first = int(np.argmin(near))
    length = far.shape[1]
    for line in range(first, min(first + 6, len(near))):
        run = _longest_run(far[line])
        if line - first < 2 and (
            far[line].mean() >= 0.5 or step_fraction[line] >= 0.9 or run >= 0.25 * length
        ):
            return line
        if run >= 0.5 * length:
            return line
    return 0


# The uniformity test leaves out this share at both ends of each line: a corner
# watermark over a border must not end the border there.
_TRIM_CORNER: Final[float] = 0.22


def trim_box(rgb: npt.NDArray[np.int16], tolerance: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``rgb`` (H, W, 3) without uniform borders.

    Borders inside borders are trimmed too (a pad around a mount around a frame line), in
    up to six passes of :func:`_trim_once`, so a padded copy of a framed picture trims
    to the same content as the original. At most 40 % of a side goes in all.
    """
    height, width = rgb.shape[:2]
    left, top, right, bottom = 0, 0, width, height
    for _ in range(6):
        box = _trim_once(rgb[top:bottom, left:right], tolerance)
        if box == (0, 0, right - left, bottom - top):
            break
        left, top, right, bottom = left + box[0], top + box[1], left + box[2], top + box[3]
    left, top = min(left, int(0.4 * width)), min(top, int(0.4 * height))
    right, bottom = max(right, width - int(0.4 * width)), max(bottom, height - int(0.4 * height))
    return left, top, right, bottom


def _trim_once(rgb: npt.NDArray[np.int16], tolerance: float) -> tuple[int, int, int, int]:
    """One pass of :func:`trim_box`: at most 25 % of each side.

    See :func:`_border_depth` for what counts. Whether a line is uniform is judged on its
    middle (:data:`_TRIM_CORNER` of either end left out, where a corner watermark may be);
    whether the border ends sharply, on the whole line.
    """
    height, width = rgb.shape[:2]
    depth_y, depth_x = max(1, height // 4), max(1, width // 4)
    cut_y, cut_x = int(_TRIM_CORNER * height), int(_TRIM_CORNER * width)
    mid_y = slice(cut_y, max(cut_y + 1, height - cut_y))
    mid_x = slice(cut_x, max(cut_x + 1, width - cut_x))
    # (region, outermost line, axis along which a line runs, middle of a line)
    sides = (
        (rgb[:, :depth_x], rgb[mid_y, 0], 0, mid_y),  # left: lines are columns
        (rgb[:depth_y], rgb[0, mid_x], 1, mid_x),  # top: lines are rows
        (rgb[:, ::-1][:, :depth_x], rgb[mid_y, -1], 0, mid_y),  # right
        (rgb[::-1][:depth_y], rgb[-1, mid_x], 1, mid_x),  # bottom
    )
    depths = []
    for region, edge, axis, middle in sides:
        ref = np.rint(np.median(edge, axis=0)).astype(np.int16)
        diff = np.abs(region - ref)
        # Explicit channel max: a reduction over a length-3 axis is slow in numpy.
        deviation = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
        lines = deviation.T if axis == 0 else deviation  # (lines, positions)
        near_fraction = (lines[:, middle] <= tolerance).mean(axis=1)
        step_fraction = (lines[:, middle] > 2 * tolerance).mean(axis=1)
        depths.append(_border_depth(lines > 3 * tolerance, near_fraction, step_fraction))
    left, top, right, bottom = depths
    return left, top, width - right, height - bottom


def _gradient(a: FloatArray) -> FloatArray:
    g = np.zeros_like(a)
    g[:, 1:-1] = np.abs(a[:, 2:] - a[:, :-2])
    g[1:-1] += np.abs(a[2:] - a[:-2])
    return g * 0.5


def _envelope(a: FloatArray, reach: float = 0.5) -> tuple[FloatArray, FloatArray]:
    """Per pixel, the lowest and highest value ``a`` takes within ±``reach`` pixel per axis.

    That is the range of the linear interpolant from a pixel towards its four neighbours,
    ``reach`` of the way (the edge repeats beyond the border).
    """
    lo = a.copy()
    hi = a.copy()
    for step in (
        (a[:, 1:] - a[:, :-1]) * reach,  # from column j towards j+1 (and back)
        (a[1:] - a[:-1]) * reach,  # from row i towards i+1 (and back)
    ):
        if step.shape[1] < a.shape[1]:
            ahead, behind = a[:, :-1] + step, a[:, 1:] - step
            np.minimum(lo[:, :-1], ahead, out=lo[:, :-1])
            np.maximum(hi[:, :-1], ahead, out=hi[:, :-1])
            np.minimum(lo[:, 1:], behind, out=lo[:, 1:])
            np.maximum(hi[:, 1:], behind, out=hi[:, 1:])
        else:
            ahead, behind = a[:-1] + step, a[1:] - step
            np.minimum(lo[:-1], ahead, out=lo[:-1])
            np.maximum(hi[:-1], ahead, out=hi[:-1])
            np.minimum(lo[1:], behind, out=lo[1:])
            np.maximum(hi[1:], behind, out=hi[1:])
    return lo, hi


def _interp_matrix(
    scale: float, offset: float, n: int, *, cubic: bool = False
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Interpolation matrix taking stored samples to query positions, and validity.

    Linear while aligning (cheap, and the fit does not need more); ``cubic`` (Keys'
    convolution, a = -1/2) for the warp that is scored: a linear warp blurs the stored
    thumbnail by up to a quarter pixel of variance, and on caption strokes (near the
    thumbnail's Nyquist limit) that blur alone lifted a window of most cropped copies over
    the threshold. Samples beyond the edge repeat the edge.
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


@lru_cache(maxsize=8)
def _centres(n: int) -> npt.NDArray[np.float64]:
    """Sample centres of an ``n``-sample axis in [0, 1]."""
    return (np.arange(n) + 0.5) / n


_TAPS: Final[npt.NDArray[np.intp]] = np.arange(4)  # base - 1 .. base + 2, shifted by one


# Version 1 watermark zones: 12 % of the height x 24 % of the width at each corner.
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


def _detail_zone_rects() -> tuple[tuple[tuple[slice, slice], ...], ...]:
    """Per corner: the text strip, the logo square, and their overlap (as slices)."""
    n = DETAIL
    text_h, text_w = round(0.07 * n), round(0.23 * n)
    logo = round(0.125 * n)
    corners = []
    for top in (True, False):
        for left in (True, False):
            rects = []
            for h, w in ((text_h, text_w), (logo, logo), (min(text_h, logo), min(text_w, logo))):
                ys = slice(0, h) if top else slice(n - h, n)
                xs = slice(0, w) if left else slice(n - w, n)
                rects.append((ys, xs))
            corners.append(tuple(rects))
    return tuple(corners)


def _zone_mean(d: FloatArray, valid: FloatArray, rects: tuple[tuple[slice, slice], ...]) -> float:
    """Mean of ``d`` over the valid pixels of one corner zone (strip + square - overlap)."""
    strip, square, overlap = rects
    total = float(d[strip].sum() + d[square].sum() - d[overlap].sum())
    count = float(valid[strip].sum() + valid[square].sum() - valid[overlap].sum())
    return total / max(1.0, count)


def _detail_zone_masks() -> tuple[npt.NDArray[np.bool_], ...]:
    """Version 2 watermark zones, one mask per corner: a text strip and a logo square.

    A corner watermark is a text mark at most ~4 % of the height tall and 20 % of the
    width wide, or a logo at most 10 % of the shorter side, each ~1.5 % from the edges:
    7 % x 23 % and 12.5 % x 12.5 % cover both. Captions and labels near a corner stay
    mostly outside, so the main test still sees them.
    """
    n = DETAIL
    text_h, text_w = round(0.07 * n), round(0.23 * n)
    logo = round(0.125 * n)
    masks = []
    for top in (True, False):
        for left in (True, False):
            mask = np.zeros((n, n), dtype=bool)
            for h, w in ((text_h, text_w), (logo, logo)):
                ys = slice(0, h) if top else slice(n - h, n)
                xs = slice(0, w) if left else slice(n - w, n)
                mask[ys, xs] = True
            masks.append(mask)
    return tuple(masks)


_DETAIL_ZONES: Final[tuple[npt.NDArray[np.bool_], ...]] = _detail_zone_masks()
_DETAIL_ZONE_RECTS: Final[tuple[tuple[tuple[slice, slice], ...], ...]] = _detail_zone_rects()
_DETAIL_ANY_ZONE: Final[npt.NDArray[np.bool_]] = np.logical_or.reduce(_DETAIL_ZONES)
_RING: Final[int] = max(1, DETAIL // 64)  # outermost pixels left out of the detail check


def _box_sums(values: FloatArray, window: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Sums over every ``window`` (rows, columns; both even) at stride 2.

    The 2x2 block sums first, then sliding sums of the blocks by cumulative sums: a
    quarter of the work of sliding over the pixels.
    """
    blocks = values[0::2, 0::2] + values[1::2, 0::2] + values[0::2, 1::2] + values[1::2, 1::2]
    bh, bw = window[0] // 2, window[1] // 2
    table = np.zeros((blocks.shape[0] + 1, blocks.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(blocks, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
    sums: npt.NDArray[np.float64] = (
        table[bh:, bw:] - table[:-bh, bw:] - table[bh:, :-bw] + table[:-bh, :-bw]
    )
    return sums


def _worst_window(d: FloatArray, valid: FloatArray, window: tuple[int, int]) -> float:
    """Largest mean of ``d`` over the windows at least half inside ``valid``."""
    totals = _box_sums(d, window)
    counts = _box_sums(valid, window)
    half = 0.5 * window[0] * window[1]
    score = np.where(counts >= half, totals / np.maximum(counts, 1.0), 0.0)
    return float(score.max()) if score.size else 0.0


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
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels, source, coarse = _detail_pixels(rgb, self.params.trim_tolerance)
        return Fingerprint(
            exact=exact,
            coarse=coarse,
            detail=_pack(pixels),
            windows=_window_codes(pixels),
            source=source,
        )

    # ---------------------------------------------------------------- comparison
    def coarse_distance(self, query: Fingerprint, stored: Fingerprint) -> int:
        """The Hamming distance through which a :class:`FingerprintIndex` finds ``stored``.

        Two version 2 fingerprints: the smallest distance of the query's window codes to
        the stored key window. Otherwise the whole-picture (coarse) codes'.
        """
        key = stored.window_key
        if key is None or not query.windows:
            return hamming(query.coarse, stored.coarse)
        return min(hamming(code, key) for code in query.windows)

    def near_distance(self, query: Fingerprint, stored: Fingerprint) -> int | None:
        """``None`` if not the same meme, else the coarse distance (0..radius).

        Same ``exact`` key: 0. :meth:`coarse_distance` above ``coarse_radius``: ``None``.
        Otherwise the detail check decides; a detail that does not decode (a corrupt stored
        entry) matches nothing. A 0 does not imply an exact repeat.
        """
        if query.exact == stored.exact:
            return 0
        distance = self.coarse_distance(query, stored)
        if distance > self.params.coarse_radius:
            return None
        try:
            matched = self.detail_match(query, stored)
        except ValueError:
            return None
        return distance if matched else None

    def detail_match(self, query: Fingerprint, stored: Fingerprint) -> bool:
        """The second stage alone: do the two detail thumbnails show the same meme?"""
        return self.detail_scores(query, stored)[2]

    def detail_scores(self, query: Fingerprint, stored: Fingerprint) -> tuple[float, float, bool]:
        """(worst window score outside the corner zones, worst zone score, match).

        Lower scores are more alike. Two version 2 fingerprints are compared at 256x256;
        otherwise both sides at 64x64 by the version 1 check (its own thresholds).
        ``ValueError`` when a detail is corrupt.

        The thumbnails are compared as they are, then aligned: first the stored one is
        warped onto the query's grid, and if that does not pass, the query onto the
        stored one's grid (the inverse mapping). Resampling loses a little of whichever
        thumbnail is warped, so the two directions fail on different pixels of a true pair,
        while a different caption fails in both (the second direction is tried only when the
        first came within 3x of passing). The first comparison that passes is returned, else
        the one with the lowest main score.
        """
        if query.version == VERSION and stored.version == VERSION:
            q, s = _at_common_resolution(
                _unpack(query.detail), _unpack(stored.detail), query.source, stored.source
            )
            return self._compare(q, s, self._score, self._passes, refine_at=(DETAIL,))
        q = _legacy_thumb(query)
        s = _legacy_thumb(stored)
        return self._compare(q, s, self._legacy_score, self._legacy_passes, refine_at=())

    def _compare(
        self,
        q: FloatArray,
        s: FloatArray,
        score: _Scorer,
        passes: _Judge,
        refine_at: tuple[int, ...],
    ) -> tuple[float, float, bool]:
        n = q.shape[0]
        everywhere = np.ones(n, dtype=bool)
        best = score(q, s, everywhere, everywhere)
        if passes(best):
            return (*best, True)
        factor = n // THUMB
        params = self._align(_shrink(q, factor), _shrink(s, factor))
        for side in refine_at:
            params = _refine(
                _shrink(q, n // side), _shrink(s, n // side), params, self.params.max_crop
            )
        ax, bx, ay, by = params
        warped, valid_y, valid_x = _warp(s, params, cubic=True)
        forward = score(q, warped, valid_y, valid_x)
        if passes(forward):
            return (*forward, True)
        best = min(best, forward, key=lambda pair: pair[0])
        if not passes((forward[0] / 3, forward[1] / 3)):
            return (*best, False)  # far off: the other direction differs by a little, not 3x
        warped, valid_y, valid_x = _warp(q, (1 / ax, -bx / ax, 1 / ay, -by / ay), cubic=True)
        backward = score(warped, s, valid_y, valid_x)
        if passes(backward):
            return (*backward, True)
        return (*min(best, backward, key=lambda pair: pair[0]), False)

    def _passes(self, scores: tuple[float, float]) -> bool:
        p = self.params
        return scores[0] <= p.detail_window_threshold and scores[1] <= p.detail_corner_threshold

    def _legacy_passes(self, scores: tuple[float, float]) -> bool:
        p = self.params
        return scores[0] <= p.window_threshold and scores[1] <= p.corner_threshold

    def _score(
        self,
        q: FloatArray,
        s: FloatArray,
        valid_y: npt.NDArray[np.bool_],
        valid_x: npt.NDArray[np.bool_],
    ) -> tuple[float, float]:
        """Version 2: envelope differences, worst window outside the zones, worst zone."""
        lo_s, hi_s = _envelope(s)
        lo_q, hi_q = _envelope(q)
        d = np.minimum(np.maximum(q - hi_s, lo_s - q), np.maximum(s - hi_q, lo_q - s))
        d -= self.params.detail_excess
        np.maximum(d, 0.0, out=d)
        valid = _overlap(valid_y, valid_x, _RING)
        d *= valid
        corner = max(_zone_mean(d, valid, rects) for rects in _DETAIL_ZONE_RECTS)
        d[_DETAIL_ANY_ZONE] = 0.0
        valid[_DETAIL_ANY_ZONE] = 0.0
        return _worst_window(d, valid, self.params.detail_window), corner

    def _legacy_score(
        self,
        q: FloatArray,
        s: FloatArray,
        valid_y: npt.NDArray[np.bool_],
        valid_x: npt.NDArray[np.bool_],
    ) -> tuple[float, float]:
        """Version 1: gradient-tolerant differences on 64x64, 6x12 windows, corner zones."""
        p = self.params
        d = np.abs(q - s)
        d -= p.edge_tolerance * np.minimum(_gradient(q), _gradient(s))
        d -= p.excess_level
        np.maximum(d, 0.0, out=d)
        valid = _overlap(valid_y, valid_x, 1)
        d *= valid
        zones = _corner_zones(THUMB)
        # Watermark zones: their own, looser test (mean excess per zone).
        corner = max(float(d[z].sum() / max(1.0, float(valid[z].sum()))) for z in _ZONE_SLICES)
        d[zones] = 0.0
        valid[zones] = 0.0
        return _worst_window(d, valid, p.window), corner

    def _align(self, q: FloatArray, s: FloatArray) -> tuple[float, float, float, float]:
        """Per-axis (scale, offset) mapping query coordinates in [0, 1] to stored ones.

        For every scale of the grid, the offset that fits the column profiles best; for
        each of those, the two best fits of the row profiles (over the columns both images
        share). The candidates are ranked by their residual over the overlap (at 32x32, all
        at once), and the best two refined by Gauss-Newton at 64x64. A caption's glyphs
        make a profile nearly periodic and a smooth picture makes it nearly flat, so the
        best 1-D fit alone is often wrong; the 2-D residual is not fooled.
        """
        columns = self._best_fits(self._profile_errors(q.mean(0), s.mean(0)), per_scale=True)
        ax = np.array([a for a, _ in columns])
        bx = np.array([b for _, b in columns])
        mx, vx = _linear_matrices(ax, bx, THUMB, ring=False)
        shared = vx.sum(1, keepdims=True)
        rows_s = np.einsum("kij,kj->ki", s[None] @ mx.transpose(0, 2, 1), vx) / shared
        rows_q = np.einsum("ij,kj->ki", q, vx) / shared
        errors = self._profile_errors(rows_q, rows_s)
        starts = [
            (float(ax[k]), float(bx[k]), ay, by)
            for k in range(len(columns))
            for ay, by in self._best_fits(errors[k], count=2)
        ]
        ranked = np.argsort(_residuals(_shrink(q, 2), _shrink(s, 2), np.array(starts)))
        best: tuple[float, tuple[float, float, float, float]] | None = None
        for index in ranked[:2].tolist():
            params = _refine(q, s, starts[index], self.params.max_crop)
            residual = _residual(q, s, params)
            if best is None or residual < best[0]:
                best = (residual, params)
        return best[1] if best is not None else (1.0, 0.0, 1.0, 0.0)

    def _profile_errors(self, pq: FloatArray, ps: FloatArray) -> FloatArray:
        """Mean squared error of every grid (scale, offset) fit of profiles ``ps`` to ``pq``.

        Profiles along the last axis (any leading axes); errors (..., grid).
        """
        values = ps[..., self._grid_lo] * (1 - self._grid_w) + ps[..., self._grid_hi] * self._grid_w
        diff = np.square(values - pq[..., None, :]) * self._grid_valid
        errors: FloatArray = diff.sum(axis=-1) * self._grid_norm
        return errors

    def _best_fits(
        self, errors: FloatArray, count: int = 1, *, per_scale: bool = False
    ) -> list[tuple[float, float]]:
        """Grid fits (scale, offset) best first, from :meth:`_profile_errors` of one profile.

        ``per_scale``: the best offset of every scale. Otherwise the ``count`` best fits that
        are not neighbours on the grid (a neighbour is the same minimum).
        """
        chosen: list[tuple[float, float]] = []
        scales: set[float] = set()
        for index in np.argsort(errors).tolist():
            if not np.isfinite(errors[index]) or (not per_scale and len(chosen) == count):
                break
            a, b = self._grid[index]
            if per_scale:
                if a not in scales:
                    scales.add(a)
                    chosen.append((a, b))
            elif all(abs(a - a2) > 0.021 or abs(b - b2) > 2.5 / THUMB for a2, b2 in chosen):
                chosen.append((a, b))
        return chosen or [(1.0, 0.0)]


def _overlap(
    valid_y: npt.NDArray[np.bool_], valid_x: npt.NDArray[np.bool_], ring: int
) -> FloatArray:
    """1.0 where both thumbnails have pixels, less the outermost ``ring`` rows and columns.

    That ring carries trim remnants and interpolation edges.
    """
    rows = valid_y.astype(np.float32)
    cols = valid_x.astype(np.float32)
    rows[:ring] = rows[-ring:] = 0.0
    cols[:ring] = cols[-ring:] = 0.0
    return np.outer(rows, cols)


def _residual(q: FloatArray, s: FloatArray, params: tuple[float, float, float, float]) -> float:
    """Mean squared difference of ``q`` and ``s`` warped by ``params``, over their overlap."""
    warped, vy, vx = _warp(s, params)
    rows = np.flatnonzero(vy[1:-1]) + 1
    cols = np.flatnonzero(vx[1:-1]) + 1
    if len(rows) < 2 or len(cols) < 2:
        return math.inf
    ys = slice(int(rows[0]), int(rows[-1]) + 1)
    xs = slice(int(cols[0]), int(cols[-1]) + 1)
    return float(np.square(q[ys, xs] - warped[ys, xs]).mean())


def _linear_matrices(
    scales: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.float64],
    n: int,
    *,
    ring: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Linear :func:`_interp_matrix` for many (scale, offset) at once, and the validity
    (``ring``: with the outermost ring left out): shapes (K, n, n) and (K, n)."""
    idx = (scales[:, None] * _centres(n)[None, :] + offsets[:, None]) * n - 0.5
    valid = (idx >= -0.5) & (idx <= n - 0.5)
    if ring:
        valid[:, [0, -1]] = False
    idx = np.clip(idx, 0.0, n - 1.0)
    base = np.minimum(np.floor(idx).astype(np.intp), n - 2)
    f = (idx - base).astype(np.float32)
    k, rows = np.indices(idx.shape)
    m = np.zeros((len(scales), n, n), dtype=np.float32)
    m[k, rows, base] = 1 - f
    m[k, rows, base + 1] += f
    return m, valid.astype(np.float32)


def _residuals(q: FloatArray, s: FloatArray, params: npt.NDArray[np.float64]) -> FloatArray:
    """:func:`_residual` of many candidate alignments (rows of ``params``) at once."""
    n = q.shape[0]
    mx, vx = _linear_matrices(params[:, 0], params[:, 1], n)
    my, vy = _linear_matrices(params[:, 2], params[:, 3], n)
    warped = my @ s[None] @ mx.transpose(0, 2, 1)
    err = np.einsum("kij,ki,kj->k", np.square(q[None] - warped), vy, vx)
    count = vy.sum(1) * vx.sum(1)
    out: FloatArray = np.where(count >= 4, err / np.maximum(count, 1.0), np.inf)
    return out


class _Scorer(Protocol):
    def __call__(
        self,
        q: FloatArray,
        s: FloatArray,
        valid_y: npt.NDArray[np.bool_],
        valid_x: npt.NDArray[np.bool_],
        /,
    ) -> tuple[float, float]: ...


class _Judge(Protocol):
    def __call__(self, scores: tuple[float, float], /) -> bool: ...


class FingerprintIndex:
    """Near-match candidates: :meth:`Fingerprinter.coarse_distance` within ``radius``, exactly.

    Two :class:`~serve_app.media.hamming_index.HammingIndex` instances: the stored key
    windows of version 2 fingerprints, searched with each of a version 2 query's window
    codes (three radius searches), and every fingerprint's coarse code, searched only for
    version 1 fingerprints (a version 1 query, or stored version 1 entries).
    """

    def __init__(self, radius: int) -> None:
        """Candidates within ``radius`` (a :class:`FingerprintParams` ``coarse_radius``)."""
        self.radius = radius
        self._coarse = HammingIndex(max_radius=max(1, radius))
        self._windows = HammingIndex(max_radius=max(1, radius))

    def add(self, item: int, fingerprint: Fingerprint) -> None:
        """Index ``fingerprint`` under ``item`` (replacing what ``item`` had)."""
        self._coarse.add(item, fingerprint.coarse)
        key = fingerprint.window_key
        if key is None:
            self._windows.remove(item)
        else:
            self._windows.add(item, key)

    def add_codes(
        self, items: npt.ArrayLike, coarse: npt.ArrayLike, window_keys: npt.ArrayLike
    ) -> None:
        """Bulk :meth:`add` of version 2 fingerprints by their codes (one rebuild per index)."""
        self._coarse.add_many(items, coarse)
        self._windows.add_many(items, window_keys)

    def remove(self, item: int) -> None:
        """Forget ``item``; unknown items are ignored."""
        self._coarse.remove(item)
        self._windows.remove(item)

    def search(self, fingerprint: Fingerprint) -> list[tuple[int, int]]:
        """``(item, distance)`` within ``radius``, nearest first (ties by item)."""
        best: dict[int, int] = {}
        if fingerprint.windows:
            best = dict(self._windows.search_any(fingerprint.windows, self.radius))
            if len(self._windows) < len(self._coarse):  # version 1 entries are stored
                for item, distance in self._coarse.search(fingerprint.coarse, self.radius):
                    if item not in self._windows:
                        best[item] = distance
        else:
            best = dict(self._coarse.search(fingerprint.coarse, self.radius))
        return sorted(best.items(), key=lambda pair: (pair[1], pair[0]))

    def __len__(self) -> int:
        """Number of items indexed."""
        return len(self._coarse)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` is indexed."""
        return item in self._coarse

    def approx_bytes(self) -> int:
        """Estimated memory held by both indexes."""
        return self._coarse.approx_bytes() + self._windows.approx_bytes()


def _interp_taps(
    scale: float, offset: float, n: int, *, cubic: bool
) -> tuple[npt.NDArray[np.intp], FloatArray, npt.NDArray[np.bool_]]:
    """Source indices and weights per output sample of :func:`_interp_matrix` (4 or 2 taps)."""
    idx = (scale * _centres(n) + offset) * n - 0.5
    valid = (idx >= -0.5) & (idx <= n - 0.5)
    idx = np.minimum(np.maximum(idx, 0.0), n - 1.0)
    base = np.floor(idx)
    f = (idx - base)[:, None]
    taps = np.clip(base.astype(np.intp)[:, None] + _TAPS - 1, 0, n - 1)
    if cubic:
        f2 = f * f
        f3 = f2 * f
        weights = np.concatenate(
            (
                -0.5 * f3 + f2 - 0.5 * f,
                1.5 * f3 - 2.5 * f2 + 1,
                -1.5 * f3 + 2 * f2 + 0.5 * f,
                0.5 * f3 - 0.5 * f2,
            ),
            axis=1,
        )
    else:  # linear: the two middle taps
        taps = taps[:, 1:3]
        weights = np.concatenate((1 - f, f), axis=1)
    return taps, weights.astype(np.float32), valid


def _warp(
    s: FloatArray, params: tuple[float, float, float, float], *, cubic: bool = False
) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """``s`` resampled at the query positions of ``params`` (separable, 4 taps an axis).

    The same as ``my @ s @ mx.T`` with :func:`_interp_matrix`, without a dense matrix
    product (BLAS threads contend on a busy host for no gain at this size).
    """
    ax, bx, ay, by = params
    n = s.shape[0]
    ty, wy, vy = _interp_taps(ay, by, n, cubic=cubic)
    tx, wx, vx = _interp_taps(ax, bx, n, cubic=cubic)
    rows = s[ty[:, 0]] * wy[:, 0:1]
    for k in range(1, ty.shape[1]):
        rows += s[ty[:, k]] * wy[:, k : k + 1]
    warped = rows[:, tx[:, 0]] * wx[:, 0]
    for k in range(1, tx.shape[1]):
        warped += rows[:, tx[:, k]] * wx[:, k]
    return warped, vy, vx


def _refine(
    q: FloatArray, s: FloatArray, start: tuple[float, float, float, float], max_crop: float
) -> tuple[float, float, float, float]:
    """Gauss-Newton on (scale_x, offset_x, scale_y, offset_y) for sub-pixel alignment.

    Above 128 pixels a side, the residuals are sampled on every other row and column (the
    fit needs no more, and the normal equations cost a quarter).
    """
    n = q.shape[0]
    u = _centres(n).astype(np.float32)
    k = max(1, n // 128)
    p = np.array(start, dtype=np.float64)
    for _ in range(3):
        w, vy, vx = _warp(s, (p[0], p[1], p[2], p[3]))
        # The overlap is a rectangle; leave out the outermost ring of the thumbnail.
        rows = np.flatnonzero(vy[1:-1]) + 1
        cols = np.flatnonzero(vx[1:-1]) + 1
        if len(rows) < 2 or len(cols) < 2:
            break
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        ys, xs = slice(r0, r1, k), slice(c0, c1, k)
        sx = (w[ys, c0 + 1 : c1 + 1 : k] - w[ys, c0 - 1 : c1 - 1 : k]) * np.float32(0.5 * n / p[0])
        sy = (w[r0 + 1 : r1 + 1 : k, xs] - w[r0 - 1 : r1 - 1 : k, xs]) * np.float32(0.5 * n / p[2])
        r = (q[ys, xs] - w[ys, xs]).ravel()
        jac = np.stack(
            (
                (sx * u[xs][None, :]).ravel(),
                sx.ravel(),
                (sy * u[ys][:, None]).ravel(),
                sy.ravel(),
            ),
            axis=1,
        )
        hess = (jac.T @ jac).astype(np.float64)
        hess += np.eye(4) * (1e-3 * np.trace(hess) / 4 + 1e-9)
        gradient = (jac.T @ r).astype(np.float64)
        step = np.minimum(np.maximum(np.linalg.solve(hess, gradient), -0.02), 0.02)
        p += step
        p[[0, 2]] = np.minimum(np.maximum(p[[0, 2]], 1 - 2 * max_crop), 1 + 2 * max_crop)
        p[[1, 3]] = np.minimum(np.maximum(p[[1, 3]], -1.5 * max_crop), 1.5 * max_crop)
        if np.abs(step).max() < 1e-4:
            break
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def _at_common_resolution(
    q: FloatArray, s: FloatArray, q_source: tuple[int, int], s_source: tuple[int, int]
) -> tuple[FloatArray, FloatArray]:
    """Both thumbnails blurred, per axis, to the detail the smaller source had.

    A thumbnail resampled up from fewer than DETAIL pixels is blurred by the upsampling
    (a triangle DETAIL / pixels wide); its original, resampled down, is sharp. Comparing the
    two as they are counts every sharp edge as a difference; a Gaussian of matching width
    (0.4 x DETAIL / pixels) on both compares them at the resolution they share.
    """
    for axis, (a, b) in ((1, (q_source[0], s_source[0])), (0, (q_source[1], s_source[1]))):
        known = [v for v in (a, b) if v > 0]
        if not known or min(known) * 1.2 >= DETAIL:
            continue
        sigma = 0.4 * DETAIL / min(known)
        q, s = _blur(q, sigma, axis), _blur(s, sigma, axis)
    return q, s


def _blur(a: FloatArray, sigma: float, axis: int) -> FloatArray:
    """Gaussian blur of ``a`` along ``axis`` (the edge repeats beyond the border)."""
    radius = max(1, math.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    n = a.shape[axis]
    index = np.arange(n)
    out = np.zeros_like(a)
    for offset, weight in zip(range(-radius, radius + 1), taps.tolist(), strict=True):
        source = np.clip(index + offset, 0, n - 1)
        out += weight * (a[source] if axis == 0 else a[:, source])
    return out


def _detail_pixels(rgb: Image.Image, tolerance: float) -> tuple[FloatArray, tuple[int, int], int]:
    """The trimmed picture as a DETAIL x DETAIL luma thumbnail (float, 0-255), the size of
    the trimmed picture, and its whole-picture (coarse) code.

    The trim box is found on a copy box-reduced to about ``_TRIM_SIDE`` (JPEG noise
    averages out there); the thumbnail is resampled from a copy reduced only as far as
    keeps twice its resolution on the trimmed picture's shorter side, so a wide or tall
    meme keeps its captions' detail. The coarse code is computed as version 1 computed it
    (a 64x64 thumbnail of the reduced copy), so stored version 1 codes, and indexes of
    coarse codes alone, find the same candidates as before.
    """
    width, height = rgb.size
    factor = max(rgb.size) // _TRIM_SIDE
    small = rgb.reduce(factor) if factor > 1 else rgb
    left, top, right, bottom = trim_box(np.asarray(small, dtype=np.int16), tolerance)
    legacy = small.convert("L").resize(
        (THUMB, THUMB), Image.Resampling.BILINEAR, box=(left, top, right, bottom)
    )
    coarse = _dct_code(_shrink(np.asarray(legacy, dtype=np.float32), THUMB // _DCT_SIDE))
    sx, sy = width / small.width, height / small.height
    box = (left * sx, top * sy, min(width, right * sx), min(height, bottom * sy))
    shortest = min(box[2] - box[0], box[3] - box[1])
    factor = max(1, int(shortest // (2 * DETAIL)))
    work = rgb.reduce(factor) if factor > 1 else rgb
    fx, fy = work.width / width, work.height / height
    thumb = work.convert("L").resize(
        (DETAIL, DETAIL),
        Image.Resampling.BILINEAR,
        box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy),
    )
    source = (min(0xFFFF, round(box[2] - box[0])), min(0xFFFF, round(box[3] - box[1])))
    return np.asarray(thumb, dtype=np.float32), source, coarse


def _shrink(a: FloatArray, factor: int) -> FloatArray:
    """Mean over ``factor`` x ``factor`` blocks."""
    if factor <= 1:
        return a
    n = a.shape[0] // factor
    out: FloatArray = a.reshape(n, factor, n, factor).mean(axis=(1, 3), dtype=np.float32)
    return out


def _dct_code(pixels: FloatArray) -> int:
    """The 64-bit DCT code of a 32x32 thumbnail."""
    coefficients = (_DCT @ pixels @ _DCT.T)[_ZIG]
    bits = coefficients > np.median(coefficients)
    return sum(w for w, bit in zip(_BIT_WEIGHTS, bits.tolist(), strict=True) if bit)


def _window_codes(pixels: FloatArray) -> tuple[int, ...]:
    """DCT codes of the central windows of ``WINDOW_MARGINS``."""
    source = Image.fromarray(pixels)
    codes = []
    for margin in WINDOW_MARGINS:
        cut = margin * DETAIL
        window = source.resize(
            (_DCT_SIDE, _DCT_SIDE),
            Image.Resampling.BILINEAR,
            box=(cut, cut, DETAIL - cut, DETAIL - cut),
        )
        codes.append(_dct_code(np.asarray(window, dtype=np.float32)))
    return tuple(codes)


def _levels(pixels: FloatArray) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint(pixels * ((_LEVELS - 1) / 255.0)), 0, _LEVELS - 1).astype(np.uint8)


def _pack(pixels: FloatArray) -> bytes:
    flat = _levels(pixels).ravel()
    return zlib.compress(((flat[0::2] << 4) | flat[1::2]).tobytes(), 6)


def _nibbles(packed: npt.NDArray[np.uint8], side: int) -> FloatArray:
    levels = np.empty(side * side, dtype=np.float32)
    levels[0::2] = packed >> 4
    levels[1::2] = packed & 0x0F
    return (levels * (255.0 / (_LEVELS - 1))).reshape(side, side)


@lru_cache(maxsize=64)
def _unpack(detail: bytes) -> FloatArray:
    """A version 2 detail: the DETAIL x DETAIL thumbnail (read-only; the last 64 are kept:
    a stored entry is compared again and again); ``ValueError`` when corrupt."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(detail, _DETAIL_RAW_BYTES + 1)
    except zlib.error:
        raise ValueError("corrupt detail (not a zlib stream)") from None
    if len(raw) != _DETAIL_RAW_BYTES or not inflater.eof or inflater.unused_data:
        raise ValueError(f"detail must inflate to exactly {_DETAIL_RAW_BYTES} bytes")
    pixels = _nibbles(np.frombuffer(raw, dtype=np.uint8), DETAIL)
    pixels.flags.writeable = False
    return pixels


def _legacy_thumb(fingerprint: Fingerprint) -> FloatArray:
    """The 64x64 thumbnail of the version 1 check: stored as such, or reduced from 256."""
    if fingerprint.version == VERSION:
        # Version 1 resampled with PIL's (antialiased) bilinear filter; so does this.
        reduced = Image.fromarray(_unpack(fingerprint.detail)).resize(
            (THUMB, THUMB), Image.Resampling.BILINEAR
        )
        return np.asarray(reduced, dtype=np.float32)
    if len(fingerprint.detail) != _LEGACY_DETAIL_BYTES:
        raise ValueError(
            f"version 1 detail must be {_LEGACY_DETAIL_BYTES} bytes, got {len(fingerprint.detail)}"
        )
    return _nibbles(np.frombuffer(fingerprint.detail, dtype=np.uint8), THUMB)
