"""Seeded synthetic memes: a drawn "template" plus Chinese captions in a CJK font.

Tests, benchmarks and load tests share this generator so that every figure is
reproducible from a seed and no image is ever downloaded. Drawing needs Debian's
``fonts-wqy-microhei`` (``make system-deps`` installs it).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
)

# Captions as they appear on real memes; most carry a lexicon cue.
CAPTIONS: tuple[str, ...] = (
    "你说得对，但是",
    "破防了",
    "笑死我了",
    "绝绝子",
    "蚌埠住了",
    "我真的会谢",
    "就这？",
    "摆烂了",
    "前方高能",
    "尊嘟假嘟",
    "泰裤辣",
    "芭比Q了",
    "社死现场",
    "急了急了",
    "退钱！客服呢",
    "今天也要加油",
)


class FontMissing(RuntimeError):
    """No CJK font is installed; run ``make system-deps``."""


@lru_cache(maxsize=8)
def cjk_font(size: int) -> ImageFont.FreeTypeFont:
    """The first installed CJK font at ``size`` px."""
    for path in FONT_CANDIDATES:
        if path.exists():
            return ImageFont.truetype(str(path), size)
    raise FontMissing(
        "no CJK font found (looked for "
        + ", ".join(str(p) for p in FONT_CANDIDATES)
        + "); install Debian's fonts-wqy-microhei, e.g. `make system-deps`"
    )


@dataclass(frozen=True)
class MemeSpec:
    """What to draw: a template seed and the captions."""

    template: int
    top: str = ""
    bottom: str = ""
    size: tuple[int, int] = (600, 600)


def draw_template(seed: int, size: tuple[int, int] = (600, 600)) -> Image.Image:
    """A reproducible picture standing in for a meme template (shapes on a gradient)."""
    rng = random.Random(seed)
    width, height = size
    base = Image.new("RGB", size)
    draw = ImageDraw.Draw(base)
    c1 = [rng.randrange(60, 230) for _ in range(3)]
    c2 = [rng.randrange(60, 230) for _ in range(3)]
    for y in range(height):
        t = y / max(1, height - 1)
        draw.line(
            [(0, y), (width, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True)),
        )
    for _ in range(rng.randrange(3, 7)):
        x0, y0 = rng.randrange(0, width - 40), rng.randrange(height // 6, height - 160)
        x1 = min(width, x0 + rng.randrange(60, 260))
        y1 = min(height, y0 + rng.randrange(60, 220))
        colour = tuple(rng.randrange(0, 256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(20, 20, 20), width=3)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(20, 20, 20), width=3)
    return base


def _caption(draw: ImageDraw.ImageDraw, text: str, width: int, y: int, max_size: int) -> None:
    size = max_size
    font = cjk_font(size)
    while size > 14 and draw.textlength(text, font=font) > width * 0.9:
        size -= 4
        font = cjk_font(size)
    x = (width - draw.textlength(text, font=font)) / 2
    draw.text(
        (x, y),
        text,
        font=font,
        fill=(255, 255, 255),
        stroke_width=max(2, size // 12),
        stroke_fill=(0, 0, 0),
    )


def draw_meme(spec: MemeSpec) -> Image.Image:
    """Template plus top and bottom captions, white text with a black outline."""
    img = draw_template(spec.template, spec.size)
    draw = ImageDraw.Draw(img)
    width, height = spec.size
    caption_size = max(24, height // 11)
    if spec.top:
        _caption(draw, spec.top, width, int(height * 0.04), caption_size)
    if spec.bottom:
        _caption(draw, spec.bottom, width, int(height * 0.96) - caption_size - 8, caption_size)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """Encode ``img`` (``fmt`` one of PNG, JPEG, WEBP, GIF, BMP)."""
    buffer = io.BytesIO()
    image = img.convert("RGB") if fmt.upper() in ("JPEG", "BMP") else img
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def meme_bytes(spec: MemeSpec, fmt: str = "PNG", **params: object) -> bytes:
    """Draw and encode one meme."""
    return encode(draw_meme(spec), fmt, **params)


def corpus(count: int, seed: int = 0) -> list[MemeSpec]:
    """``count`` distinct meme specs, reproducible from ``seed``."""
    rng = random.Random(seed)
    specs = []
    for i in range(count):
        specs.append(
            MemeSpec(
                template=seed * 100_003 + i, top=rng.choice(CAPTIONS), bottom=rng.choice(CAPTIONS)
            )
        )
    return specs


def payloads(count: int, seed: int) -> list[bytes]:
    """``count`` distinct JPEG (q88) memes from a seeded corpus."""
    return [meme_bytes(spec, "JPEG", quality=88) for spec in corpus(count, seed=seed)]
