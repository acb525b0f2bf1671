"""The platforms' term lists: one automaton over every list, texts in normalised form."""

from __future__ import annotations

import random

import pytest

from serve_app.understanding import terms as terms_module
from serve_app.understanding.terms import (
    KeywordAutomaton,
    TermAction,
    TermEntry,
    TermHit,
    TermMatcher,
)


@pytest.fixture(scope="module")
def matcher() -> TermMatcher:
    return TermMatcher(
        [
            TermEntry("你说得对", "sarcasm", "review"),
            TermEntry("傻逼", "abuse", "block"),
            TermEntry("笑死", "memes", "pass"),
            TermEntry("典", "memes", "pass"),
        ]
    )


@pytest.mark.parametrize(
    "text",
    [
        "你說得對，但是",  # traditional
        "ＮＳＤＤ",  # full-width abbreviation
        "n s d d 但是",
        "n.s.d.d",
        "N-S-D-D!",
        "NsDd",  # mixed case
        "nsdd但是",
        "你\u200b说\u200d得\ufeff对",  # zero-width characters
        "你🙂说☆得\ufe0f对",  # emoji, symbols, variation selector
        "哈哈 你 说 得 对",
    ],
)
def test_every_spelling_hits_its_term(matcher: TermMatcher, text: str) -> None:
    assert matcher.find({"ocr": [text]}) == [
        TermHit(
            term="你说得对", list_name="sarcasm", action="review", where="ocr", matched="你说得对"
        )
    ]


@pytest.mark.parametrize(
    "text",
    ["absbc", "nsddx", "xnsdd", "The answer is absolutely right", "一张普通的风景照", ""],
)
def test_other_texts_hit_nothing(matcher: TermMatcher, text: str) -> None:
    assert matcher.find({"ocr": [text], "context": [text]}) == []


def test_hits_come_once_in_order_of_first_appearance(matcher: TermMatcher) -> None:
    hits = matcher.find(
        {
            "ocr": ["笑死，你说得对", "傻逼"],
            "context": ["你说得对 笑死 典", "字典"],
        }
    )
    assert [(hit.term, hit.where) for hit in hits] == [
        ("笑死", "ocr"),
        ("你说得对", "ocr"),
        ("傻逼", "ocr"),
        ("典", "context"),
    ]


def test_a_bare_string_counts_as_one_text(matcher: TermMatcher) -> None:
    assert [hit.term for hit in matcher.find({"context": "你說得對"})] == ["你说得对"]


def test_a_term_in_several_lists_keeps_every_list() -> None:
    matcher = TermMatcher(
        [
            TermEntry("你说得对", "platform_a", "block"),
            TermEntry("你說得對", "platform_b", "review"),  # same normalised term
            TermEntry("nsdd", "platform_c", "pass"),  # same again, via the abbreviation
        ]
    )
    hits = matcher.find({"ocr": ["NSDD"]})
    assert [(hit.list_name, hit.term, hit.action, hit.matched) for hit in hits] == [
        ("platform_a", "你说得对", "block", "你说得对"),
        ("platform_b", "你說得對", "review", "你说得对"),
        ("platform_c", "nsdd", "pass", "你说得对"),
    ]


def test_overlapping_and_nested_terms_are_all_found() -> None:
    matcher = TermMatcher(
        [
            TermEntry("破防", "a", "review"),
            TermEntry("破大防", "a", "block"),
            TermEntry("大防线", "b", "pass"),
        ]
    )
    hits = matcher.find({"ocr": ["破大防线，破防了"]})
    assert [hit.term for hit in hits] == ["破大防", "大防线", "破防"]


def test_an_empty_matcher_finds_nothing() -> None:
    matcher = TermMatcher([])
    assert matcher.empty and len(matcher) == 0
    assert matcher.find({"ocr": ["你说得对"], "context": ["傻逼"]}) == []


def test_entries_are_counted_once() -> None:
    entry = TermEntry("你说得对", "a", "block")
    matcher = TermMatcher([entry, entry, TermEntry("你说得对", "b", "block")])
    assert len(matcher) == 2 and not matcher.empty


def test_a_term_with_nothing_to_match_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'☆！'.*'memes'"):
        TermMatcher([TermEntry("笑死", "memes", "pass"), TermEntry("☆！", "memes", "block")])


def test_one_term_with_two_actions_in_one_list_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        TermMatcher([TermEntry("笑死", "memes", "pass"), TermEntry("笑死", "memes", "block")])


def test_a_hundred_thousand_terms_find_a_planted_one() -> None:
    rng = random.Random(7)
    lists = ("platform_block", "platform_review", "platform_pass")
    actions: tuple[TermAction, ...] = ("block", "review", "pass")
    entries = [
        TermEntry(
            "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(2, 6))),
            lists[i % 3],
            actions[i % 3],
        )
        for i in range(100_000)
    ]
    planted = TermEntry("尊嘟假嘟xyz", "platform_review", "review")
    matcher = TermMatcher([*entries, planted])
    assert len(matcher) >= 99_000
    hits = matcher.find({"ocr": ["这是一张图", "尊嘟假嘟 XYZ？"], "context": ["没有"]})
    assert planted.term in [hit.term for hit in hits]
    assert all(hit.where == "ocr" for hit in hits if hit.term == planted.term)


def test_keyword_automaton_reports_every_occurrence() -> None:
    automaton = KeywordAutomaton({"ab": 1, "b": 2, "你好": 3})
    assert list(automaton.finditer("xabb你好")) == [
        (1, "ab", 1),
        (2, "b", 2),
        (3, "b", 2),
        (4, "你好", 3),
    ]
    assert list(KeywordAutomaton({}).finditer("ab")) == []
    with pytest.raises(ValueError, match="empty"):
        KeywordAutomaton({"": 1})


def test_byte_offsets_map_back_to_characters() -> None:
    text = "a你好b\U0001f642c"
    for encoded in (text.encode("utf-8"), text.encode("utf-8").decode("latin-1")):
        offsets = [0, 1, 4, 7, 8, 12]  # before each character, then the end
        assert [terms_module._char_index(encoded, o) for o in offsets] == [0, 1, 2, 3, 4, 5]
