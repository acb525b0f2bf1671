"""Imaging: content sniffing, limits, decoding errors, modes, animation, EXIF, geometry."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from serve_app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from serve_app.media.imaging import (
    MIN_VISUAL_TOKENS,
    Limits,
    decode_image,
    glm_target_size,
    pixel_key,
    resize_to_budget,
    sniff_format,
    to_rgb,
    visual_tokens,
)
from tests.support.memes import animated, encoded, gif_header_only, png_header_only

LIMITS = Limits()
RGB = Image.new("RGB", (40, 30), (200, 30, 30))


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {})],
)
def test_allowed_formats_are_recognised_and_decoded(fmt: str, params: dict[str, object]) -> None:
    data = encoded(RGB, fmt, **params)
    assert sniff_format(data) == fmt
    decoded = decode_image(data, LIMITS)
    assert decoded.format == fmt
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height, decoded.frames) == (40, 30, 1)


SVG_XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&xxe;</text></svg>'
)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (SVG_XXE, "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"<?xml version='1.0'?><root/>", "XML"),
        (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "HTML"),
        (b"\xef\xbb\xbf  <html><script>alert(1)</script></html>", "HTML"),
        (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00", "ZIP"),
        (b"just some text, renamed to meme.jpg", "text"),
        (bytes(range(7, 250)) * 3, "unrecognised"),
        (encoded(RGB, "TIFF"), "TIFF"),
        (b"\x7fELF\x02\x01\x01", "executable"),
    ],
)
def test_refused_types_get_415_naming_what_they_are(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(data, LIMITS)
    assert info.value.status == 415
    assert named.lower() in info.value.message.lower()


def test_empty_input_is_400() -> None:
    with pytest.raises(BadInput) as info:
        decode_image(b"", LIMITS)
    assert info.value.status == 400


def test_byte_limit_is_413_before_sniffing() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(b"\x00" * 2048, Limits(max_bytes=1024))
    assert info.value.status == 413


@pytest.mark.parametrize(
    "data",
    [png_header_only(65535, 65535), gif_header_only(65535, 65535), png_header_only(8000, 6000)],
)
def test_pixel_bombs_are_413_from_the_header(data: bytes) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(data, LIMITS)
    assert "pixels" in info.value.message


def test_too_many_frames_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="frames"):
        decode_image(animated(12), Limits(max_frames=10))


def test_extreme_aspect_ratio_is_400() -> None:
    with pytest.raises(BadInput, match="aspect ratio"):
        decode_image(encoded(Image.new("RGB", (2010, 10)), "PNG"), LIMITS)


def _truncated_jpeg() -> bytes:
    noisy = Image.effect_noise((256, 256), 60).convert("RGB")
    data = encoded(noisy, "JPEG", quality=90)
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = bytearray(encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = b"\xff" * 40
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        _truncated_jpeg(),
        _corrupt_png(),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        b"GIF89a<html><script>alert(1)</script></html>",
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8,
        b"BM" + b"\xff" * 40,
        b"\xff\xd8\xff\xe0" + b"\x00" * 20,
    ],
    ids=[
        "truncated-jpeg",
        "corrupt-png",
        "png-no-ihdr",
        "gif-html-polyglot",
        "webp-junk",
        "bmp-junk",
        "jpeg-junk",
    ],
)
def test_corrupt_and_truncated_images_are_400(data: bytes) -> None:
    with pytest.raises(BadInput) as info:
        decode_image(data, LIMITS)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("RGBA", "WEBP"),
        ("P", "GIF"),
        ("L", "JPEG"),
    ],
)
def test_every_mode_is_normalised_to_rgb(mode: str, fmt: str) -> None:
    img = Image.new("RGB", (32, 24), (10, 120, 240)).convert(mode)
    decoded = decode_image(encoded(img, fmt), LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (32, 24)


def test_transparency_is_flattened_onto_white() -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(encoded(img, "PNG"), LIMITS).image
    assert decoded.getpixel((4, 4)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (0, 0, 255)


def test_palette_transparency_is_flattened_onto_white() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = encoded(img, "PNG", transparency=1)
    assert decode_image(data, LIMITS).image.getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_range_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (4, 1))
    for x, value in enumerate((0, 16384, 32768, 65535)):
        img.putpixel((x, 0), value)
    decoded = decode_image(encoded(img, "PNG"), LIMITS).image
    greys = [decoded.getpixel((x, 0))[0] for x in range(4)]
    assert greys == [0, 63, 127, 255]


@pytest.mark.parametrize("mode", ["I", "F", "YCbCr", "LAB", "HSV"])
def test_other_modes_convert(mode: str) -> None:
    base = Image.linear_gradient("L").resize((16, 16))
    img = (
        base.convert(mode)
        if mode in ("I", "F")
        else Image.new("RGB", (16, 16), (1, 2, 3)).convert(mode)
    )
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_float_image_is_stretched_to_full_range() -> None:
    img = Image.new("F", (2, 1))
    img.putpixel((0, 0), -1.5)
    img.putpixel((1, 0), 3.0)
    out = to_rgb(img)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


def test_animated_gif_reports_frames_and_tiles_sampled_frames() -> None:
    decoded = decode_image(animated(10), Limits(sampled_frames=4))
    assert decoded.frames == 10
    assert (decoded.width, decoded.height) == (64, 48)
    # Frames 0, 3, 6, 9 in a 2x2 grid of 64x48 tiles.
    assert decoded.image.size == (128, 96)
    centres = [decoded.image.getpixel((32 + 64 * (i % 2), 24 + 48 * (i // 2)))[0] for i in range(4)]
    assert centres == [(i * 37) % 256 for i in (0, 3, 6, 9)]


def test_animated_webp_reports_frames() -> None:
    decoded = decode_image(animated(6, fmt="WEBP"), LIMITS)
    assert decoded.frames == 6
    assert decoded.format == "WEBP"


def test_one_thousand_frame_gif_is_accepted_and_sampled() -> None:
    decoded = decode_image(animated(1000, size=(32, 32)), LIMITS)
    assert decoded.frames == 1000
    assert decoded.image.size == (64, 64)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (200, 100), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(encoded(img, "JPEG", exif=exif.tobytes()), LIMITS)
    assert (decoded.width, decoded.height) == (100, 200)
    assert decoded.image.size == (100, 200)


def test_broken_exif_does_not_fail_the_image() -> None:
    img = Image.new("RGB", (50, 40), (0, 0, 200))
    data = encoded(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert decode_image(data, LIMITS).image.size == (50, 40)


def test_pixel_key_ignores_encoding_and_sees_one_pixel() -> None:
    img = Image.effect_noise((64, 64), 40).convert("RGB")
    keys = {
        pixel_key(decode_image(encoded(img, fmt, **params), LIMITS).image)
        for fmt, params in (("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}))
    }
    assert len(keys) == 1
    changed = img.copy()
    changed.putpixel((5, 5), (0, 0, 0) if img.getpixel((5, 5)) != (0, 0, 0) else (1, 1, 1))
    assert pixel_key(changed) not in keys


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 6000),
    height=st.integers(1, 6000),
    budget=st.sampled_from([8, 64, 256, 1024, 4096]),
)
def test_glm_target_size_respects_geometry_and_budget(width: int, height: int, budget: int) -> None:
    if max(width, height) / min(width, height) > 200:
        return
    w, h = glm_target_size(width, height, budget)
    assert w % 28 == 0 and h % 28 == 0 and w >= 28 and h >= 28
    assert visual_tokens(w, h) <= max(budget, MIN_VISUAL_TOKENS)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(28, 5000),
    height=st.integers(28, 5000),
    budget=st.sampled_from([64, 256, 1024]),
)
def test_glm_target_size_matches_the_glm_processor(width: int, height: int, budget: int) -> None:
    """Where GLM's own processor stays within the budget, we pick exactly its size."""
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

    if max(width, height) / min(width, height) > 200:
        return
    ref_h, ref_w = smart_resize(
        2, height, width, max_pixels=2 * 28 * 28 * budget, min_pixels=112 * 112
    )
    if visual_tokens(ref_w, ref_h) <= budget:
        assert glm_target_size(width, height, budget) == (ref_w, ref_h)


