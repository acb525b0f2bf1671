"""Drawing kit for the benchmark's meme generators: fonts, photo-like fields, caption styles.

:mod:`loadtest.corpus` draws one house style (shapes on a gradient, CJK captions with a
black outline at top and bottom). The generators of :mod:`loadtest.generators` and
:mod:`loadtest.heldout_memes` draw memes unlike it, with the pieces here:

* fonts: DejaVu (Debian's ``fonts-dejavu-core``, and ``fonts-dejavu-extra`` for the
  condensed cut; ``make system-deps``) in several cuts, the CJK font of
  :mod:`loadtest.corpus`, and Pillow's built-in scalable font (always there); a DejaVu cut
  that is not installed falls back to the built-in one with a warning, so the generators
  run anywhere, if with fewer styles (and other pixels: benchmark figures then differ);
* :func:`photo_field`: "real photo" statistics — a 1/f blurred random field, soft-edged
  shapes, one hard edge (a horizon or an object) and sensor grain;
* :func:`draw_text`: a caption wrapped and shrunk into a box, with or without an outline,
  on a plate or bare.

Every random choice comes from the ``random.Random`` passed in, so a seed always draws the
same pixels.
"""

from __future__ import annotations

import colorsys
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from loadtest.corpus import cjk_font

logger = logging.getLogger(__name__)

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Layout:
    """A template's caption slots: one pool of candidate captions per slot."""

    pools: tuple[tuple[str, ...], ...]


_DEJAVU: Final[Path] = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES: Final[dict[str, str]] = {
    "sans": "DejaVuSans.ttf",
    "sans_bold": "DejaVuSans-Bold.ttf",
    "condensed_bold": "DejaVuSansCondensed-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif_bold": "DejaVuSerif-Bold.ttf",
    "mono_bold": "DejaVuSansMono-Bold.ttf",
}
# Styles that need no file: Pillow's built-in scalable font and the CJK font.
FONT_STYLES: Final[tuple[str, ...]] = (*FONT_FILES, "builtin", "cjk")


@lru_cache(maxsize=256)
def font(style: str, size: int) -> ImageFont.FreeTypeFont:
    """``style`` (one of :data:`FONT_STYLES`) at ``size`` px; a missing DejaVu file falls back."""
    if style == "cjk":
        return cjk_font(size)
    path = _DEJAVU / FONT_FILES.get(style, "")
    if style in FONT_FILES:
        if path.exists():
            return ImageFont.truetype(str(path), size)
        _warn_missing(path)
    builtin = ImageFont.load_default(size)
    assert isinstance(builtin, ImageFont.FreeTypeFont), "Pillow without FreeType"
    return builtin


@cache
def _warn_missing(path: Path) -> None:
    """Say once per file that a cut is drawn with the built-in font instead."""
    logger.warning(
        "%s not found (make system-deps installs it): drawing with Pillow's built-in font",
        path,
    )


def needs_cjk(text: str) -> bool:
    """Whether ``text`` has characters outside Latin-1 (DejaVu has no CJK glyphs)."""
    return any(ord(ch) > 0x2FF for ch in text)


def font_for(text: str, style: str, size: int) -> ImageFont.FreeTypeFont:
    """``style`` at ``size``, or the CJK font when ``text`` needs it."""
    return font("cjk" if needs_cjk(text) else style, size)


# ---------------------------------------------------------------- photo-like pictures


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Unit-variance noise on a ``cells``-wide grid, bicubically upsampled to ``size``."""
    width, height = size
    cw = max(2, cells)
    ch = max(2, round(cells * height / width))
    low = rng.standard_normal((ch, cw)).astype(np.float32)
    up = Image.fromarray(low, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def fractal_field(
    rng: np.random.Generator, size: tuple[int, int], octaves: Sequence[int], slope: float = 1.0
) -> np.ndarray:
    """A 1/f^slope random field (H, W) in about [-1, 1]: octaves of smooth noise."""
    total = np.zeros((size[1], size[0]), dtype=np.float32)
    norm = 0.0
    for cells in octaves:
        weight = (octaves[0] / cells) ** slope
        total += weight * _smooth_noise(rng, size, cells)
        norm += weight * weight
    out: np.ndarray = total / (2.5 * np.sqrt(norm))
    return out


def _palette(rng: random.Random) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two base colours and a tint, as float32 RGB."""
    hue = rng.random()
    base = [hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.9))]
    base.append(hsv(hue + rng.uniform(0.15, 0.5), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.8)))
    tint = hsv(hue + 0.5, rng.uniform(0.3, 0.8), 1.0)
    return (
        np.array(base[0], dtype=np.float32),
        np.array(base[1], dtype=np.float32),
        np.array(tint, dtype=np.float32),
    )


