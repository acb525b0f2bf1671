"""The library of one scan: hits, stores, and copies deferred while their first is pending."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.bulk.shared_library import LookupQuery, ScanLibrary, StoreItem
from serve_app.config.models import AppArgs, CacheArgs
from serve_app.library.store import LibraryHit
from serve_app.media.fingerprint import Fingerprinter
from serve_app.pipeline.prepare import key_upload
from tests.unit.bulk.fakes import an_analysis

ARGS = AppArgs()
FINGERPRINTER = Fingerprinter()
ORIGINAL = MemeSpec(template=11, top="你说得对，但是", bottom="破防了")
OTHER = MemeSpec(template=12, top="笑死我了", bottom="绝绝子")


def _query(item_id: str, data: bytes, text: str | None = None) -> LookupQuery:
    keyed = key_upload(data, text, args=ARGS, fingerprinter=FINGERPRINTER)
    return LookupQuery(
        id=item_id,
        path=f"/in/{item_id}",
        text=text,
        fingerprint=keyed.key.fingerprint.to_bytes(),
        scope=keyed.key.scope,
    )


@pytest.fixture
def library() -> ScanLibrary:
    scan = ScanLibrary(CacheArgs(backend="memory"))
    scan.open()
    return scan


def test_copies_of_a_pending_meme_are_deferred_then_hit(library: ScanLibrary) -> None:
    first = _query("first.png", meme_bytes(ORIGINAL, "PNG"))
    same = _query("same.png", meme_bytes(ORIGINAL, "PNG"))
    reencoded = _query("copy.jpg", meme_bytes(ORIGINAL, "JPEG", quality=70))
    other = _query("other.png", meme_bytes(OTHER, "PNG"))
    captioned = _query("first-with-text.png", meme_bytes(ORIGINAL, "PNG"), text="另一个语境")

    library.begin_pass()
    answers = library.lookup([first, same, reencoded, other, captioned])

    # One engine call per meme and context; the copies wait for the first one's answer.
    assert answers == ["miss", "defer", "defer", "miss", "miss"]
    assert [q.id for q in library.take_deferred()] == ["same.png", "copy.jpg"]
    assert library.take_deferred() == []

    stored = library.store([StoreItem(first.fingerprint, first.scope, an_analysis())])
    assert stored == 1
    library.begin_pass()
    hits = library.lookup([same, reencoded])
    assert all(isinstance(hit, LibraryHit) for hit in hits)
    assert [hit.match for hit in hits if isinstance(hit, LibraryHit)] == ["exact", "near"]
    assert library.stats()["stores"] == 1


def test_a_copy_whose_first_failed_is_analysed_in_the_next_pass(library: ScanLibrary) -> None:
    first = _query("first.png", meme_bytes(ORIGINAL, "PNG"))
    same = _query("same.png", meme_bytes(ORIGINAL, "PNG"))
    library.begin_pass()
    assert library.lookup([first, same]) == ["miss", "defer"]
    # The first copy failed in the engine: nothing was stored.
    library.begin_pass()
    assert library.lookup([same]) == ["miss"]


def test_what_a_scan_stores_is_in_the_backend_the_service_reads(tmp_path: Path) -> None:
    cache = CacheArgs(backend="sqlite", sqlite_path=tmp_path / "library.sqlite3")
    query = _query("first.png", meme_bytes(ORIGINAL, "PNG"))
    scan = ScanLibrary(cache)
    scan.open()
    scan.store([StoreItem(query.fingerprint, query.scope, an_analysis())])
    scan.close()

    again = ScanLibrary(cache)
    assert again.open() == 1
    again.begin_pass()
    (hit,) = again.lookup([query])
    assert isinstance(hit, LibraryHit) and hit.match == "exact" and hit.level == 0
    again.close()
