"""ImageMarks: marks found again on an image's exact and near copies, never on another caption."""

from __future__ import annotations

import random

import pytest

from serve_app.media.fingerprint import Fingerprint, Fingerprinter
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


def test_another_caption_on_the_same_template_is_not_found(
    fingerprinter: Fingerprinter, memes: list[Meme]
) -> None:
    marks = ImageMarks(fingerprinter)
    for n, meme in enumerate(memes):
        marks.add(f"m{n}", meme.original, {})
    for meme in memes:
        assert marks.find(meme.other_caption) == []
    # ... nor the other way round: the variant listed, the original looked up.
    variants = ImageMarks(fingerprinter)
    for n, meme in enumerate(memes):
        variants.add(f"v{n}", meme.other_caption, {})
    for meme in memes:
        assert variants.find(meme.original) == []
        assert variants.find(meme.cropped) == []


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
        marks.add(f"r{n}", Fingerprint(f"random-{n}", rng.getrandbits(64), detail), {})
    for n, meme in enumerate(memes):
        marks.add(f"m{n}", meme.original, {})
    counting.checks = 0
    for n, meme in enumerate(memes):
        assert [h.mark_id for h in marks.find(meme.cropped)] == [f"m{n}"]
        assert marks.find(meme.other_caption) == []
    # Random 64-bit codes fall within radius 12 of a query with p ≈ 2e-7: a few checks
    # per lookup at most (the true candidate), not 20 000.
    assert counting.checks <= 4 * len(memes)
    assert len(marks) == 20_000 + len(memes)
