"""Safe image intake: identify by content, bound the work, decode, normalise, resize.

Nothing here trusts a file name or a declared content type. The order of checks is
the point: magic bytes first (415 for anything that is not an allowed raster type),
then the header's dimensions and frame count (413 before a single pixel is
decoded), then the decode itself (400 for truncated or corrupt data).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType

logger = logging.getLogger(__name__)

ALLOWED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")

# GLM-4.xV geometry: 14-px patches merged 2x2, so one visual token covers 28x28 px.
PATCH_FACTOR: Final[int] = 28
MIN_VISUAL_TOKENS: Final[int] = 8

# Animated frames are shrunk before tiling so the tile never exceeds this many pixels.
_TILE_PIXEL_CAP: Final[int] = 4_000_000

_REFUSED_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x1f\x8b", "gzip"),
    (b"\x7fELF", "executable"),
    (b"MZ", "executable"),
)


@dataclass(frozen=True)
class DecodedImage:
    """A validated, decoded image normalised to RGB.

    ``image`` is the still image, or for animations a grid of evenly sampled frames.
    ``width``/``height`` describe the upload (after EXIF rotation), not the grid.
    """

    image: Image.Image
    format: str
    width: int
    height: int
    frames: int


@dataclass(frozen=True)
class Limits:
    """The bounds :func:`decode_image` enforces (mirrors ``LimitsArgs``)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_frames: int = 2000
    max_aspect_ratio: float = 200.0
    sampled_frames: int = 4


def sniff_format(data: bytes) -> str:
    """Return the allowed format the bytes really are, or raise a client error.

    Raises :class:`BadInput` for empty input and :class:`UnsupportedMediaType`
    for everything that is not JPEG, PNG, GIF, WebP or BMP, naming what it looks like.
    """
    if not data:
        raise BadInput("the image is empty (0 bytes)")
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    raise UnsupportedMediaType(
        f"not an allowed image type ({describe_refused(data)}); "
        f"allowed: {', '.join(ALLOWED_FORMATS)}"
    )


def describe_refused(data: bytes) -> str:
    """Best-effort name of what a refused payload looks like, for the error message."""
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            return name
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "HEIF/AVIF/MP4 container"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<?xml") or b"<svg" in head:
        return "SVG" if b"<svg" in data[:4096].lower() else "XML"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "HTML"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text"


def probe_image(data: bytes, limits: Limits) -> str:
    """Check what the bytes and the header say, without decoding; the format.

    The refusals of :func:`decode_image` that need no pixel data: size in bytes, type
    by content, dimensions (pixels, aspect ratio, a GIF's frames' extent), a header
    that cannot be read. Cheap enough to run before a stream opens.
    """
    fmt, img = _open_checked(data, limits)
    img.close()
    return fmt