def test_resize_to_budget_returns_exact_token_geometry() -> None:
    big = Image.new("RGB", (1920, 1080))
    small = resize_to_budget(big, 256)
    assert small.width % 28 == 0 and small.height % 28 == 0
    assert visual_tokens(*small.size) <= 256
    assert resize_to_budget(small, 256) is small


def test_decoding_is_deterministic_for_the_same_bytes() -> None:
    data = encoded(Image.effect_noise((50, 50), 30).convert("RGB"), "JPEG", quality=70)
    assert pixel_key(decode_image(data, LIMITS).image) == pixel_key(
        decode_image(io.BytesIO(data).getvalue(), LIMITS).image
    )


def test_a_header_past_pillows_own_bomb_limit_quotes_the_configured_limit() -> None:
    """Pillow refuses a 65535x65535 header itself; the 413 still names our max_pixels."""
    limits = Limits(max_pixels=12_000_000)
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(png_header_only(65535, 65535), limits)
    message = caught.value.message
    assert message == "image is 4294836225 pixels; the limit is 12000000"
    assert "decompression bomb" not in message.lower()


def test_the_probe_refuses_what_the_header_shows_without_decoding() -> None:
    from serve_app.media.imaging import probe_image

    assert probe_image(encoded(Image.new("RGB", (40, 30)), "PNG"), LIMITS) == "PNG"
    with pytest.raises(PayloadTooLarge, match="pixels; the limit"):
        probe_image(png_header_only(20000, 20000), LIMITS)
    with pytest.raises(PayloadTooLarge, match="bytes; the limit is 1024"):
        probe_image(b"\x89PNG" + b"\x00" * 2048, Limits(max_bytes=1024))
    with pytest.raises(UnsupportedMediaType):
        probe_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", LIMITS)
