"""Perceptual fingerprints: near duplicates match, different captions never do."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from PIL import Image

from loadtest.corpus import MemeSpec, draw_meme
from loadtest.transforms import CROPPING_TRANSFORMS, GROUPS, TRANSFORMS, apply
from serve_app.media.fingerprint import Fingerprint, Fingerprinter, FingerprintParams, hamming
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
    # Crops remove content: one miss in three is tolerated there (target recall ≥ 0.8;
    # crop_5pct_each_side, up to 10 % per axis, is informative only).
    allowed = 1 if name in CROPPING_TRANSFORMS else 0
    assert len(misses) <= allowed, misses


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


def test_crop_5pct_removes_at_most_5_percent_per_axis() -> None:
    img = draw_meme(MemeSpec(5, *BASE))
    for seed in range(40):
        out = apply("crop_5pct", img, seed)
        for before, after in zip(img.size, out.size, strict=True):
            assert 0.95 * before - 1 <= after <= 0.99 * before + 1


def test_cubic_warp_is_exact_at_the_identity_and_keeps_rows_normalised() -> None:
    from serve_app.media.fingerprint import THUMB, _interp_matrix

    for cubic in (False, True):
        m, valid = _interp_matrix(1.0, 0.0, THUMB, cubic=cubic)
        assert np.allclose(m, np.eye(THUMB), atol=1e-6) and valid.all()
        m, _ = _interp_matrix(0.93, 0.031, THUMB, cubic=cubic)
        assert np.allclose(m.sum(axis=1), 1.0, atol=1e-5)


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
            assert not fingerprinter.detail_match(a.detail, b.detail)


def test_uniform_border_is_trimmed(
    fingerprinter: Fingerprinter, originals: dict[int, tuple[Image.Image, Fingerprint]]
) -> None:
    img, stored = originals[TEMPLATES[1]]
    padded = Image.new("RGB", (img.width + 80, img.height + 120), (255, 255, 255))
    padded.paste(img, (40, 60))
    query = fingerprinter.fingerprint(padded)
    assert hamming(query.coarse, stored.coarse) <= 4
    assert fingerprinter.near_distance(query, stored) is not None


def test_uniform_and_tiny_images_fingerprint(fingerprinter: Fingerprinter) -> None:
    for img in (
        Image.new("RGB", (300, 200), (10, 200, 30)),
        Image.new("RGB", (3, 5), (0, 0, 0)),
        Image.new("L", (40, 40), 128),
    ):
        fp = fingerprinter.fingerprint(img)
        assert 0 <= fp.coarse < 2**64
        assert len(fp.detail) <= 2048


def test_fingerprint_is_compact_and_round_trips(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    _, fp = originals[TEMPLATES[2]]
    data = fp.to_bytes()
    assert len(fp.detail) <= 2048
    assert len(data) <= 2048 + 64
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
    bad_exact[15] = 0xFF  # inside the exact key: not UTF-8
    with pytest.raises(ValueError):
        Fingerprint.from_bytes(bytes(bad_exact))


def test_coarse_must_fit_64_bits() -> None:
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=2**64, detail=b"")
    with pytest.raises(ValueError):
        Fingerprint(exact="x", coarse=-1, detail=b"")


def test_near_distance_respects_the_coarse_radius(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    stored = originals[TEMPLATES[0]][1]
    query = Fingerprint(exact="another image", coarse=stored.coarse ^ 0b111, detail=stored.detail)
    assert Fingerprinter().near_distance(query, stored) == 3
    assert Fingerprinter(FingerprintParams(coarse_radius=2)).near_distance(query, stored) is None


def test_hamming() -> None:
    rng = random.Random(0)
    for _ in range(100):
        a, b = rng.getrandbits(64), rng.getrandbits(64)
        assert hamming(a, b) == bin(a ^ b).count("1")
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(5, 5) == 0


def test_detail_rejects_wrong_length(fingerprinter: Fingerprinter) -> None:
    with pytest.raises(ValueError):
        fingerprinter.detail_match(b"\x00" * 10, b"\x00" * 2048)


def test_serialisation_layout_is_versioned(
    originals: dict[int, tuple[Image.Image, Fingerprint]],
) -> None:
    fp = originals[TEMPLATES[0]][1]
    data = fp.to_bytes()
    assert data[:3] == b"MFP" and data[3] == 1
    assert struct.unpack(">Q", data[5:13])[0] == fp.coarse
    assert np.frombuffer(fp.detail, dtype=np.uint8).size == len(fp.detail)
