"""ScenesStore: validate, append, apply; replay at start; pick up other writers' events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.library.backends import LibraryUnavailable
from serve_app.media.fingerprint import Fingerprinter
from serve_app.scenes.events import encode_b64, fingerprint_to_b64
from serve_app.scenes.log import EventLog, MemoryEventLog, SqliteEventLog
from serve_app.scenes.store import ScenesStore
from tests.unit.scenes.meme_copies import Meme

ANGRY = {"emotion": "anger", "intent": "offensive", "sarcastic": False, "offensiveness": 3}
FUNNY = {"emotion": "happiness", "intent": "entertaining", "sarcastic": False, "offensiveness": 0}


class Clock:
    """A clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class BrokenLog(EventLog):
    """A log whose store is down: every call raises ``LibraryUnavailable``."""

    kind = "broken"

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        raise LibraryUnavailable("down")

    def since(self, seq: int, limit: int = 1000) -> list[Any]:
        raise LibraryUnavailable("down")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": "nowhere"}

    def close(self) -> None:
        pass


def terms(list_name: str, *words: str, action: str = "block") -> dict[str, Any]:
    return {"list": list_name, "action": action, "terms": list(words), "by": "ops"}


def image(meme: Meme, entry_id: str, action: str = "block") -> dict[str, Any]:
    return {
        "list": "ads",
        "action": action,
        "entry_id": entry_id,
        "fingerprint": fingerprint_to_b64(meme.original),
        "label": None,
        "by": "ops",
        "thumbnail": encode_b64(meme.thumbnail),
    }


def review(meme: Meme, review_id: str, labels: dict[str, Any], which: str = "original") -> dict:
    fingerprint = meme.original if which == "original" else meme.copies[which]
    return {
        "review_id": review_id,
        "fingerprint": fingerprint_to_b64(fingerprint),
        "labels": labels,
        "reviewer": "bob",
    }


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "scenes" / "events.db"


@pytest.fixture
def logs(sqlite_path: Path) -> Iterator[list[EventLog]]:
    """Logs opened by a test on ``sqlite_path`` (closed afterwards)."""
    opened: list[EventLog] = []
    yield opened
    for log in opened:
        log.close()


def open_store(
    path: Path, logs: list[EventLog], fingerprinter: Fingerprinter, clock: Clock | None = None
) -> ScenesStore:
    logs.append(SqliteEventLog(path))
    store = ScenesStore(logs[-1], fingerprinter, clock or Clock())
    store.load()
    return store


def test_write_validates_appends_and_applies(
    fingerprinter: Fingerprinter, memes: list[Meme]
) -> None:
    log = MemoryEventLog()
    store = ScenesStore(log, fingerprinter, Clock())
    assert store.load() == 0
    event = store.write("terms.add", terms("slurs", " 破防了 ", "破防了", "x"))
    assert (event.seq, event.kind, event.at) == (1, "terms.add", 5001.0)
    assert event.body == {"list": "slurs", "action": "block", "terms": ["破防了", "x"], "by": "ops"}
    assert log.since(0) == [event]  # the canonical body is what is logged
    assert store.state.terms_version == 1
    store.write("images.add", image(memes[0], "e0"))
    assert [h.entry_id for h in store.state.marks_for(memes[0].jpeg).images] == ["e0"]
    assert store.last_seq == 2


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("terms.add", {"list": "l", "action": "nuke", "terms": ["x"], "by": "o"}),
        ("review", {"review_id": "r", "fingerprint": "AAAA", "labels": ANGRY, "reviewer": "b"}),
        ("no.such.kind", {}),
    ],
)
def test_invalid_writes_are_rejected_and_never_logged(
    fingerprinter: Fingerprinter, kind: str, body: dict[str, Any]
) -> None:
    log = MemoryEventLog()
    store = ScenesStore(log, fingerprinter, Clock())
    with pytest.raises(ValueError):
        store.write(kind, body)
    assert log.since(0) == []
    assert store.write("terms.add", terms("l", "x")).seq == 1


