"""The one matching form of text: width, script, case, separators, abbreviations."""

from __future__ import annotations

import threading
from pathlib import Path

import opencc
import pytest

from serve_app.understanding import normalize as normalize_module
from serve_app.understanding.normalize import (
    ENGLISH_WORDS,
    load_abbreviations,
    normalize,
    normalize_tokens,
)


@pytest.mark.parametrize(
    "text",
    [
        "你说得对",
        "你說得對",  # traditional
        "ＮＳＤＤ",  # full-width
        "nsdd",
        "NsDd",  # mixed case
        "n s d d",
        "n.s.d.d",
        "N-S-D-D",
        "n　s　d　d",  # ideographic spaces
        "n🙂s🙂d🙂d",
        "ns\u200bdd",  # zero-width space inside the run
        "你.说 得\u200b对",
        "你☆说🙂得对",
        "你\u200c说\u200d得\u2060对\ufeff",
        "你\ufe0f说\u0301得对",  # variation selector, combining mark
        "你\x00说\t得\n对",  # control characters
        "\u3164你说得对\u3164",  # Hangul filler
    ],
)
def test_spellings_of_one_phrase_normalise_alike(text: str) -> None:
    assert normalize(text) == "你说得对"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你說得對，但是", "你说得对但是"),
        ("nsdd，但是", "你说得对但是"),
        ("nsdd但是", "你说得对但是"),  # a Latin run followed by hanzi
        ("n s d d但是", "你说得对但是"),
        ("我xswl", "我笑死我了"),
        ("yyds!!!", "永远的神"),
        ("ＹＹＤＳ６６６", "永远的神666"),
    ],
)
def test_abbreviations_expand_next_to_hanzi_and_digits(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("absbc", "absbc"),  # contains "sb" and "bc", expands nothing
        ("nsddx", "nsddx"),  # longer than the abbreviation
        ("xnsdd", "xnsdd"),
        ("nsd d", "nsdd"),  # "nsd" is not a single letter, so the runs stay apart
        ("Hello, World!", "helloworld"),
        ("The cat and the dog", "thecatandthedog"),
        ("I am a b c", "iamabc"),
        ("u1s1", "u1s1"),
        ("芭比Q了", "芭比q了"),
        ("café", "café"),
    ],
)
def test_ordinary_words_are_not_expanded(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_tokens_split_on_separators_only() -> None:
    assert normalize_tokens("典！ 急了，孝") == ["典", "急了", "孝"]
    assert normalize_tokens("字\u200b典") == ["字典"]  # invisible characters do not split
    assert normalize_tokens("n s d d，但是") == ["你说得对", "但是"]
    assert normalize_tokens("I am a b c") == ["i", "am", "abc"]
    assert normalize_tokens("，。！ ") == []
    assert normalize_tokens("") == []


@pytest.mark.parametrize("text", ["你說得對，但是 nsdd", "ａ ｂ☆c字\u200b典", "Hello, 世界 🙂"])
def test_normalize_is_the_tokens_joined_and_idempotent(text: str) -> None:
    assert normalize(text) == "".join(normalize_tokens(text))
    assert normalize(normalize(text)) == normalize(text)


def test_packaged_abbreviations_are_valid() -> None:
    table = load_abbreviations()
    assert 30 <= len(table) <= 60
    assert table["nsdd"] == "你说得对"
    for abbreviation, expansion in table.items():
        assert len(abbreviation) >= 3 and abbreviation not in ENGLISH_WORDS
        assert normalize(abbreviation) == expansion == normalize(expansion)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "abbreviations.yaml"
    path.write_text("version: 1\nabbreviations:\n" + body, "utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("  - {abbreviation: you, expansion: 有}\n", "English word"),
        ("  - {abbreviation: the, expansion: 特}\n", "English word"),
        ("  - {abbreviation: sb, expansion: 傻逼}\n", "abbreviation"),
        ("  - {abbreviation: nbcs, expansion: nobody cares}\n", "expansion"),
        ("  - {abbreviation: nsdd, expansion: 你说得对, note: x}\n", "note"),
        (
            "  - {abbreviation: nsdd, expansion: 你说得对}\n"
            "  - {abbreviation: nsdd, expansion: 你说的对}\n",
            "twice",
        ),
        ("  - {abbreviation: nsdd, expansion: 你說得對}\n", "simplified"),
    ],
)
def test_loader_rejects_bad_abbreviations(tmp_path: Path, body: str, reason: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ValueError, match=reason) as info:
        load_abbreviations(path)
    assert "abbreviations.yaml" in str(info.value)


def test_one_converter_is_created_lazily_from_many_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[object] = []
    real = opencc.OpenCC

    def counting(config: str) -> object:
        converter = real(config)
        created.append(converter)
        return converter

    monkeypatch.setattr(normalize_module, "_converter", None)
    monkeypatch.setattr(normalize_module, "_table", None)
    monkeypatch.setattr(opencc, "OpenCC", counting)
    texts = ["你說得對，但是", "ＮＳＤＤ", "n.s.d.d"] * 50
    results: list[str] = []
    lock = threading.Lock()

    def work(text: str) -> None:
        value = normalize(text)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=work, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(results)) == ["你说得对", "你说得对但是"]
    assert len(created) == 1
