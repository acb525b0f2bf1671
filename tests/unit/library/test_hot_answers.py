"""Each Ingress's hot answers: kept only at the epoch heard, LRU, aged, and off when the
store goes quiet."""

from __future__ import annotations

from serve_app.library.hot import HotAnswers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hot(max_entries: int = 3, clock: Clock | None = None) -> HotAnswers[str]:
    return HotAnswers(max_entries, ttl_s=60.0, stale_after_s=1.0, clock=clock or Clock())


def test_an_answer_is_kept_only_at_the_epoch_last_heard() -> None:
    answers = hot()
    assert not answers.put("u1", "before any epoch", level=0, epoch="s:0")
    answers.heard("s:0")
    assert not answers.put("u1", "looked up before a review", level=0, epoch="s:-1")
    assert answers.put("u1", "answer", level=0, epoch="s:0")
    assert answers.get("u1", max_level=0) == "answer"
    assert answers.hits == 1


def test_a_new_epoch_empties_the_copy() -> None:
    answers = hot()
    answers.heard("s:0")
    answers.put("u1", "answer", level=0, epoch="s:0")
    answers.heard("s:0")  # the same epoch again: kept
    assert answers.get("u1", 0) == "answer"
    answers.heard("s:1")  # a review or list change somewhere
    assert answers.get("u1", 0) is None and len(answers) == 0 and answers.cleared == 1
    answers.heard("other-instance:1")  # a restarted store, even at the same seq
    assert answers.epoch == "other-instance:1"


def test_nothing_is_served_once_the_store_has_not_been_heard_for_a_while() -> None:
    clock = Clock()
    answers = hot(clock=clock)
    answers.heard("s:0")
    answers.put("u1", "answer", level=0, epoch="s:0")
    clock.now += 0.9
    assert answers.get("u1", 0) == "answer"
    clock.now += 0.2  # 1.1 s since the epoch was heard: stale_after_s is 1 s
    assert answers.get("u1", 0) is None
    answers.heard("s:0")
    assert answers.get("u1", 0) == "answer"
    answers.lost()
    assert answers.get("u1", 0) is None and len(answers) == 0


def test_answers_age_out_and_respect_the_level() -> None:
    clock = Clock()
    answers = hot(clock=clock)
    answers.heard("s:0")
    answers.put("degraded", "made at level 2", level=2, epoch="s:0")
    assert answers.get("degraded", max_level=0) is None  # level 0 wants a level-0 answer
    assert answers.get("degraded", max_level=2) == "made at level 2"
    clock.now += 30
    answers.heard("s:0")
    clock.now += 31  # 61 s after it was kept: past ttl_s
    answers.heard("s:0")
    assert answers.get("degraded", max_level=3) is None and len(answers) == 0


def test_the_least_recently_used_answer_goes_first_and_zero_entries_is_off() -> None:
    answers = hot(max_entries=2)
    answers.heard("s:0")
    answers.put("a", "A", 0, "s:0")
    answers.put("b", "B", 0, "s:0")
    assert answers.get("a", 0) == "A"  # a is now the most recent
    answers.put("c", "C", 0, "s:0")
    assert answers.get("b", 0) is None
    assert answers.get("a", 0) == "A" and answers.get("c", 0) == "C"
    off = hot(max_entries=0)
    off.heard("s:0")
    assert not off.put("a", "A", 0, "s:0") and off.get("a", 0) is None
    assert off.figures()["entries"] == 0
