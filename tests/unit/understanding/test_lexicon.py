"""The packaged slang lexicon and its matcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.understanding.labels import EMOTIONS, INTENTS
from serve_app.understanding.lexicon import Lexicon, LexiconEntry

REQUIRED = (
    "你说得对但是",
    "狗头",
    "阴阳怪气",
    "破防了",
    "笑死",
    "前方高能",
    "社死",
    "尊嘟假嘟",
    "泰裤辣",
    "绝绝子",
    "蚌埠住了",
    "芭比q了",
    "摆烂",
    "我真的会谢",
    "典",
    "急了",
    "孝子",
)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def test_packaged_lexicon_is_large_and_valid(lexicon: Lexicon) -> None:
    assert len(lexicon) >= 150
    terms = {entry.term for entry in lexicon.entries}
    assert set(REQUIRED) <= terms
    assert {entry.emotion for entry in lexicon.entries} == set(EMOTIONS)
    assert {entry.intent for entry in lexicon.entries} == set(INTENTS)
    for entry in lexicon.entries:
        assert entry.term.isalnum(), f"{entry.term!r} carries punctuation"
        assert entry.term == entry.term.lower(), f"{entry.term!r} is not lower case"
        assert entry.gloss.strip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你说得对，但是原神是一款……", ["你说得对但是"]),
        ("你 说 得 对 ， 但 是", ["你说得对但是"]),
        ("你說得對，但是", ["你说得对但是"]),
        ("nsdd，但是", ["你说得对但是"]),
        ("NSDD但是", ["你说得对但是"]),
        ("n.s.d.d 但是", ["你说得对但是"]),
        ("你\u200b说🙂得☆对，但是", ["你说得对但是"]),
        ("nsddx，但是", []),
        ("ＹＹＤＳ！", ["yyds"]),
        ("芭比Q了！", ["芭比q了"]),
        ("典！", ["典"]),
        ("这本字典很厚", []),
        ("一张普通的风景照", []),
    ],
)
def test_find_folds_width_case_space_and_punctuation(
    lexicon: Lexicon, text: str, expected: list[str]
) -> None:
    assert [hit.entry.term for hit in lexicon.find(text)] == expected


def test_hits_are_in_order_of_appearance_across_texts(lexicon: Lexicon) -> None:
    hits = lexicon.find("笑死，破防了", "蚌埠住了")
    assert [hit.entry.term for hit in hits] == ["笑死", "破防了", "蚌埠住了"]


def _entry(term: str, **overrides: object) -> LexiconEntry:
    values: dict[str, object] = {
        "term": term,
        "gloss": "测试",
        "emotion": "neutral",
        "intent": "other",
        "sarcasm": False,
        "offensiveness": 0,
    }
    values.update(overrides)
    return LexiconEntry.model_validate(values)


def test_a_form_inside_a_longer_match_is_not_counted_twice() -> None:
    lexicon = Lexicon([_entry("破防"), _entry("破大防"), _entry("大防线")])
    assert [hit.entry.term for hit in lexicon.find("我破大防了")] == ["破大防"]
    assert [hit.entry.term for hit in lexicon.find("破防了，又破大防")] == ["破防", "破大防"]


def test_every_occurrence_of_a_longer_match_hides_shorter_forms() -> None:
    lexicon = Lexicon([_entry("笑死"), _entry("xswl", aliases=("笑死我了",))])
    assert [hit.entry.term for hit in lexicon.find("笑死我了，笑死我了")] == ["xswl"]
    assert [hit.entry.term for hit in lexicon.find("xswl", "笑死我了")] == ["xswl"]


def test_standalone_terms_need_a_whole_token() -> None:
    lexicon = Lexicon([_entry("急", standalone=True)])
    assert lexicon.find("急") and lexicon.find("你急了？急！")
    assert not lexicon.find("着急")


def test_duplicate_forms_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        Lexicon([_entry("绝了"), _entry("绝绝", aliases=("绝了",))])


def test_forms_that_normalise_alike_are_duplicates_across_entries() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        Lexicon([_entry("阴阳怪气"), _entry("阴阳人", aliases=("yygq",))])
    with pytest.raises(ValueError, match="duplicates"):
        Lexicon([_entry("你说得对"), _entry("你說得對")])


def test_forms_of_one_entry_that_normalise_alike_are_kept_once() -> None:
    lexicon = Lexicon([_entry("阴阳怪气", aliases=("yygq", "陰陽怪氣"))])
    hits = lexicon.find("YYGQ")
    assert [(hit.entry.term, hit.matched) for hit in hits] == [("阴阳怪气", "阴阳怪气")]


def test_invalid_lexicon_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nentries:\n  - term: x\n    gloss: g\n    emotion: joyish\n"
        "    intent: other\n    sarcasm: false\n    offensiveness: 0\n",
        "utf-8",
    )
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        Lexicon.load(path)
