"""Perceptual fingerprints: near duplicates match, different captions never do.

Version 1 fingerprints (64x64 detail, no window codes) are built here the way the
version 1 code built them, to check that stored ones keep loading and matching.
"""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from loadtest.corpus import MemeSpec, cjk_font, draw_meme
from loadtest.transforms import CROPPING_TRANSFORMS, GROUPS, TRANSFORMS, apply
from serve_app.media.fingerprint import (
    DETAIL,
    THUMB,
    WINDOW_MARGINS,
    Fingerprint,
    Fingerprinter,
    FingerprintIndex,
    FingerprintParams,
    hamming,
    trim_box,
)
from serve_app.media.imaging import pixel_key

TEMPLATES = (11, 42, 77)
BASE = ("破防了", "笑死我了")
# (top, bottom) variants of BASE: one caption differs (same length), the other one, both.
VARIANTS = (
    ("绝绝子", "笑死我了"),  # top differs, same length
    ("破防了", "蚌埠住了"),  # bottom differs, same length, shares the last character
    ("摆烂了", "社死现场"),  # both differ, same lengths
    ("你说得对，但是", "笑死我了"),  # top differs, different length
    ("破防了", ""),  # bottom removed
)


@pytest.fixture(scope="module")
def fingerprinter() -> Fingerprinter:
    return Fingerprinter()


@pytest.fixture(scope="module")
def originals(fingerprinter: Fingerprinter) -> dict[int, tuple[Image.Image, Fingerprint]]:
    out = {}
    for template in TEMPLATES:
        img = draw_meme(MemeSpec(template, *BASE))
        out[template] = (img, fingerprinter.fingerprint(img))
    return out


def test_transforms_are_grouped_and_seeded() -> None:
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(TRANSFORMS)
    img = draw_meme(MemeSpec(5, *BASE))
    for name in ("webp", "crop_5pct", "corner_watermark", "border_pad"):
        assert apply(name, img, 3).tobytes() == apply(name, img, 3).tobytes()
        assert apply(name, img, 3).mode == "RGB"


