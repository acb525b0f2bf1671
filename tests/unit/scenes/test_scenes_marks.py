"""ImageMarks: marks found again on an image's exact and near copies, never on another caption."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from PIL import Image

from loadtest.generators import GENERATORS, caption_variants
from loadtest.transforms import round_trip
from serve_app.media.fingerprint import Fingerprint, Fingerprinter, hamming
from serve_app.scenes.marks import ImageMarks
from tests.unit.scenes.meme_copies import Meme


class CountingFingerprinter(Fingerprinter):
    """The real fingerprinter, counting the detail checks it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def near_distance(self, query: Fingerprint, stored: Fingerprint) -> int | None:
        self.checks += 1
        return super().near_distance(query, stored)


def test_exact_hit_is_distance_zero(fingerprinter: Fingerprinter, memes: list[Meme]) -> None:
    marks = ImageMarks(fingerprinter)
    marks.add("m1", memes[0].original, {"list": "ads"})
    [hit] = marks.find(memes[0].original)
    assert (hit.mark_id, hit.match, hit.distance) == ("m1", "exact", 0)
    assert hit.payload == {"list": "ads"}


@pytest.mark.parametrize("copy", ["jpeg", "resized", "cropped"])
def test_near_copies_are_found(fingerprinter: Fingerprinter, memes: list[Meme], copy: str) -> None:
    marks = ImageMarks(fingerprinter)
    for n, meme in enumerate(memes):
        marks.add(f"m{n}", meme.original, {"n": n})
    for n, meme in enumerate(memes):
        hits = marks.find(meme.copies[copy])
        assert [(h.mark_id, h.match) for h in hits] == [(f"m{n}", "near")], copy
        assert 0 <= hits[0].distance <= fingerprinter.params.coarse_radius


# Fractions cut off (left, top, right, bottom): 3-5 % a side, then saved as JPEG.
CROPS = ((0.03, 0.05, 0.04, 0.035), (0.05, 0.05, 0.05, 0.05))
# Templates whose whole-picture code drifts past the coarse radius under these crops (a
# lookup by that code alone, as before the window index, misses them).
CROPPED_TEMPLATES = (("photo", 0), ("photo", 1), ("classic", 1), ("panels", 0))


def cropped(image: Image.Image, fractions: tuple[float, float, float, float]) -> Image.Image:
    """``image`` with ``fractions`` of its width/height cut off each side, as JPEG q85."""
    w, h = image.size
    left, top, right, bottom = fractions
    box = (round(left * w), round(top * h), w - round(right * w), h - round(bottom * h))
    return round_trip(image.crop(box), "JPEG", quality=85)


@dataclass(frozen=True)
class CroppedMeme:
    """A generated meme, its cropped copies, and its template under another caption."""

    original: Fingerprint
    crops: tuple[Fingerprint, ...]
    other_caption: Fingerprint
    other_caption_crops: tuple[Fingerprint, ...]


@pytest.fixture(scope="module")
def cropped_memes(fingerprinter: Fingerprinter) -> list[CroppedMeme]:
    memes = []
    for name, template in CROPPED_TEMPLATES:
        generator = GENERATORS[name]
        base, other = caption_variants(generator.layout(template), 2, random.Random(template))
        images = (generator.meme(template, base), generator.meme(template, other))
        original, another = (fingerprinter.fingerprint(image) for image in images)
        crops = [
            tuple(fingerprinter.fingerprint(cropped(image, box)) for box in CROPS)
            for image in images
        ]
        memes.append(CroppedMeme(original, crops[0], another, crops[1]))
    return memes


def test_cropped_copies_are_found_as_the_library_finds_them(
    fingerprinter: Fingerprinter, cropped_memes: list[CroppedMeme]
) -> None:
    marks = ImageMarks(fingerprinter)
    for n, meme in enumerate(cropped_memes):
        marks.add(f"m{n}", meme.original, {"n": n})
    radius = fingerprinter.params.coarse_radius
    for n, meme in enumerate(cropped_memes):
        for copy in meme.crops:
            hits = marks.find(copy)
            assert [(h.mark_id, h.match) for h in hits] == [(f"m{n}", "near")], n
            assert hits[0].distance == fingerprinter.coarse_distance(copy, meme.original)
            assert hits[0].distance <= radius
    # What the window codes are for: the whole-picture code alone misses some of these.
    assert any(
        hamming(copy.coarse, meme.original.coarse) > radius
        for meme in cropped_memes
        for copy in meme.crops
    )