def test_state_survives_reopening_the_sqlite_log(
    fingerprinter: Fingerprinter, memes: list[Meme], sqlite_path: Path, logs: list[EventLog]
) -> None:
    first = open_store(sqlite_path, logs, fingerprinter)
    first.write("terms.add", terms("slurs", "a", "b"))
    first.write("terms.remove", {"list": "slurs", "terms": ["a"], "by": "ops"})
    first.write("images.add", image(memes[0], "e0"))
    first.write("images.add", image(memes[1], "e1", action="review"))
    first.write("images.remove", {"list": "ads", "entry_id": "e1", "by": "ops"})
    first.write("review", review(memes[2], "r1", ANGRY))
    first.write("review", review(memes[2], "r2", FUNNY, which="cropped"))
    logs.pop().close()

    second = open_store(sqlite_path, logs, fingerprinter)
    assert second.last_seq == 7
    for query in (first.state, second.state):
        assert query.term_lists() == {"slurs": {"b": "block"}}
        assert query.terms_version == 2
        assert [e["entry_id"] for e in query.image_lists()["ads"]] == ["e0"]
        assert [h.entry_id for h in query.marks_for(memes[0].resized).images] == ["e0"]
        assert query.marks_for(memes[1].original).empty
        hit = query.marks_for(memes[2].jpeg).review
        assert hit is not None and (hit.review_id, hit.labels) == ("r2", FUNNY)
        assert [a["review_id"] for a in query.audit()] == ["r2", "r1"]
    assert second.state.image_lists() == first.state.image_lists()
    assert second.state.reviews() == first.state.reviews()


def test_sync_and_write_pick_up_other_writers_in_order(
    fingerprinter: Fingerprinter, memes: list[Meme], sqlite_path: Path, logs: list[EventLog]
) -> None:
    replica = open_store(sqlite_path, logs, fingerprinter)
    cli = open_store(sqlite_path, logs, fingerprinter)  # another process on the same file
    cli.write("terms.add", terms("slurs", "a"))
    cli.write("review", review(memes[0], "r1", ANGRY))
    assert replica.state.term_lists() == {}
    assert replica.sync() == 2
    assert replica.sync() == 0
    assert replica.state.term_lists() == {"slurs": {"a": "block"}}

    cli.write("terms.add", terms("slurs", "a", action="pass"))
    cli.write("review", review(memes[0], "r2", FUNNY, which="jpeg"))
    event = replica.write("terms.add", terms("slurs", "a", action="review"))  # after the cli's
    assert event.seq == 5
    assert replica.last_seq == 5
    assert replica.state.term_lists() == {"slurs": {"a": "review"}}  # applied in log order
    assert replica.state.marks_for(memes[0].original).review.review_id == "r2"  # type: ignore[union-attr]
    assert replica.state.terms_version == 5


def test_events_the_state_rejects_are_skipped_at_load(
    fingerprinter: Fingerprinter, sqlite_path: Path, logs: list[EventLog]
) -> None:
    logs.append(SqliteEventLog(sqlite_path))
    raw = logs[-1]  # a writer that bypassed validation, and a newer writer
    raw.append("terms.add", {"list": "l", "action": "nuke", "terms": ["x"], "by": "o"}, 1.0)
    raw.append("lists.rename", {"from": "l", "to": "m"}, 2.0)
    raw.append("terms.add", terms("l", "y"), 3.0)
    store = ScenesStore(raw, fingerprinter, Clock())
    assert store.load() == 1
    assert store.rejected == 1
    assert store.last_seq == 3
    assert store.state.term_lists() == {"l": {"y": "block"}}
    assert store.state.unknown_events == {"lists.rename": 1}
    assert store.load() == 1  # load replays from the start into a fresh state
    assert store.state.term_lists() == {"l": {"y": "block"}}


def test_load_pages_through_a_long_log(fingerprinter: Fingerprinter) -> None:
    log = MemoryEventLog()
    for n in range(25):
        log.append("terms.add", terms("l", f"t{n}"), float(n))
    store = ScenesStore(log, fingerprinter)
    assert store.load(page=4) == 25
    assert len(store.state.term_lists()["l"]) == 25


def test_an_unavailable_log_changes_nothing(fingerprinter: Fingerprinter) -> None:
    store = ScenesStore(BrokenLog(), fingerprinter, Clock())
    with pytest.raises(LibraryUnavailable):
        store.load()
    with pytest.raises(LibraryUnavailable):
        store.write("terms.add", terms("l", "x"))
    assert store.state.term_lists() == {}
    assert store.last_seq == 0


def test_concurrent_writes_apply_every_event_once_in_log_order(
    fingerprinter: Fingerprinter,
) -> None:
    log = MemoryEventLog()
    store = ScenesStore(log, fingerprinter, Clock())
    per_thread = 50

    def write(list_name: str) -> None:
        for n in range(per_thread):
            store.write("terms.add", terms(list_name, f"t{n}"))

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.seq for e in log.since(0)] == list(range(1, 3 * per_thread + 1))
    assert store.last_seq == store.state.last_seq == store.state.terms_version == 3 * per_thread
    assert {name: len(t) for name, t in store.state.term_lists().items()} == {
        "a": per_thread,
        "b": per_thread,
        "c": per_thread,
    }
