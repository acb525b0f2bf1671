"""Odd and hostile image bytes built in memory for the imaging tests."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``x``height`` with a tiny compressed payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # A few rows of zeros compress to almost nothing: the classic bomb shape.
    idat = zlib.compress(b"\x00" * (1 + width * 3) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose logical screen and frame claim ``width``x``height``."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02\x02\x44\x01\x00"
    return header + image + lzw + b"\x3b"


def encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def animated(frames: int, size: tuple[int, int] = (64, 48), fmt: str = "GIF") -> bytes:
    """An animation whose frame i is filled with grey level (i * 37) % 256."""
    images = [Image.new("RGB", size, ((i * 37) % 256,) * 3) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=40, loop=0)
    return buffer.getvalue()