def found(
    fingerprinter: Fingerprinter, listed: list[Fingerprint], queries: list[Fingerprint]
) -> list[str]:
    """Every mark found for ``queries`` on a list of ``listed``."""
    marks = ImageMarks(fingerprinter)
    for n, fingerprint in enumerate(listed):
        marks.add(f"m{n}", fingerprint, {})
    return [hit.mark_id for query in queries for hit in marks.find(query)]


def test_another_caption_cropped_or_not_is_not_found(
    fingerprinter: Fingerprinter, cropped_memes: list[CroppedMeme]
) -> None:
    originals = [meme.original for meme in cropped_memes]
    variants = [meme.other_caption for meme in cropped_memes]
    variant_queries = [q for m in cropped_memes for q in (m.other_caption, *m.other_caption_crops)]
    assert found(fingerprinter, originals, variant_queries) == []
    # ... nor the other way round: the variant listed, the original and its crops looked up.
    original_queries = [q for m in cropped_memes for q in (m.original, *m.crops)]
    assert found(fingerprinter, variants, original_queries) == []


def test_another_caption_on_the_same_template_is_not_found(
    fingerprinter: Fingerprinter, memes: list[Meme]
) -> None:
    originals = [meme.original for meme in memes]
    variants = [meme.other_caption for meme in memes]
    assert found(fingerprinter, originals, variants) == []
    # ... nor the other way round: the variant listed, the original looked up.
    queries = [q for meme in memes for q in (meme.original, meme.cropped)]
    assert found(fingerprinter, variants, queries) == []


def test_replace_and_remove(fingerprinter: Fingerprinter, memes: list[Meme]) -> None:
    marks = ImageMarks(fingerprinter)
    marks.add("m", memes[0].original, {"v": 1})
    marks.add("m", memes[1].original, {"v": 2})  # same id: replaces, on another image
    assert len(marks) == 1
    assert marks.find(memes[0].original) == []
    assert [h.payload for h in marks.find(memes[1].jpeg)] == [{"v": 2}]
    assert marks.remove("m") is True
    assert marks.remove("m") is False
    assert len(marks) == 0
    assert "m" not in marks
    assert marks.find(memes[1].original) == []


def test_several_marks_on_one_image_sorted_exact_first(
    fingerprinter: Fingerprinter, memes: list[Meme]
) -> None:
    marks = ImageMarks(fingerprinter)
    meme = memes[0]
    marks.add("b-original", meme.original, {})
    marks.add("a-original", meme.original, {})
    marks.add("jpeg-copy", meme.jpeg, {})
    marks.add("other", meme.other_caption, {})
    hits = marks.find(meme.original)
    assert [(h.mark_id, h.match) for h in hits[:2]] == [
        ("a-original", "exact"),
        ("b-original", "exact"),
    ]
    assert [(h.mark_id, h.match) for h in hits[2:]] == [("jpeg-copy", "near")]
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    marks.remove("a-original")
    assert [h.mark_id for h in marks.find(meme.original)] == ["b-original", "jpeg-copy"]


def test_payloads_are_copies(fingerprinter: Fingerprinter, memes: list[Meme]) -> None:
    marks = ImageMarks(fingerprinter)
    payload = {"label": "x"}
    marks.add("m", memes[0].original, payload)
    payload["label"] = "changed"
    hit = marks.find(memes[0].original)[0]
    hit.payload["label"] = "changed too"
    assert marks.find(memes[0].original)[0].payload == {"label": "x"}
    found = marks.get("m")
    assert found is not None and found[0] == memes[0].original


def test_lookup_checks_only_index_candidates_at_scale(memes: list[Meme]) -> None:
    """20 000 marks: a lookup runs the detail check on index candidates, not on every mark."""
    counting = CountingFingerprinter()
    marks = ImageMarks(counting)
    rng = random.Random(5)
    detail = memes[0].original.detail
    for n in range(20_000):
        codes = tuple(rng.getrandbits(64) for _ in range(3))
        marks.add(f"r{n}", Fingerprint(f"random-{n}", rng.getrandbits(64), detail, codes), {})
    for n, meme in enumerate(memes):
        marks.add(f"m{n}", meme.original, {})
    counting.checks = 0
    for n, meme in enumerate(memes):
        assert [h.mark_id for h in marks.find(meme.cropped)] == [f"m{n}"]
        assert marks.find(meme.other_caption) == []
    # Random 64-bit codes fall within radius 12 of a query's code with p ≈ 2e-7 (three
    # window codes probed): a few checks per lookup at most (the true candidate), not 20 000.
    assert counting.checks <= 4 * len(memes)
    assert len(marks) == 20_000 + len(memes)
