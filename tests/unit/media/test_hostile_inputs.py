"""Every hostile-corpus case through the intake: the typed error it must get, or an RGB image."""

from __future__ import annotations

import resource
import time

import pytest

from serve_app.config.models import AppArgs
from serve_app.errors import BadInput, ClientError, PayloadTooLarge, UnsupportedMediaType
from serve_app.media.fingerprint import Fingerprinter
from serve_app.media.imaging import Limits, decode_image
from serve_app.pipeline.prepare import key_upload
from tests.support.hostile import CASES, UNIT_CASES, HostileCase

LIMITS = Limits()
ERROR_TYPES: dict[int, type[ClientError]] = {
    400: BadInput,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
REFUSALS = [case for case in UNIT_CASES if not case.ok]
BOMBS = [case for case in REFUSALS if case.status == 413]


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def test_corpus_is_what_the_brief_asks_for() -> None:
    names = {case.name for case in CASES}
    assert len(names) == len(CASES), "case names are unique"
    statuses = {case.status for case in CASES}
    assert statuses == {200, 400, 413, 415}
    for case in CASES:
        assert case.ok == (case.code is None)
        if not case.ok:
            assert ERROR_TYPES[case.status].code == case.code


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda case: case.name)
def test_decode_image_gives_the_expected_outcome(case: HostileCase) -> None:
    data = case.build()
    if case.ok:
        decoded = decode_image(data, LIMITS)
        assert decoded.image.mode == "RGB"
        assert decoded.image.width > 0 and decoded.image.height > 0
        if case.size is not None:
            assert (decoded.width, decoded.height) == case.size
        if case.frames is not None:
            assert decoded.frames == case.frames
        return
    with pytest.raises(ClientError) as info:
        decode_image(data, LIMITS)
    error = info.value
    assert type(error) is ERROR_TYPES[case.status], error
    assert (error.status, error.code) == (case.status, case.code)
    assert case.mentions.lower() in error.message.lower()
    assert "Traceback" not in error.message and len(error.message) < 400


@pytest.mark.parametrize("case", BOMBS, ids=lambda case: case.name)
def test_bombs_are_refused_from_the_header_without_decoding(case: HostileCase) -> None:
    """Refusal is cheap: well under a second and no large allocation on the way."""
    data = case.build()
    rss_before = _max_rss_mb()
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(data, LIMITS)
    elapsed = time.perf_counter() - started
    grown = _max_rss_mb() - rss_before
    assert info.value.message, info.value
    assert any(word in info.value.message for word in ("pixels", "frames")), info.value.message
    assert elapsed < 0.5, f"{case.name} took {elapsed:.2f}s to refuse"
    # Peak RSS is a high-water mark: growth past it means something big was allocated.
    assert grown < 64, f"{case.name} raised peak RSS by {grown:.0f} MB"


def test_late_gif_frame_cannot_grow_the_canvas_past_the_pixel_limit() -> None:
    """The 16x16 screen passes; the 7000x7000 second frame must be refused before decoding."""
    case = next(case for case in CASES if case.name == "gif-bomb-late-frame")
    with pytest.raises(PayloadTooLarge, match="7000x7000"):
        decode_image(case.build(), LIMITS)
    # Within a larger pixel budget the same file is a valid two-frame animation.
    decoded = decode_image(case.build(), Limits(max_pixels=50_000_000))
    assert decoded.frames == 2 and decoded.image.mode == "RGB"


def test_gif_frame_offset_cannot_hide_an_extreme_aspect_ratio() -> None:
    from tests.support.hostile import _gif

    data = _gif((16, 16), [(0, 0, 16, 16), (60000, 0, 1, 1)])
    with pytest.raises(BadInput, match="aspect ratio"):
        decode_image(data, LIMITS)


def test_frame_limit_is_exact() -> None:
    from tests.support.hostile import gif_frames

    assert decode_image(gif_frames(10), Limits(max_frames=10)).frames == 10
    with pytest.raises(PayloadTooLarge, match="frames"):
        decode_image(gif_frames(11), Limits(max_frames=10))


def test_polyglot_is_only_ever_an_image() -> None:
    case = next(case for case in CASES if case.name == "gif-html-polyglot")
    data = case.build()
    assert data.startswith(b"GIF89a") and b"<script>" in data
    decoded = decode_image(data, LIMITS)
    assert decoded.format == "GIF"
    assert decoded.image.getpixel((5, 5)) == (10, 200, 30)


def test_palette_transparency_is_flattened_onto_white() -> None:
    case = next(case for case in CASES if case.name == "palette-png-transparent")
    image = decode_image(case.build(), LIMITS).image
    assert image.getpixel((5, 5)) == (255, 0, 0)  # opaque red half
    assert image.getpixel((25, 5)) == (255, 255, 255)  # transparent index 0 -> white


def test_sixteen_bit_grey_keeps_its_ramp() -> None:
    case = next(case for case in CASES if case.name == "png-16bit-grey")
    image = decode_image(case.build(), LIMITS).image
    left, right = image.getpixel((0, 0)), image.getpixel((63, 0))
    assert left == (0, 0, 0) and right[0] > 240 and right[0] == right[1] == right[2]


def test_cmyk_comes_out_as_rgb_cyan() -> None:
    case = next(case for case in CASES if case.name == "cmyk-jpeg")
    red, green, blue = decode_image(case.build(), LIMITS).image.getpixel((10, 10))
    assert red < 80 and green > 150 and blue > 150


@pytest.fixture(scope="module")
def fingerprinter() -> Fingerprinter:
    return Fingerprinter()


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda case: case.name)
def test_the_whole_pre_engine_path_agrees(case: HostileCase, fingerprinter: Fingerprinter) -> None:
    """key_upload (decode + fingerprint) raises the same client error or keys the image."""
    data = case.build()
    if case.ok:
        keyed = key_upload(data, "你说得对", args=AppArgs(), fingerprinter=fingerprinter)
        assert keyed.decoded.image.mode == "RGB"
        assert keyed.key.fingerprint is not None
        return
    with pytest.raises(ERROR_TYPES[case.status]):
        key_upload(data, None, args=AppArgs(), fingerprinter=fingerprinter)