def hsv(h: float, s: float, v: float) -> Colour:
    """An RGB colour from hue (wraps), saturation and value in [0, 1] (clamped)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(1.0, max(0.0, s)), min(1.0, max(0.0, v)))
    return round(r * 255), round(g * 255), round(b * 255)


def photo_field(rng: random.Random, size: tuple[int, int], *, grain: float = 4.0) -> Image.Image:
    """A picture with photo statistics: 1/f colour field, soft subjects, a hard edge, grain."""
    nrng = np.random.default_rng(rng.getrandbits(64))
    width, height = size
    c1, c2, tint = _palette(rng)
    # Sky/ground split at a random height along a tilted line: one hard edge.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.3, 0.75) + (xx - width / 2) * rng.uniform(-0.25, 0.25)
    below = (yy > horizon).astype(np.float32)
    t = yy / max(1, height - 1)
    img = (
        c1[None, None, :] * (1 - t)[..., None] * (1 - below)[..., None]
        + c2[None, None, :] * below[..., None]
    )
    img += 0.5 * c2[None, None, :] * t[..., None] * (1 - below)[..., None]
    lum = fractal_field(nrng, size, (3, 6, 12, 24, 48, 96), slope=rng.uniform(0.8, 1.3))
    chroma = fractal_field(nrng, size, (2, 4, 8), slope=1.0)
    img += rng.uniform(45, 80) * lum[..., None]
    img += rng.uniform(15, 35) * chroma[..., None] * (tint[None, None, :] / 255.0 - 0.5)
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    # Soft-edged subjects (out-of-focus blobs) and one sharp object, shaded by one field.
    shade = fractal_field(nrng, size, (4, 8, 16), slope=1.0)
    for i in range(rng.randrange(2, 5)):
        w = round(width * rng.uniform(0.12, 0.4))
        h = round(height * rng.uniform(0.12, 0.45))
        x0 = rng.randrange(-w // 4, width - w // 2)
        y0 = rng.randrange(height // 8, height - h // 2)
        mask = Image.new("L", size, 0)
        md = ImageDraw.Draw(mask)
        if rng.random() < 0.6:
            md.ellipse((x0, y0, x0 + w, y0 + h), fill=255)
        else:
            md.rounded_rectangle((x0, y0, x0 + w, y0 + h), radius=min(w, h) // 3, fill=255)
        sharp = i == 0
        mask = mask.filter(ImageFilter.GaussianBlur(1.0 if sharp else rng.uniform(3, 12)))
        colour = np.array(hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95)))
        fill = np.clip(colour[None, None, :] + 50 * shade[..., None], 0, 255).astype(np.uint8)
        picture = Image.composite(Image.fromarray(fill, "RGB"), picture, mask)
    # Vignette and grain.
    arr = np.asarray(picture, dtype=np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    arr *= (1 - rng.uniform(0.0, 0.6) * r2)[..., None]
    arr += nrng.normal(0, grain, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- captions


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, fnt: ImageFont.FreeTypeFont, width: float
) -> list[str]:
    """Greedy line wrap by words (by characters for CJK text)."""
    units: list[str] = list(text) if needs_cjk(text) else text.split(" ")
    joiner = "" if needs_cjk(text) else " "
    lines: list[str] = []
    current = ""
    for unit in units:
        trial = unit if not current else current + joiner + unit
        if current and draw.textlength(trial, font=fnt) > width:
            lines.append(current)
            current = unit
        else:
            current = trial
    if current:
        lines.append(current)
    return lines


def draw_text(
    img: Image.Image,
    text: str,
    box: tuple[int, int, int, int],
    *,
    style: str,
    size: int,
    fill: Colour = (255, 255, 255),
    stroke: Colour | None = (0, 0, 0),
    align: str = "center",
    valign: str = "center",
    max_lines: int = 2,
    plate: tuple[int, int, int, int] | None = None,
    shadow: bool = False,
    min_size: int = 12,
) -> tuple[int, int, int, int]:
    """Draw ``text`` wrapped into ``box`` (shrunk until it fits ``max_lines``); its bbox.

    ``plate`` is an RGBA colour drawn behind the text (a caption box); ``shadow`` a soft
    drop shadow instead of an outline.
    """
    left, top, right, bottom = box
    draw = ImageDraw.Draw(img)
    width, height = right - left, bottom - top
    while True:
        fnt = font_for(text, style, size)
        lines = _wrap(draw, text, fnt, width)
        line_h = round(size * 1.18)
        widest = max((draw.textlength(line, font=fnt) for line in lines), default=0)
        if size <= min_size or (
            len(lines) <= max_lines and line_h * len(lines) <= height and widest <= width
        ):
            break
        size = max(min_size, size - max(1, size // 10))
    block_h = line_h * len(lines)
    y = (
        top
        if valign == "top"
        else bottom - block_h
        if valign == "bottom"
        else top + (height - block_h) // 2
    )
    stroke_w = max(1, size // 14) if stroke is not None else 0
    placed: list[tuple[float, int, str]] = []
    for i, line in enumerate(lines):
        lw = draw.textlength(line, font=fnt)
        x = left if align == "left" else right - lw if align == "right" else left + (width - lw) / 2
        placed.append((x, y + i * line_h, line))
    x0 = round(min(p[0] for p in placed)) - stroke_w
    x1 = round(max(p[0] + draw.textlength(p[2], font=fnt) for p in placed)) + stroke_w
    bbox = (x0, y - stroke_w, x1, y + block_h + stroke_w)
    if plate is not None:
        pad = max(4, size // 3)
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ImageDraw.Draw(layer).rounded_rectangle(
            (bbox[0] - pad, bbox[1] - pad // 2, bbox[2] + pad, bbox[3] + pad // 2),
            radius=pad,
            fill=plate,
        )
        img.paste(Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB"))
        draw = ImageDraw.Draw(img)
    if shadow:
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        sd = ImageDraw.Draw(layer)
        offset = max(2, size // 12)
        for x, yy, line in placed:
            sd.text((x + offset, yy + offset), line, font=fnt, fill=(0, 0, 0, 200))
        layer = layer.filter(ImageFilter.GaussianBlur(max(1.5, size / 16)))
        img.paste(Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB"))
        draw = ImageDraw.Draw(img)
    for x, yy, line in placed:
        if stroke is None:
            draw.text((x, yy), line, font=fnt, fill=fill)
        else:
            draw.text((x, yy), line, font=fnt, fill=fill, stroke_width=stroke_w, stroke_fill=stroke)
    return bbox


def flat_cartoon(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A flat illustration: solid or two-tone background, outlined shapes, a stick figure."""
    width, height = size
    bg = hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.6, 1.0))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.6:
        floor = round(height * rng.uniform(0.55, 0.8))
        draw.rectangle((0, floor, width, height), fill=hsv(rng.random(), 0.4, 0.6))
    outline = (25, 25, 25)
    line_w = max(2, min(width, height) // 60)
    for _ in range(rng.randrange(2, 5)):
        w = round(width * rng.uniform(0.15, 0.45))
        h = round(height * rng.uniform(0.15, 0.45))
        x0, y0 = rng.randrange(0, max(1, width - w)), rng.randrange(0, max(1, height - h))
        colour = hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0))
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour, outline=outline, width=line_w)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour, outline=outline, width=line_w)
        else:
            pts = [(x0 + w // 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
            draw.polygon(pts, fill=colour, outline=outline, width=line_w)
    # A stick figure: head and limbs.
    cx = rng.randrange(width // 5, 4 * width // 5)
    head = max(6, min(width, height) // 12)
    top = rng.randrange(height // 8, max(height // 8 + 1, height // 2))
    draw.ellipse(
        (cx - head, top, cx + head, top + 2 * head),
        fill=(250, 220, 190),
        outline=outline,
        width=line_w,
    )
    body = top + 2 * head
    draw.line((cx, body, cx, body + 3 * head), fill=outline, width=line_w)
    draw.line((cx - 2 * head, body + head, cx + 2 * head, body + head), fill=outline, width=line_w)
    draw.line((cx, body + 3 * head, cx - head, body + 5 * head), fill=outline, width=line_w)
    draw.line((cx, body + 3 * head, cx + head, body + 5 * head), fill=outline, width=line_w)
    return img
