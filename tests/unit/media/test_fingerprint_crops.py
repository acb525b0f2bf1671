"""Crop tolerance on memes unlike the house style: every generator, every style.

For one template of each style of each generator: crops of 2-5 % per side (and the other
crop transforms) are matched, through the index as the library looks them up, while the
same template with another caption is matched neither way round, cropped or not.
"""

from __future__ import annotations

import random
from functools import cache

import pytest
from PIL import Image

from loadtest.generators import GENERATORS, caption_variants
from loadtest.transforms import CROP_TRANSFORMS, apply
from serve_app.media.fingerprint import Fingerprint, Fingerprinter, FingerprintIndex

FINGERPRINTER = Fingerprinter()
STYLES = (0, 1, 2, 3)  # template t draws style t % 4


@cache
def memes(name: str, template: int) -> tuple[Image.Image, Image.Image]:
    """The template with its base captions, and with one caption swapped."""
    generator = GENERATORS[name]
    base, other = caption_variants(generator.layout(template), 2, random.Random(template))
    return generator.meme(template, base), generator.meme(template, other)


@cache
def fingerprints(name: str, template: int) -> tuple[Fingerprint, Fingerprint]:
    base, other = memes(name, template)
    return FINGERPRINTER.fingerprint(base), FINGERPRINTER.fingerprint(other)


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("template", STYLES)
def test_crops_are_found_by_the_index_and_matched(name: str, template: int) -> None:
    base, _ = memes(name, template)
    stored, other = fingerprints(name, template)
    index = FingerprintIndex(FINGERPRINTER.params.coarse_radius)
    index.add(0, stored)
    index.add(1, other)
    for transform in sorted(CROP_TRANSFORMS):
        query = FINGERPRINTER.fingerprint(apply(transform, base, template))
        found = dict(index.search(query))
        assert 0 in found, (transform, FINGERPRINTER.coarse_distance(query, stored))
        assert FINGERPRINTER.near_distance(query, stored) is not None, (
            transform,
            FINGERPRINTER.detail_scores(query, stored),
        )
        # Found or not by the index, the other caption is never confirmed.
        assert FINGERPRINTER.near_distance(query, other) is None, transform


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("template", STYLES)
def test_another_caption_is_never_matched_either_way_round(name: str, template: int) -> None:
    _, other_img = memes(name, template)
    stored, other = fingerprints(name, template)
    assert FINGERPRINTER.near_distance(other, stored) is None
    assert FINGERPRINTER.near_distance(stored, other) is None
    cropped = FINGERPRINTER.fingerprint(apply("crop_2to5pct_each_side", other_img, template))
    assert FINGERPRINTER.near_distance(cropped, stored) is None
    assert FINGERPRINTER.near_distance(stored, cropped) is None
