"""The benchmark's meme generators: registry, determinism, caption slots and variants."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from loadtest import meme_kit
from loadtest.generators import (
    GENERATORS,
    HELD_OUT,
    TUNING,
    Generator,
    caption_variants,
)
from loadtest.meme_kit import FONT_STYLES, draw_text, font, needs_cjk, photo_field

# Template numbers cycle through each generator's four styles.
STYLES = range(4)


def test_tuning_and_held_out_generators_partition_the_registry() -> None:
    assert set(TUNING) | set(HELD_OUT) == set(GENERATORS)
    assert not set(TUNING) & set(HELD_OUT)
    assert HELD_OUT == ("heldout",)
    assert {"classic", "photo", "panels"} <= set(TUNING)
    for name, generator in GENERATORS.items():
        assert generator.name == name and generator.summary


def _variants(generator: Generator, template: int, count: int = 4) -> list[tuple[str, ...]]:
    return caption_variants(generator.layout(template), count, random.Random(template))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_template_draws_the_same_pixels_every_time(name: str) -> None:
    generator = GENERATORS[name]
    texts = _variants(generator, 1)[0]
    first = generator.meme(1, texts)
    assert first.mode == "RGB"
    assert first.tobytes() == generator.meme(1, texts).tobytes()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_another_caption_changes_the_meme_but_not_the_picture(name: str) -> None:
    generator = GENERATORS[name]
    for template in STYLES:
        base, swapped = _variants(generator, template, 2)
        a = np.asarray(generator.meme(template, base), dtype=np.int16)
        b = np.asarray(generator.meme(template, swapped), dtype=np.int16)
        assert a.shape == b.shape
        changed = (np.abs(a - b).max(axis=2) > 0).mean()
        # The caption moved some pixels, the picture under it stayed.
        assert 0.001 < changed < 0.35, (template, changed)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_templates_differ_and_styles_vary_the_layout(name: str) -> None:
    generator = GENERATORS[name]
    slots = {len(generator.layout(t).pools) for t in STYLES}
    sizes = set()
    thumbs = []
    for template in STYLES:
        img = generator.meme(template, _variants(generator, template)[0])
        sizes.add(img.size)
        thumbs.append(np.asarray(img.convert("L").resize((32, 32)), dtype=np.float32))
    for i, a in enumerate(thumbs):
        for b in thumbs[i + 1 :]:
            assert np.abs(a - b).mean() > 5  # different pictures, not one recoloured
    if name != "classic":  # the house style is one layout at one size
        assert len(sizes) > 1 or len(slots) > 1


def test_caption_variants_swap_one_slot_at_a_time_for_a_similar_length() -> None:
    generator = GENERATORS["panels"]
    for template in STYLES:
        layout = generator.layout(template)
        variants = caption_variants(layout, 6, random.Random(template))
        assert len(set(variants)) == len(variants) == 6
        base = variants[0]
        slots = len(base)
        for i, variant in enumerate(variants[1 : 1 + slots]):
            differ = [j for j in range(slots) if variant[j] != base[j]]
            assert differ == [i]
            lengths = sorted(abs(len(c) - len(base[i])) for c in layout.pools[i] if c != base[i])
            assert abs(len(variant[i]) - len(base[i])) == lengths[0]
        for variant in variants:
            assert all(text in pool for text, pool in zip(variant, layout.pools, strict=True))


def test_fonts_fall_back_and_cjk_text_gets_the_cjk_font() -> None:
    for style in FONT_STYLES:
        assert isinstance(font(style, 20), ImageFont.FreeTypeFont)
    assert isinstance(font("no such style", 20), ImageFont.FreeTypeFont)
    assert needs_cjk("破防了") and needs_cjk("Me 饭") and not needs_cjk("Déjà vu")


def test_a_missing_dejavu_cut_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(meme_kit, "_DEJAVU", tmp_path)
    font.cache_clear()
    meme_kit._warn_missing.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="loadtest.meme_kit"):
            fallback = font("serif_bold", 23)
            font("serif_bold", 24)
        assert isinstance(fallback, ImageFont.FreeTypeFont)
        [record] = caplog.records  # once per file, not per size
        assert "DejaVuSerif-Bold.ttf not found" in record.getMessage()
    finally:
        font.cache_clear()
        meme_kit._warn_missing.cache_clear()


def test_draw_text_wraps_and_shrinks_into_its_box() -> None:
    img = Image.new("RGB", (400, 300), (255, 255, 255))
    box = (20, 20, 380, 120)
    text = "when you open the fridge for the fifth time in an hour"
    left, top, right, bottom = draw_text(
        img, text, box, style="sans", size=60, fill=(0, 0, 0), stroke=None, max_lines=2
    )
    assert box[0] - 2 <= left < right <= box[2] + 2
    assert box[1] - 2 <= top < bottom <= box[3] + 2
    ink = np.asarray(img.convert("L")) < 128
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.min() >= box[1] - 2 and rows.max() <= box[3] + 2


def test_photo_fields_have_photo_statistics() -> None:
    """Smooth at large scales, with grain: neither flat nor white noise."""
    img = np.asarray(photo_field(random.Random(3), (256, 192)).convert("L"), dtype=np.float32)
    assert img.std() > 15  # not flat
    fine = np.abs(np.diff(img, axis=1)).mean()
    coarse = np.abs(img[:, 32:] - img[:, :-32]).mean()
    assert coarse > 2 * fine  # structure at large scales dominates pixel-to-pixel noise
    assert fine > 1  # but there is grain
