"""ScenesState: term lists, image lists and reviews folded from events, queried by image."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.scenes.events import (
    InvalidEventBody,
    UnknownEventKind,
    encode_b64,
    fingerprint_to_b64,
    parse_body,
)
from serve_app.scenes.log import Event
from serve_app.scenes.state import ImageListHit, Marks, ScenesState
from tests.unit.scenes.meme_copies import Meme

ANGRY = {"emotion": "anger", "intent": "offensive", "sarcastic": False, "offensiveness": 3}
FUNNY = {"emotion": "happiness", "intent": "entertaining", "sarcastic": False, "offensiveness": 0}
NO_IMAGE = Fingerprint("e", 1, b"")
SNIDE = {"emotion": "sarcasm", "intent": "expressive", "sarcastic": True, "offensiveness": 1}


def image_add(
    fingerprint: Fingerprint, entry_id: str, list_name: str = "ads", action: str = "block"
) -> dict[str, Any]:
    return {
        "list": list_name,
        "action": action,
        "entry_id": entry_id,
        "fingerprint": fingerprint_to_b64(fingerprint),
        "label": f"label of {entry_id}",
        "by": "ops",
        "thumbnail": None,
    }


def review(
    fingerprint: Fingerprint,
    review_id: str,
    labels: dict[str, Any],
    *,
    before: dict[str, Any] | None = None,
    thumbnail: bytes | None = None,
) -> dict[str, Any]:
    return {
        "review_id": review_id,
        "fingerprint": fingerprint_to_b64(fingerprint),
        "request_id": f"req-{review_id}",
        "labels": labels,
        "before": before,
        "reviewer": "alice",
        "key": "moderators",
        "note": f"note {review_id}",
        "thumbnail": None if thumbnail is None else encode_b64(thumbnail),
    }


class Feed:
    """Applies events to a state with consecutive sequence numbers and times."""

    def __init__(self, state: ScenesState) -> None:
        self.state = state
        self.seq = 0

    def __call__(self, kind: str, body: dict[str, Any]) -> Event:
        self.seq += 1
        event = Event(seq=self.seq, kind=kind, body=body, at=1000.0 + self.seq)
        self.state.apply(event)
        return event


@pytest.fixture
def state(fingerprinter: Fingerprinter) -> ScenesState:
    return ScenesState(fingerprinter)


@pytest.fixture
def feed(state: ScenesState) -> Feed:
    return Feed(state)


# --------------------------------------------------------------------------- terms


def test_terms_add_remove_and_version(state: ScenesState, feed: Feed) -> None:
    assert state.terms_version == 0
    assert state.term_entries() == []
    feed("terms.add", {"list": "slurs", "action": "block", "terms": ["蚌埠住了", "a"], "by": "o"})
    feed("terms.add", {"list": "watch", "action": "review", "terms": ["破防"], "by": "o"})
    assert state.terms_version == 2
    assert state.term_entries() == [
        ("a", "slurs", "block"),
        ("蚌埠住了", "slurs", "block"),
        ("破防", "watch", "review"),
    ]
    feed("terms.add", {"list": "slurs", "action": "pass", "terms": [" a "], "by": "o"})  # re-add
    feed("images.add", image_add(Fingerprint("e", 1, bytes(2048)), "img"))  # not a term event
    assert state.terms_version == 3
    assert state.term_lists() == {
        "slurs": {"蚌埠住了": "block", "a": "pass"},
        "watch": {"破防": "review"},
    }
    feed("terms.remove", {"list": "watch", "terms": ["破防", "absent"], "by": "o"})
    assert state.terms_version == 5
    assert state.term_lists() == {"slurs": {"蚌埠住了": "block", "a": "pass"}}
    stats = state.list_stats()
    assert stats["slurs"] == {
        "terms": {"block": 1, "review": 0, "pass": 1},
        "images": {"block": 0, "review": 0, "pass": 0},
    }
    assert stats["ads"]["images"] == {"block": 1, "review": 0, "pass": 0}
    assert "watch" not in stats


def test_term_lists_are_copies(state: ScenesState, feed: Feed) -> None:
    feed("terms.add", {"list": "l", "action": "block", "terms": ["x"], "by": "o"})
    state.term_lists()["l"]["y"] = "pass"
    assert state.term_lists() == {"l": {"x": "block"}}


# --------------------------------------------------------------------------- image lists


def test_block_listed_meme_is_found_on_its_copies(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("images.add", image_add(memes[0].original, "e0"))
    feed("images.add", image_add(memes[1].original, "e1", "friends", "pass"))
    assert state.marks_for(memes[0].original).images == (
        ImageListHit("ads", "block", "e0", "label of e0", "exact", 0),
    )
    for name, copy in memes[0].copies.items():
        [hit] = state.marks_for(copy).images
        assert (hit.list_name, hit.action, hit.entry_id) == ("ads", "block", "e0")
        assert hit.match == "near"
        assert hit.distance <= state.fingerprinter.params.coarse_radius, name
    assert [h.entry_id for h in state.marks_for(memes[1].cropped).images] == ["e1"]
    assert state.marks_for(memes[2].original).empty


def test_another_caption_is_not_listed(state: ScenesState, feed: Feed, memes: list[Meme]) -> None:
    for n, meme in enumerate(memes):
        feed("images.add", image_add(meme.original, f"e{n}"))
    for meme in memes:
        assert state.marks_for(meme.other_caption) == Marks()


def test_image_entries_replace_and_remove(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("images.add", image_add(memes[0].original, "e0"))
    feed("images.add", image_add(memes[1].original, "e1", action="review"))
    feed("images.add", image_add(memes[2].original, "e0", action="pass"))  # e0 now another image
    assert state.marks_for(memes[0].jpeg).empty
    assert [(h.entry_id, h.action) for h in state.marks_for(memes[2].jpeg).images] == [
        ("e0", "pass")
    ]
    assert state.image_lists() == {
        "ads": [
            {"entry_id": "e1", "action": "review", "label": "label of e1", "by": "ops", "at": 1002},
            {"entry_id": "e0", "action": "pass", "label": "label of e0", "by": "ops", "at": 1003},
        ]
    }
    feed("images.remove", {"list": "ads", "entry_id": "e0", "by": "ops"})
    feed("images.remove", {"list": "ads", "entry_id": "never", "by": "ops"})
    assert state.marks_for(memes[2].original).empty
    assert state.image_entry("ads", "e0") is None
    assert state.list_stats()["ads"]["images"] == {"block": 0, "review": 1, "pass": 0}
    feed("images.remove", {"list": "ads", "entry_id": "e1", "by": "ops"})
    assert state.image_lists() == {}


def test_one_image_on_several_lists(state: ScenesState, feed: Feed, memes: list[Meme]) -> None:
    feed("images.add", image_add(memes[0].original, "x", "ads", "block"))
    feed("images.add", image_add(memes[0].jpeg, "y", "kids", "review"))
    hits = state.marks_for(memes[0].original).images
    assert [(h.list_name, h.match) for h in hits] == [("ads", "exact"), ("kids", "near")]


def test_image_entry_keeps_the_thumbnail(state: ScenesState, feed: Feed, memes: list[Meme]) -> None:
    body = image_add(memes[0].original, "e0")
    body["thumbnail"] = encode_b64(memes[0].thumbnail)
    feed("images.add", body)
    entry = state.image_entry("ads", "e0")
    assert entry is not None
    assert entry["thumbnail"] == encode_b64(memes[0].thumbnail)
    assert entry["seq"] == 1


# --------------------------------------------------------------------------- reviews


def test_review_applies_to_the_image_and_its_near_copies(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("review", review(memes[0].original, "r1", ANGRY, before=FUNNY))
    hit = state.marks_for(memes[0].original).review
    assert hit is not None
    assert (hit.review_id, hit.labels, hit.reviewer, hit.at) == ("r1", ANGRY, "alice", 1001.0)
    assert (hit.match, hit.distance) == ("exact", 0)
    for copy in memes[0].copies.values():
        near = state.marks_for(copy).review
        assert near is not None and (near.review_id, near.match) == ("r1", "near")
    assert state.marks_for(memes[0].other_caption).review is None
    assert state.marks_for(memes[1].original).empty


def test_a_later_review_of_a_near_copy_supersedes(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("review", review(memes[0].original, "r1", ANGRY, before=FUNNY, thumbnail=b"png-1"))
    feed("review", review(memes[1].original, "other", SNIDE))
    feed("review", review(memes[0].jpeg, "r2", FUNNY, before=ANGRY, thumbnail=b"png-2"))
    for fingerprint in (memes[0].original, memes[0].jpeg, memes[0].cropped):
        hit = state.marks_for(fingerprint).review
        assert hit is not None and (hit.review_id, hit.labels) == ("r2", FUNNY)
    assert state.marks_for(memes[0].jpeg).review.match == "exact"  # type: ignore[union-attr]
    assert state.marks_for(memes[0].original).review.match == "near"  # type: ignore[union-attr]

    audit = state.audit()
    assert [(a["review_id"], a["seq"]) for a in audit] == [("r2", 3), ("other", 2), ("r1", 1)]
    assert audit[0] == {
        "review_id": "r2",
        "seq": 3,
        "at": 1003.0,
        "reviewer": "alice",
        "key": "moderators",
        "request_id": "req-r2",
        "before": ANGRY,
        "after": FUNNY,
        "note": "note r2",
    }
    assert [a["review_id"] for a in state.audit(limit=1)] == ["r2"]
    assert [a["review_id"] for a in state.audit(limit=5, before_seq=3)] == ["other", "r1"]
    assert [a["review_id"] for a in state.audit(limit=1, before_seq=2)] == ["r1"]
    assert state.audit(before_seq=1) == []

    exported = state.reviews()  # the superseded review of the original is left out
    assert [(r["review_id"], r["labels"]) for r in exported] == [("other", SNIDE), ("r2", FUNNY)]
    assert exported[1]["thumbnail"] == encode_b64(b"png-2")
    assert exported[1]["before"] == ANGRY
    assert exported[1]["request_id"] == "req-r2"


def test_reviewing_the_same_image_again_replaces_it_in_the_export(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("review", review(memes[0].original, "r1", ANGRY))
    feed("review", review(memes[0].original, "r2", SNIDE))
    assert state.marks_for(memes[0].resized).review.review_id == "r2"  # type: ignore[union-attr]
    assert [r["review_id"] for r in state.reviews()] == ["r2"]
    assert len(state.audit()) == 2


def test_review_of_another_caption_does_not_apply(
    state: ScenesState, feed: Feed, memes: list[Meme]
) -> None:
    feed("review", review(memes[0].other_caption, "r1", ANGRY))
    assert state.marks_for(memes[0].original).review is None
    assert state.marks_for(memes[0].jpeg).review is None


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    ("kind", "body", "problem"),
    [
        ("terms.add", {"list": "l", "action": "ban", "terms": ["x"], "by": "o"}, "action"),
        ("terms.add", {"list": "l", "action": "block", "terms": [], "by": "o"}, "terms"),
        ("terms.add", {"list": "l", "action": "block", "terms": ["  "], "by": "o"}, "blank"),
        ("terms.add", {"list": "Bad Name", "action": "block", "terms": ["x"], "by": "o"}, "list"),
        ("terms.add", {"list": "l", "action": "block", "terms": ["x"], "by": "o", "x": 1}, "x"),
        ("terms.remove", {"list": "l", "terms": ["x"]}, "by"),
        ("images.add", {**image_add(NO_IMAGE, "e"), "fingerprint": "!!"}, "base64"),
        ("images.add", {**image_add(NO_IMAGE, "e"), "fingerprint": "AAAA"}, "Fingerprint"),
        ("images.add", image_add(NO_IMAGE, "a/b"), "entry_id"),
        ("images.add", {**image_add(NO_IMAGE, "e"), "thumbnail": "@@"}, "thumbnail"),
        ("images.remove", {"list": "l", "entry_id": "e"}, "by"),
        ("review", review(NO_IMAGE, "r", {**ANGRY, "offensiveness": 4}), "offens"),
        ("review", review(NO_IMAGE, "r", {**ANGRY, "sarcastic": 1}), "sarcastic"),
        ("review", review(NO_IMAGE, "r", {**ANGRY, "emotion": "rage"}), "emotion"),
        ("review", [], "object"),
    ],
)
def test_invalid_bodies_raise_value_error_and_change_nothing(
    state: ScenesState, kind: str, body: Any, problem: str
) -> None:
    with pytest.raises(InvalidEventBody, match=problem):
        parse_body(kind, body)
    with pytest.raises(ValueError, match=problem):
        state.apply(Event(seq=1, kind=kind, body=body, at=1.0))
    assert state.last_seq == 0
    assert state.term_lists() == {} and state.image_lists() == {} and state.audit() == []


def test_unknown_kind_is_skipped_with_a_warning(
    state: ScenesState, feed: Feed, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serve_app.scenes.state"):
        feed("labels.rename", {"from": "a", "to": "b"})
        feed("labels.rename", {"from": "c", "to": "d"})
    feed("terms.add", {"list": "l", "action": "block", "terms": ["x"], "by": "o"})
    assert [r.getMessage() for r in caplog.records if "labels.rename" in r.getMessage()][:1]
    assert sum("labels.rename" in r.getMessage() for r in caplog.records) == 1  # once per kind
    assert state.unknown_events == {"labels.rename": 2}
    assert state.term_lists() == {"l": {"x": "block"}}
    assert state.last_seq == 3
    with pytest.raises(UnknownEventKind):
        parse_body("labels.rename", {})


def test_events_at_or_below_the_last_seq_are_ignored(state: ScenesState, feed: Feed) -> None:
    event = feed("terms.add", {"list": "l", "action": "block", "terms": ["x"], "by": "o"})
    feed("terms.remove", {"list": "l", "terms": ["x"], "by": "o"})
    assert state.apply(event) is False
    assert state.term_lists() == {}