def test_identical_image_has_distance_zero(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    img, fp = originals[TEMPLATES[0]]
    again = fingerprinter.fingerprint(img.copy())
    assert again == fp
    assert fp.exact == pixel_key(img)
    assert fingerprinter.near_distance(again, fp) == 0


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_is_a_near_hit(
    name: str,
    fingerprinter: Fingerprinter,
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    misses = []
    for template, (img, stored) in originals.items():
        query = fingerprinter.fingerprint(apply(name, img, template))
        distance = fingerprinter.near_distance(query, stored)
        if distance is None:
            misses.append((template, hamming(query.coarse, stored.coarse)))
        else:
            assert 0 <= distance <= fingerprinter.params.coarse_radius
    # Every one of these matches, crops included (the benchmark's crop target is 0.9).
    assert not misses, misses


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}|{v[1]}")
def test_different_captions_on_one_template_never_match(
    variant: tuple[str, str],
    fingerprinter: Fingerprinter,
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    for template, (_, stored) in originals.items():
        other = draw_meme(MemeSpec(template, *variant))
        query = fingerprinter.fingerprint(other)
        assert fingerprinter.near_distance(query, stored) is None
        assert fingerprinter.near_distance(stored, query) is None
        # Nor after the re-encodings that blur text the most.
        for name in ("jpeg_q30", "resize_0.3"):
            blurred = fingerprinter.fingerprint(apply(name, other, template))
            assert fingerprinter.near_distance(blurred, stored) is None, name


@pytest.mark.parametrize("name", sorted(CROPPING_TRANSFORMS))
def test_cropped_copies_of_other_captions_never_match(
    name: str,
    fingerprinter: Fingerprinter,
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    """Aligning for a crop must not open a hole: neither way round, for any variant."""
    for template, (_, stored) in originals.items():
        for seed, variant in enumerate(VARIANTS):
            cropped = fingerprinter.fingerprint(
                apply(name, draw_meme(MemeSpec(template, *variant)), seed)
            )
            assert fingerprinter.near_distance(cropped, stored) is None, (template, variant)
            assert fingerprinter.near_distance(stored, cropped) is None, (template, variant)


@pytest.mark.parametrize(
    ("name", "least", "most", "slack"),
    [
        ("crop_5pct", 0.01, 0.05, 1),  # 1..5 % of each dimension in total
        ("crop_2to5pct_each_side", 0.04, 0.10, 2),  # 2..5 % off each of its two sides
    ],
)
def test_crops_remove_what_they_say_per_axis(
    name: str, least: float, most: float, slack: int
) -> None:
    img = draw_meme(MemeSpec(5, *BASE))
    for seed in range(40):
        out = apply(name, img, seed)
        for before, after in zip(img.size, out.size, strict=True):
            assert (1 - most) * before - slack <= after <= (1 - least) * before + slack


def test_cubic_warp_is_exact_at_the_identity_and_keeps_rows_normalised() -> None:
    from serve_app.media.fingerprint import _interp_matrix

    for cubic in (False, True):
        m, valid = _interp_matrix(1.0, 0.0, THUMB, cubic=cubic)
        assert np.allclose(m, np.eye(THUMB), atol=1e-6) and valid.all()
        m, _ = _interp_matrix(0.93, 0.031, THUMB, cubic=cubic)
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("side", [THUMB, DETAIL])
@pytest.mark.parametrize("params", [(1.0, 0.0, 1.0, 0.0), (0.93, 0.031, 1.05, -0.04)])
def test_separable_warp_equals_the_interpolation_matrices(
    side: int, params: tuple[float, float, float, float]
) -> None:
    from serve_app.media.fingerprint import _interp_matrix, _warp

    a = np.random.default_rng(side).random((side, side)).astype(np.float32) * 255
    for cubic in (False, True):
        mx, vx = _interp_matrix(params[0], params[1], side, cubic=cubic)
        my, vy = _interp_matrix(params[2], params[3], side, cubic=cubic)
        warped, wy, wx = _warp(a, params, cubic=cubic)
        assert np.allclose(warped, my @ a @ mx.T, atol=0.01)
        assert (wy == vy).all() and (wx == vx).all()


def test_plain_64_bit_hashes_cannot_tell_the_captions_apart(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    """The trap the detail stage exists for: the coarse key alone would merge these."""
    close = 0
    for template, (_, stored) in originals.items():
        query = fingerprinter.fingerprint(draw_meme(MemeSpec(template, *VARIANTS[0])))
        close += hamming(query.coarse, stored.coarse) <= fingerprinter.params.coarse_radius
    assert close >= 2


def test_different_templates_do_not_match(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    fps = [fp for _, fp in originals.values()]
    extra = [fingerprinter.fingerprint(draw_meme(MemeSpec(t, *BASE))) for t in (300, 301, 302)]
    everything = fps + extra
    for i, a in enumerate(everything):
        for b in everything[i + 1 :]:
            assert fingerprinter.near_distance(a, b) is None
            assert not fingerprinter.detail_match(a, b)


def test_uniform_border_is_trimmed(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    img, stored = originals[TEMPLATES[1]]
    padded = Image.new("RGB", (img.width + 80, img.height + 120), (255, 255, 255))
    padded.paste(img, (40, 60))
    query = fingerprinter.fingerprint(padded)
    assert hamming(query.coarse, stored.coarse) <= 4
    assert fingerprinter.near_distance(query, stored) is not None


def test_a_pad_beside_a_plain_panel_of_its_colour_is_trimmed() -> None:
    """A picture on the left, a white panel on the right, padded in white all round."""
    img = Image.new("RGB", (300, 200), (255, 255, 255))
    img.paste(Image.new("RGB", (140, 200), (40, 90, 160)), (0, 0))
    padded = Image.new("RGB", (340, 240), (255, 255, 255))
    padded.paste(img, (20, 20))
    assert trim_box(np.asarray(img, dtype=np.int16), 6.0) == (0, 0, 300, 200)
    left, top, right, bottom = trim_box(np.asarray(padded, dtype=np.int16), 6.0)
    # Left, top and bottom end at the picture; on the right the panel runs into the pad.
    assert (left, top, bottom) == (20, 20, 220)
    assert right == 340


def test_a_gradient_or_a_caption_at_the_edge_is_not_trimmed() -> None:
    ramp = np.linspace(40, 200, 200, dtype=np.float32)[:, None, None]
    gradient = np.broadcast_to(ramp, (200, 300, 3)).astype(np.int16)
    assert trim_box(gradient, 6.0) == (0, 0, 300, 200)
    text = draw_meme(MemeSpec(3, "", "")).crop((0, 0, 600, 300))
    plate = Image.new("RGB", (600, 360), (255, 255, 255))
    plate.paste(text, (0, 60))
    # A short line of text on the white plate: its strokes never make a long far run.
    ImageDraw.Draw(plate).text((20, 10), "退钱！客服呢", font=cjk_font(40), fill=(0, 0, 0))
    assert trim_box(np.asarray(plate, dtype=np.int16), 6.0)[1] == 0


def _mounted_print(mount: tuple[int, int, int]) -> Image.Image:
    """A picture with a thin frame line on a plain mount, a caption below (300x260)."""
    img = Image.new("RGB", (300, 260), mount)
    picture = draw_meme(MemeSpec(21, "", "")).resize((260, 180))
    img.paste(picture, (20, 20))
    ImageDraw.Draw(img).rectangle((17, 17, 282, 202), outline=(128, 128, 128), width=1)
    ImageDraw.Draw(img).text((60, 215), "Nobody asked", font=cjk_font(24), fill=(20, 20, 20))
    return img


def test_borders_inside_borders_trim_to_the_same_picture() -> None:
    """Pad around a mount around a frame line: the copy trims to what the original does."""
    original = _mounted_print((250, 248, 240))
    box = trim_box(np.asarray(original, dtype=np.int16), 6.0)
    # The mount is gone (the frame line too where it closes a whole side); the caption on
    # the mount keeps the bottom.
    assert 17 <= box[0] <= 20 and 17 <= box[1] <= 20 and 280 <= box[2] <= 283
    for pad in ((255, 255, 255), (0, 0, 0), (250, 248, 240)):  # white is 15 levels off cream
        padded = Image.new("RGB", (340, 300), pad)
        padded.paste(original, (25, 15))
        left, top, right, _ = trim_box(np.asarray(padded, dtype=np.int16), 6.0)
        assert (left - 25, top - 15, right - 25) == box[:3], pad


def test_a_corner_watermark_on_the_border_does_not_stop_the_trim() -> None:
    original = _mounted_print((0, 0, 0))
    marked = original.copy()
    ImageDraw.Draw(marked).text((4, 2), "9GAG", font=cjk_font(14), fill=(255, 255, 255))
    expected = trim_box(np.asarray(original, dtype=np.int16), 6.0)
    assert 17 <= expected[0] <= 20 and 17 <= expected[1] <= 20  # the black mount went
    assert trim_box(np.asarray(marked, dtype=np.int16), 6.0) == expected


def test_a_small_copy_is_compared_at_the_resolution_it_has(fingerprinter: Fingerprinter) -> None:
    """A 0.3x copy of a wide meme is a thumbnail upsampled from ~110 rows: still a match."""
    wide = draw_meme(MemeSpec(8, "破防了", "笑死我了")).resize((900, 380))
    other = draw_meme(MemeSpec(8, "绝绝子", "笑死我了")).resize((900, 380))
    stored = fingerprinter.fingerprint(wide)
    assert stored.source == (900, 380)
    small = fingerprinter.fingerprint(apply("resize_0.3", wide, 1))
    assert small.source == (270, 114)
    assert fingerprinter.near_distance(small, stored) is not None
    assert fingerprinter.near_distance(stored, small) is not None
    small_other = fingerprinter.fingerprint(apply("resize_0.3", other, 1))
    assert fingerprinter.near_distance(small_other, stored) is None
    assert fingerprinter.near_distance(stored, small_other) is None


def test_uniform_and_tiny_images_fingerprint(fingerprinter: Fingerprinter) -> None:
    for img in (
        Image.new("RGB", (300, 200), (10, 200, 30)),
        Image.new("RGB", (3, 5), (0, 0, 0)),
        Image.new("L", (40, 40), 128),
    ):
        fp = fingerprinter.fingerprint(img)
        assert 0 <= fp.coarse < 2**64
        assert len(fp.windows) == len(WINDOW_MARGINS)
        assert len(fp.detail) <= 512  # a flat thumbnail compresses to almost nothing
        assert fingerprinter.near_distance(fp, fp) == 0


def test_fingerprint_is_compact_and_round_trips(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    _, fp = originals[TEMPLATES[2]]
    data = fp.to_bytes()
    # 256x256 at 4 bits is 32 KiB raw; a meme's thumbnail deflates to a few KiB.
    assert len(fp.detail) <= 10 * 1024
    assert len(data) <= len(fp.detail) + 128
    assert Fingerprint.from_bytes(data) == fp


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"MFP",
        b"hello world, not a fingerprint at all",
        bytes(2100),
    ],
)
def test_garbage_is_rejected(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(garbage)


def test_truncated_other_version_and_corrupt_are_rejected(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    data = originals[TEMPLATES[0]][1].to_bytes()
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(data[:-1])
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="version"):
        Fingerprint.from_bytes(data[:3] + bytes([99]) + data[4:])
    bad_exact = bytearray(data)
    bad_exact[20 + 8 * len(WINDOW_MARGINS)] = 0xFF  # inside the exact key: not UTF-8
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(bytes(bad_exact))
    with pytest.raises(ValueError):  # more window codes announced than present
        Fingerprint.from_bytes(data[:15] + bytes([200]) + data[16:])


def test_coarse_must_fit_64_bits() -> None:
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=2**64, detail=b"")
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=-1, detail=b"")


def test_near_distance_respects_the_coarse_radius(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    stored = originals[TEMPLATES[0]][1]
    # Version 2 on both sides: the window codes are what counts, the nearest one.
    windows = (stored.windows[0] ^ 0b1111, stored.windows[1] ^ 0b111, stored.windows[2] ^ 0b11111)
    query = Fingerprint(
        exact="another image",
        coarse=~stored.coarse & (2**64 - 1),
        detail=stored.detail,
        windows=windows,
    )
    assert Fingerprinter().near_distance(query, stored) == 3
    assert Fingerprinter(FingerprintParams(coarse_radius=2)).near_distance(query, stored) is None
    # Without window codes on one side (version 1), the coarse codes.
    legacy = Fingerprint(exact="x", coarse=stored.coarse ^ 0b11, detail=bytes(2048), version=1)
    assert Fingerprinter().coarse_distance(legacy, stored) == 2
    assert Fingerprinter().coarse_distance(stored, legacy) == 2


def test_hamming() -> None:
    rng = random.Random(0)
    for _ in range(100):
        a, b = rng.getrandbits(64), rng.getrandbits(64)
        assert hamming(a, b) == bin(a ^ b).count("1")
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(5, 5) == 0


def test_corrupt_details_are_rejected(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    good = originals[TEMPLATES[0]][1]
    for detail in (b"\x00" * 10, zlib.compress(b"\x00" * 100), good.detail + b"\x00"):
        bad = Fingerprint(exact="bad", coarse=good.coarse, detail=detail, windows=good.windows)
        with pytest.raises(ValueError):
            fingerprinter.detail_match(bad, good)
    legacy = Fingerprint(exact="v1", coarse=good.coarse, detail=bytes(100), version=1)
    with pytest.raises(ValueError):
        fingerprinter.detail_match(legacy, good)


def test_serialisation_layout_is_versioned(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    fp = originals[TEMPLATES[0]][1]
    data = fp.to_bytes()
    assert data[:3] == b"MFP" and data[3] == 2 and fp.version == 2
    assert struct.unpack(">QH", data[5:15]) == (fp.coarse, len(fp.detail))
    count = data[15]
    assert count == len(WINDOW_MARGINS)
    assert struct.unpack(f">{count}Q", data[16 : 16 + 8 * count]) == fp.windows
    assert struct.unpack(">HH", data[16 + 8 * count : 20 + 8 * count]) == fp.source == (600, 600)
    assert data.endswith(fp.detail)
    assert len(zlib.decompress(fp.detail)) == DETAIL * DETAIL // 2


# ---------------------------------------------------------------- version 1 fingerprints


def _v1_fingerprint(image: Image.Image) -> Fingerprint:
    """What version 1 stored: 64x64 thumbnail of the trimmed picture, its DCT code."""
    from serve_app.media.fingerprint import _dct_code, _levels, _shrink

    work = image.convert("RGB")
    factor = max(work.size) // 256
    if factor > 1:
        work = work.reduce(factor)
    box = trim_box(np.asarray(work, dtype=np.int16), 6.0)
    thumb = work.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(thumb, dtype=np.float32)
    flat = _levels(pixels).ravel()
    return Fingerprint(
        exact=pixel_key(image),
        coarse=_dct_code(_shrink(pixels, 2)),
        detail=((flat[0::2] << 4) | flat[1::2]).tobytes(),
        version=1,
    )


def _v1_bytes(fp: Fingerprint) -> bytes:
    """The version 1 layout, written out by hand."""
    exact = fp.exact.encode()
    return (
        b"MFP"
        + bytes((1, len(exact)))
        + struct.pack(">QH", fp.coarse, len(fp.detail))
        + exact
        + fp.detail
    )


def test_version_1_fingerprints_load_and_round_trip(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    v1 = _v1_fingerprint(originals[TEMPLATES[0]][0])
    data = _v1_bytes(v1)
    loaded = Fingerprint.from_bytes(data)
    assert loaded == v1 and loaded.version == 1 and loaded.windows == ()
    assert loaded.window_key is None
    assert loaded.to_bytes() == data
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=1, detail=b"", windows=(1, 2, 3), version=1)
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=1, detail=b"", source=(600, 600), version=1)


def test_a_new_query_still_matches_a_stored_version_1_fingerprint(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    index = FingerprintIndex(fingerprinter.params.coarse_radius)
    stored = {}
    for item, (template, (img, _)) in enumerate(originals.items()):
        stored[template] = Fingerprint.from_bytes(_v1_bytes(_v1_fingerprint(img)))
        index.add(item, stored[template])
    for item, (template, (img, _)) in enumerate(originals.items()):
        for name in ("jpeg_q60", "resize_0.5", "crop_5pct"):
            query = fingerprinter.fingerprint(apply(name, img, template))
            assert item in dict(index.search(query)), (template, name)
            assert fingerprinter.near_distance(query, stored[template]) is not None, name
            assert fingerprinter.near_distance(stored[template], query) is not None, name
        other = fingerprinter.fingerprint(draw_meme(MemeSpec(template, *VARIANTS[0])))
        assert fingerprinter.near_distance(other, stored[template]) is None


# ---------------------------------------------------------------- the index


def test_fingerprint_index_finds_exactly_what_coarse_distance_allows(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    radius = fingerprinter.params.coarse_radius
    rng = random.Random(5)
    stored: dict[int, Fingerprint] = {}
    index = FingerprintIndex(radius)
    base = [fp for _, fp in originals.values()]
    for item in range(300):
        fp = rng.choice(base)
        flip = sum(1 << rng.randrange(64) for _ in range(rng.randrange(0, 20))) & (2**64 - 1)
        version = 1 if item % 7 == 0 else 2
        stored[item] = Fingerprint(
            exact=f"e{item}",
            coarse=fp.coarse ^ flip,
            detail=b"",
            windows=() if version == 1 else tuple(w ^ flip for w in fp.windows),
            version=version,
        )
        index.add(item, stored[item])
    index.remove(3)
    del stored[3]
    assert len(index) == len(stored) and 3 not in index and 4 in index
    for query in [*base, Fingerprint(exact="q", coarse=base[0].coarse, detail=b"", version=1)]:
        expected = sorted(
            (item, fingerprinter.coarse_distance(query, fp))
            for item, fp in stored.items()
            if fingerprinter.coarse_distance(query, fp) <= radius
        )
        assert sorted(index.search(query)) == expected
        assert expected  # the test means something


def test_a_corrupt_stored_detail_matches_nothing(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    good = originals[TEMPLATES[0]][1]
    corrupt = Fingerprint(
        exact="stored", coarse=good.coarse, detail=bytes(len(good.detail)), windows=good.windows
    )
    assert fingerprinter.coarse_distance(good, corrupt) == 0
    assert fingerprinter.near_distance(good, corrupt) is None
