"""The fingerprint library: exact and near hits, scopes, levels, bounds, TTL, persistence."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from loadtest.corpus import MemeSpec, draw_meme
from loadtest.generators import GENERATORS, caption_variants
from loadtest.transforms import apply
from serve_app.library.backends import (
    LibraryBackend,
    LibraryRecord,
    LibraryUnavailable,
    MemoryBackend,
    SqliteBackend,
)
from serve_app.library.store import FingerprintLibrary, StoreKey, scope_of, upload_key
from serve_app.media.fingerprint import Fingerprinter, _dct_code, _levels, _shrink, trim_box
from serve_app.media.imaging import pixel_key

FINGERPRINTER = Fingerprinter()
SCOPE = scope_of("", "lite@1", "p1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def key_of(image: Image.Image, scope: str = SCOPE) -> StoreKey:
    return StoreKey(fingerprint=FINGERPRINTER.fingerprint(image), scope=scope)


def jpeg_copy(image: Image.Image, scale: float = 0.6, quality: int = 60) -> Image.Image:
    small = image.resize((int(image.width * scale), int(image.height * scale)))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def analysis(tag: str) -> dict[str, Any]:
    return {"explanation": tag, "meta": {"degradation_level": 0}}


def library(
    backend: LibraryBackend | None = None, clock: Clock | None = None, **bounds: Any
) -> FingerprintLibrary:
    return FingerprintLibrary(
        FINGERPRINTER,
        backend or MemoryBackend(),
        max_entries=bounds.get("max_entries", 1000),
        max_bytes=bounds.get("max_bytes", 64 * 1024 * 1024),
        ttl_s=bounds.get("ttl_s", 3600.0),
        near=bounds.get("near", True),
        clock=clock or Clock(),
    )


MEME = draw_meme(MemeSpec(template=11, top="你说得对，但是", bottom="破防了"))
OTHER_CAPTION = draw_meme(MemeSpec(template=11, top="你说得对，但是", bottom="笑死我了"))


def test_scope_separates_context_model_and_prompt() -> None:
    scopes = {
        scope_of("", "m@1", "p1"),
        scope_of("楼主", "m@1", "p1"),
        scope_of("", "m@2", "p1"),
        scope_of("", "m@1", "p2"),
    }
    assert len(scopes) == 4 and scope_of("楼主", "m@1", "p1") == scope_of("楼主", "m@1", "p1")


def test_exact_then_near_then_miss() -> None:
    lib = library()
    assert lib.lookup(key_of(MEME)) is None
    assert lib.store(key_of(MEME), analysis("original"), level=0)
    exact = lib.lookup(key_of(MEME))
    assert exact is not None and (exact.match, exact.distance) == ("exact", 0)
    near = lib.lookup(key_of(jpeg_copy(MEME)))
    assert near is not None and near.match == "near" and near.analysis["explanation"] == "original"
    assert lib.lookup(key_of(OTHER_CAPTION)) is None
    assert lib.lookup(key_of(MEME, scope_of("另一句", "lite@1", "p1"))) is None
    stats = lib.stats()
    assert (stats.exact_hits, stats.near_hits, stats.misses, stats.lookups) == (1, 1, 3, 5)
    assert stats.hit_ratio == pytest.approx(2 / 5)


@pytest.mark.parametrize("generator", ["photo", "panels"])
def test_crops_of_memes_unlike_ours_are_near_hits_and_other_captions_are_not(
    generator: str,
) -> None:
    gen = GENERATORS[generator]
    lib = library()
    for template in (0, 1):
        base, other = caption_variants(gen.layout(template), 2, random.Random(template))
        original, another = gen.meme(template, base), gen.meme(template, other)
        assert lib.store(key_of(original), analysis(f"{generator} {template}"), level=0)
        for name in ("crop_5pct_each_side", "crop_2to5pct_each_side"):
            hit = lib.lookup(key_of(apply(name, original, template)))
            assert hit is not None and hit.match == "near", (template, name)
            assert hit.analysis["explanation"] == f"{generator} {template}"
            assert lib.lookup(key_of(apply(name, another, template))) is None, (template, name)


def _v1_bytes(image: Image.Image) -> bytes:
    """A version 1 serialised fingerprint, built the way version 1 built it."""
    work = image.convert("RGB").reduce(2)
    box = trim_box(np.asarray(work, dtype=np.int16), 6.0)
    pixels = np.asarray(
        work.convert("L").resize((64, 64), Image.Resampling.BILINEAR, box=box), dtype=np.float32
    )
    flat = _levels(pixels).ravel()
    detail = ((flat[0::2] << 4) | flat[1::2]).tobytes()
    exact = pixel_key(image).encode()
    coarse = _dct_code(_shrink(pixels, 2))
    return b"MFP" + bytes((1, len(exact))) + struct.pack(">QH", coarse, 2048) + exact + detail


def test_version_1_records_still_load_and_answer_near_copies() -> None:
    backend = MemoryBackend()
    data = _v1_bytes(MEME)
    backend.put(
        LibraryRecord(
            entry_id=f"{pixel_key(MEME)}:{SCOPE}",
            exact_key=pixel_key(MEME),
            scope=SCOPE,
            fingerprint=data,
            analysis=analysis("stored by version 1"),
            level=0,
            stored_at=1_000_000.0,
        )
    )
    lib = library(backend)
    assert lib.sync() == 1
    exact = lib.lookup(key_of(MEME))
    assert exact is not None and exact.match == "exact"
    near = lib.lookup(key_of(jpeg_copy(MEME)))
    assert near is not None and near.match == "near"
    assert near.analysis["explanation"] == "stored by version 1"
    assert lib.lookup(key_of(OTHER_CAPTION)) is None


def test_near_matching_can_be_switched_off() -> None:
    lib = library(near=False)
    lib.store(key_of(MEME), analysis("original"), level=0)
    assert lib.lookup(key_of(jpeg_copy(MEME))) is None
    assert lib.lookup(key_of(MEME)) is not None


def test_a_degraded_answer_serves_only_degraded_levels_and_is_replaced() -> None:
    lib = library()
    key = key_of(MEME)
    assert lib.store(key, analysis("level 2"), level=2)
    assert lib.lookup(key, max_level=0) is None
    assert lib.stats().degraded_skips == 1
    hit = lib.lookup(key, max_level=2)
    assert hit is not None and hit.level == 2
    assert lib.store(key, analysis("level 0"), level=0)
    assert not lib.store(key, analysis("level 1 later"), level=1)  # never replaces better
    best = lib.lookup(key, max_level=0)
    assert best is not None and best.analysis["explanation"] == "level 0"


def test_entries_expire() -> None:
    clock = Clock()
    lib = library(clock=clock, ttl_s=60)
    lib.store(key_of(MEME), analysis("x"), level=0)
    clock.now += 59
    assert lib.lookup(key_of(MEME)) is not None
    clock.now += 2
    assert lib.lookup(key_of(MEME)) is None
    assert lib.stats().expired == 1 and lib.stats().entries == 0


def test_least_recently_used_entries_go_first() -> None:
    lib = library(max_entries=2)
    memes = [draw_meme(MemeSpec(template=20 + i, top="摆烂了")) for i in range(3)]
    lib.store(key_of(memes[0]), analysis("0"), level=0)
    lib.store(key_of(memes[1]), analysis("1"), level=0)
    assert lib.lookup(key_of(memes[0])) is not None  # 0 is now the most recent
    lib.store(key_of(memes[2]), analysis("2"), level=0)
    assert lib.lookup(key_of(memes[1])) is None
    assert lib.lookup(key_of(memes[0])) is not None and lib.lookup(key_of(memes[2])) is not None
    assert lib.stats().evictions == 1


def test_the_memory_bound_evicts() -> None:
    lib = library(max_bytes=1)  # nothing fits: every store evicts down to empty
    lib.store(key_of(MEME), analysis("x" * 1000), level=0)
    stats = lib.stats()
    assert stats.entries == 0 and stats.evictions == 1
    roomy = library()
    roomy.store(key_of(MEME), analysis("x" * 1000), level=0)
    assert 1000 < roomy.stats().bytes < roomy.max_bytes


def test_two_libraries_on_one_file_share_what_they_store(tmp_path: Path) -> None:
    path = tmp_path / "lib.sqlite3"
    writer, reader = library(SqliteBackend(path)), library(SqliteBackend(path))
    writer.store(key_of(MEME), analysis("from the writer"), level=0)
    assert reader.lookup(key_of(MEME)) is None
    assert reader.sync() == 1
    hit = reader.lookup(key_of(jpeg_copy(MEME)))
    assert hit is not None and hit.analysis["explanation"] == "from the writer"
    assert writer.sync() == 0  # its own write coming back is not taken twice
    assert writer.stats().entries == 1
    # A restart: a new library on the file loads everything.
    restarted = library(SqliteBackend(path))
    assert restarted.sync() == 1 and restarted.lookup(key_of(MEME)) is not None


def test_sync_skips_unreadable_and_expired_records(tmp_path: Path) -> None:
    backend = MemoryBackend()
    clock = Clock()
    record = dict(exact_key="e", scope=SCOPE, analysis=analysis("x"), level=0, stored_at=clock.now)
    backend.put(LibraryRecord(entry_id="junk", fingerprint=b"not a fingerprint", **record))
    lib = library(backend, clock=clock, ttl_s=10)
    old = key_of(MEME)
    backend.put(
        LibraryRecord(
            entry_id=old.entry_id,
            fingerprint=old.fingerprint.to_bytes(),
            **{**record, "stored_at": clock.now - 11},
        )
    )
    assert lib.sync() == 0 and lib.stats().entries == 0


class UnreachableOnPut(MemoryBackend):
    """A backend whose server went away after start-up."""

    def put(self, record: LibraryRecord) -> int:
        raise LibraryUnavailable("connection refused")


def test_a_lost_backend_keeps_serving_from_memory() -> None:
    lib = library(UnreachableOnPut())
    assert lib.store(key_of(MEME), analysis("x"), level=0)
    assert lib.lookup(key_of(MEME)) is not None
    assert lib.stats().backend_errors == 1


def test_resent_bytes_are_answered_by_their_upload_key() -> None:
    lib = library(max_entries=1)
    stored = StoreKey(key_of(MEME).fingerprint, SCOPE, upload=upload_key(b"original", SCOPE))
    lib.store(stored, analysis("original"), level=2)
    first = lib.lookup_upload(upload_key(b"original", SCOPE), max_level=2)
    assert first is not None and (first.match, first.distance) == ("exact", 0)
    assert lib.lookup_upload(upload_key(b"original", SCOPE), max_level=0) is None  # degraded
    assert lib.lookup_upload(upload_key(b"original", "other scope"), max_level=2) is None
    copy = jpeg_copy(MEME)
    copy_key = StoreKey(key_of(copy).fingerprint, SCOPE, upload=upload_key(b"copy", SCOPE))
    assert lib.lookup_upload(upload_key(b"copy", SCOPE), max_level=2) is None
    near = lib.lookup(copy_key, max_level=2)  # the full lookup remembers the copy's bytes
    assert near is not None and near.match == "near"
    again = lib.lookup_upload(upload_key(b"copy", SCOPE), max_level=2)
    assert again is not None and (again.match, again.distance) == ("near", near.distance)
    assert lib.stats().upload_hits == 2
    # Evicting the entry forgets its upload keys too.
    lib.store(key_of(OTHER_CAPTION), analysis("other"), level=0)
    assert lib.lookup_upload(upload_key(b"original", SCOPE), max_level=3) is None


def test_resent_bytes_an_ingress_answered_count_as_upload_hits() -> None:
    lib = library()
    lib.store(key_of(MEME), analysis("original"), level=0)
    assert lib.lookup(key_of(OTHER_CAPTION)) is None  # one miss
    lib.count_resent({"exact": 3, "near": 1})
    stats = lib.stats()
    assert (stats.exact_hits, stats.near_hits, stats.upload_hits) == (3, 1, 4)
    assert (stats.lookups, stats.misses) == (5, 1)
    assert stats.hit_ratio == pytest.approx(4 / 5)
