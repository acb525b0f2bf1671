"""Seeded near-duplicate transforms for the fingerprint benchmark and tests.

Each transform takes a PIL RGB image and a :class:`random.Random` and returns what the
service would hand to the fingerprinter: where an encoder is involved the bytes are
decoded again with :func:`serve_app.media.imaging.decode_image`, exactly as an upload is.
Every random choice comes from the ``rng`` argument, so a (seed, image) pair always
yields the same pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from PIL import Image, ImageDraw

from loadtest.corpus import cjk_font, encode
from serve_app.media.imaging import Limits, decode_image

Transform = Callable[[Image.Image, random.Random], Image.Image]

_LIMITS: Final[Limits] = Limits()
# Lossless round trips (after a resize or a crop) go through BMP: the same pixels as PNG,
# without seconds of deflate on a grainy photo-like picture.
_LOSSLESS: Final[str] = "BMP"
_RESAMPLERS: Final[tuple[Image.Resampling, ...]] = (
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)
_WATERMARKS: Final[tuple[str, ...]] = (
    "@memes_daily",
    "9GAG",
    "微博 @沙雕图",
    "imgflip.com",
    "抖音",
)


def round_trip(img: Image.Image, fmt: str, **params: object) -> Image.Image:
    """Encode ``img`` as ``fmt`` and decode it the way the service does."""
    return decode_image(encode(img, fmt, **params), _LIMITS).image


def _jpeg(quality: int) -> Transform:
    def apply(img: Image.Image, rng: random.Random) -> Image.Image:
        return round_trip(img, "JPEG", quality=quality)

    apply.__doc__ = f"JPEG at quality {quality}."
    return apply


def webp(img: Image.Image, rng: random.Random) -> Image.Image:
    """Lossy WebP at a random quality in 50..90."""
    return round_trip(img, "WEBP", quality=rng.randint(50, 90))


def _resize(factor: float) -> Transform:
    def apply(img: Image.Image, rng: random.Random) -> Image.Image:
        size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        return round_trip(img.resize(size, rng.choice(_RESAMPLERS)), _LOSSLESS)

    apply.__doc__ = f"Uniform resize by {factor} with a random resampling filter."
    return apply


def screenshot_rescale(img: Image.Image, rng: random.Random) -> Image.Image:
    """Downscale (0.55..0.9), then upscale with a slightly different factor per axis."""
    down = rng.uniform(0.55, 0.9)
    small = img.resize((round(img.width * down), round(img.height * down)), rng.choice(_RESAMPLERS))
    up = rng.uniform(0.9, 1.6)
    sx, sy = up * rng.uniform(0.97, 1.03), up * rng.uniform(0.97, 1.03)
    big = small.resize((round(img.width * sx), round(img.height * sy)), rng.choice(_RESAMPLERS))
    return round_trip(big, _LOSSLESS)


def border_pad(img: Image.Image, rng: random.Random) -> Image.Image:
    """A uniform border (white, black, grey or random colour), 2..12 % per side, as JPEG q90."""
    colour = rng.choice(
        [(255, 255, 255), (0, 0, 0), (128, 128, 128), tuple(rng.randrange(256) for _ in range(3))]
    )
    symmetric = rng.random() < 0.5
    base = rng.uniform(0.02, 0.12)
    sides = [base if symmetric else rng.uniform(0.02, 0.12) for _ in range(4)]
    left, top = round(sides[0] * img.width), round(sides[1] * img.height)
    right, bottom = round(sides[2] * img.width), round(sides[3] * img.height)
    canvas = Image.new("RGB", (img.width + left + right, img.height + top + bottom), colour)
    canvas.paste(img, (left, top))
    return round_trip(canvas, "JPEG", quality=90)


def _crop_axis(size: int, rng: random.Random, total: float) -> tuple[int, int]:
    """(start, end) along one axis after removing ``total`` of ``size``, split at random."""
    share = rng.random()
    start = round(total * share * size)
    return start, size - round(total * (1 - share) * size)


def crop_5pct(img: Image.Image, rng: random.Random) -> Image.Image:
    """Remove 1..5 % of each dimension in total, split at random between its two sides."""
    w, h = img.size
    left, right = _crop_axis(w, rng, rng.uniform(0.01, 0.05))
    top, bottom = _crop_axis(h, rng, rng.uniform(0.01, 0.05))
    return round_trip(img.crop((left, top, right, bottom)), _LOSSLESS)


def _each_side_box(
    img: Image.Image, rng: random.Random, low: float, high: float
) -> tuple[int, int, int, int]:
    """A crop box with ``low``..``high`` of the width/height off each side, drawn in turn."""
    w, h = img.size
    return (
        round(rng.uniform(low, high) * w),
        round(rng.uniform(low, high) * h),
        w - round(rng.uniform(low, high) * w),
        h - round(rng.uniform(low, high) * h),
    )


def crop_5pct_each_side(img: Image.Image, rng: random.Random) -> Image.Image:
    """Crop each side independently by 0..5 % (≤ 10 % per axis)."""
    return round_trip(img.crop(_each_side_box(img, rng, 0, 0.05)), _LOSSLESS)


def crop_2to5pct_each_side(img: Image.Image, rng: random.Random) -> Image.Image:
    """Each side cropped independently by 2..5 % (4..10 % per axis), saved as JPEG q85.

    What a re-shared screenshot of a meme looks like: a few percent gone on every side,
    then one more lossy encoding.
    """
    return round_trip(img.crop(_each_side_box(img, rng, 0.02, 0.05)), "JPEG", quality=85)


def corner_watermark(img: Image.Image, rng: random.Random) -> Image.Image:
    """Semi-transparent text (≤ 20 % of the width) or logo in a random corner, as JPEG q90."""
    w, h = img.size
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = rng.randint(90, 180)
    colour = rng.choice([(255, 255, 255), (0, 0, 0), (255, 220, 0)])
    margin = round(min(w, h) * 0.015)
    if rng.random() < 0.6:
        text = rng.choice(_WATERMARKS)
        size = max(10, round(h * rng.uniform(0.025, 0.04)))
        font = cjk_font(size)
        # Keep the mark small: at most ~20 % of the width.
        while size > 10 and draw.textlength(text, font=font) > 0.2 * w:
            size -= 1
            font = cjk_font(size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        mark_w, mark_h = right - left, bottom - top
        x = margin if rng.random() < 0.5 else w - mark_w - margin
        y = margin if rng.random() < 0.5 else h - mark_h - margin
        draw.text((x - left, y - top), text, font=font, fill=(*colour, alpha))
    else:
        side = round(min(w, h) * rng.uniform(0.06, 0.1))
        x = margin if rng.random() < 0.5 else w - side - margin
        y = margin if rng.random() < 0.5 else h - side - margin
        draw.rounded_rectangle(
            (x, y, x + side, y + side), radius=side // 4, fill=(*colour, alpha // 2)
        )
        draw.ellipse(
            (x + side // 4, y + side // 4, x + 3 * side // 4, y + 3 * side // 4),
            fill=(*colour, alpha),
        )
    out = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    return round_trip(out, "JPEG", quality=90)


def gif_reencode(img: Image.Image, rng: random.Random) -> Image.Image:
    """Saved as a still GIF (256-colour palette quantisation), decoded back."""
    return round_trip(img, "GIF")


TRANSFORMS: Final[dict[str, Transform]] = {
    "jpeg_q30": _jpeg(30),
    "jpeg_q60": _jpeg(60),
    "jpeg_q95": _jpeg(95),
    "webp": webp,
    "gif_reencode": gif_reencode,
    "resize_0.3": _resize(0.3),
    "resize_0.5": _resize(0.5),
    "resize_2.0": _resize(2.0),
    "screenshot_rescale": screenshot_rescale,
    "border_pad": border_pad,
    "crop_5pct": crop_5pct,
    "crop_5pct_each_side": crop_5pct_each_side,
    "crop_2to5pct_each_side": crop_2to5pct_each_side,
    "corner_watermark": corner_watermark,
}

# Report groups: the benchmark prints per transform and per group.
GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "re-encode": ("jpeg_q30", "jpeg_q60", "jpeg_q95", "webp", "gif_reencode"),
    "rescale": ("resize_0.3", "resize_0.5", "resize_2.0", "screenshot_rescale"),
    "geometry": ("border_pad", "crop_5pct", "crop_5pct_each_side", "crop_2to5pct_each_side"),
    "overlay": ("corner_watermark",),
}

# Transforms that remove content at the edges, held to the lower recall target (≥ 0.9);
# the benchmark also checks that a cropped copy of one caption never matches another
# caption's original, both ways round.
CROP_TRANSFORMS: Final[frozenset[str]] = frozenset(
    {"crop_5pct", "crop_5pct_each_side", "crop_2to5pct_each_side"}
)
CROPPING_TRANSFORMS: Final[frozenset[str]] = CROP_TRANSFORMS
# Left out of the load tests' repeat mixes (``loadtest.locustfile``, ``loadtest.bench_latency``)
# so that their figures stay comparable with earlier runs; ``make bench-dedupe`` holds them
# to the crop target like the others.
INFORMATIVE_TRANSFORMS: Final[frozenset[str]] = frozenset(
    {"crop_5pct_each_side", "crop_2to5pct_each_side"}
)


def apply(name: str, img: Image.Image, seed: int) -> Image.Image:
    """Apply transform ``name`` to ``img`` with its own ``random.Random(seed)``."""
    return TRANSFORMS[name](img, random.Random(f"{name}:{seed}"))