def _open_checked(data: bytes, limits: Limits) -> tuple[str, Image.Image]:
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = sniff_format(data)
    with _client_errors(fmt, limits):
        img: Image.Image = Image.open(BytesIO(data), formats=[fmt])
        width, height = img.size
        _check_dimensions(width, height, limits)
        if fmt == "GIF":
            # Pillow grows a GIF's canvas to a later frame's extent only when it seeks
            # (decoding as it goes): bound every frame's extent before that happens.
            _check_dimensions(*_gif_canvas(data, width, height), limits)
    return fmt, img


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def _client_errors(fmt: str, limits: Limits) -> Iterator[None]:
    """Pillow's failures on hostile or broken input, as the client errors they are."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (PayloadTooLarge, BadInput, UnsupportedMediaType):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses huge headers before we see the size; say it in our limit's terms.
        found = _BOMB_PIXELS.search(str(exc))
        size = f"{int(found.group(1))} pixels" if found else "larger than allowed"
        raise PayloadTooLarge(f"image is {size}; the limit is {limits.max_pixels}") from None
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        KeyError,
        struct.error,
    ) as exc:
        raise BadInput(f"corrupt or truncated {fmt} image: {_short(exc)}") from None
    except MemoryError:
        raise PayloadTooLarge("image needs more memory to decode than allowed") from None


def decode_image(data: bytes, limits: Limits) -> DecodedImage:
    """Validate and decode ``data`` into an RGB image within ``limits``.

    Raises :class:`PayloadTooLarge` (bytes, pixels, frames), :class:`UnsupportedMediaType`
    (not an allowed type) or :class:`BadInput` (truncated, corrupt, extreme shape).
    """
    fmt, img = _open_checked(data, limits)
    width, height = img.size
    with _client_errors(fmt, limits):
        frames = _frame_count(img)
        if frames > limits.max_frames:
            raise PayloadTooLarge(
                f"animation has {frames} frames; the limit is {limits.max_frames}"
            )
        if frames > 1:
            rgb = _sample_frames(img, frames, limits.sampled_frames)
        else:
            img.load()
            img = _apply_exif_orientation(img)
            width, height = img.size
            rgb = to_rgb(img)
    return DecodedImage(image=rgb, format=fmt, width=width, height=height, frames=frames)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_dimensions(width: int, height: int, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise BadInput(f"image has an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise BadInput(f"image aspect ratio {ratio:.0f}:1 exceeds {limits.max_aspect_ratio:.0f}:1")


def _gif_canvas(data: bytes, width: int, height: int) -> tuple[int, int]:
    """The canvas a GIF decoder ends up with: the screen grown to every frame's extent.

    Walks the block structure (descriptors and sub-block lengths only, no pixel data);
    a malformed or truncated structure ends the walk (the decode reports it).
    """
    pos = 13
    if len(data) > 10 and data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C and pos + 10 <= len(data):
            x, y, w, h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, x + w), max(height, y + h)
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1
        elif block == 0x21:
            pos += 2
        else:
            break
        while pos < len(data) and data[pos]:  # data sub-blocks, to the zero terminator
            pos += data[pos] + 1
        pos += 1
    return width, height


def _frame_count(img: Image.Image) -> int:
    # For GIF this walks the block structure without decoding pixel data.
    return max(1, int(getattr(img, "n_frames", 1)))


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception as exc:  # a malformed EXIF block must not fail the image
        logger.info("ignoring unreadable EXIF orientation: %s", _short(exc))
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images: scale the used range to 0..255."""
    arr = np.asarray(img).astype(np.float64)
    if arr.size == 0:
        raise BadInput("image has no pixels")
    low = float(np.nanmin(arr)) if img.mode == "F" else 0.0
    high = float(np.nanmax(arr))
    if img.mode.startswith("I;16"):
        high = 65535.0
    elif high <= 255.0 and img.mode != "F":
        high = 255.0
    span = max(high - low, 1e-9)
    scaled = np.nan_to_num((arr - low) / span * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def _sample_frames(img: Image.Image, frames: int, wanted: int) -> Image.Image:
    """Evenly sample up to ``wanted`` frames and tile them into one RGB grid."""
    count = min(wanted, frames)
    if count == 1:
        indices = [frames // 2]
    else:
        indices = sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)})
    width, height = img.size
    per_frame_cap = _TILE_PIXEL_CAP // len(indices)
    scale = min(1.0, math.sqrt(per_frame_cap / (width * height)))
    tile_w, tile_h = max(1, int(width * scale)), max(1, int(height * scale))
    tiles: list[Image.Image] = []
    for index in indices:
        img.seek(index)
        frame = to_rgb(img.convert("RGBA"))
        if frame.size != (tile_w, tile_h):
            frame = frame.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
        tiles.append(frame)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * tile_w, rows * tile_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * tile_w, (i // cols) * tile_h))
    return grid


def glm_target_size(width: int, height: int, max_tokens: int) -> tuple[int, int]:
    """Size (w, h) with both sides multiples of 28 and at most ``max_tokens`` visual tokens.

    Same geometry as GLM-4.xV's processor (tokens = (h/28)*(w/28), aspect ratio kept),
    but the budget is a hard bound: the processor then leaves the image as it is.
    """
    f = PATCH_FACTOR
    max_tokens = max(max_tokens, MIN_VISUAL_TOKENS)
    h_bar = max(f, round(height / f) * f)
    w_bar = max(f, round(width / f) * f)
    if (h_bar // f) * (w_bar // f) > max_tokens:
        beta = math.sqrt(height * width / (max_tokens * f * f))
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif (h_bar // f) * (w_bar // f) < MIN_VISUAL_TOKENS:
        beta = math.sqrt(MIN_VISUAL_TOKENS * f * f / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    # Extreme aspect ratios can still overshoot after flooring: trim the long side.
    while (h_bar // f) * (w_bar // f) > max_tokens:
        if w_bar >= h_bar:
            w_bar -= f
        else:
            h_bar -= f
    return w_bar, h_bar


def visual_tokens(width: int, height: int) -> int:
    """GLM visual tokens of an image whose sides are multiples of 28."""
    return (width // PATCH_FACTOR) * (height // PATCH_FACTOR)


def resize_to_budget(img: Image.Image, max_tokens: int) -> Image.Image:
    """Resize ``img`` to the GLM geometry within ``max_tokens`` visual tokens."""
    target = glm_target_size(img.width, img.height, max_tokens)
    if target == img.size:
        return img
    return img.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)


def pixel_key(img: Image.Image) -> str:
    """Content hash of decoded pixels: equal for byte-different encodings of one bitmap."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


THUMBNAIL_SIDE: Final[int] = 128


def thumbnail_jpeg(image: Image.Image, side: int = THUMBNAIL_SIDE, quality: int = 70) -> bytes:
    """A small JPEG of a decoded image (longer side ``side``), for the moderators' page."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = BytesIO()
    small.save(out, format="JPEG", quality=quality)
    return out.getvalue()
