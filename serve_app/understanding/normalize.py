"""The one matching form of text, shared by the slang lexicon and the platforms' term lists.

:func:`normalize` turns a text into the form both sides of every match are compared in:

1. NFKC (full-width ``ＮＳＤＤ`` → ``NSDD``, ``①`` → ``1``) and lower case;
2. invisible characters deleted outright — zero-width characters (U+200B/C/D, U+2060,
   U+FEFF and every other format character), variation selectors and other combining
   marks, Hangul fillers — so they neither separate nor hide anything (``字<U+200B>典`` is
   the word ``字典``);
3. traditional → simplified (OpenCC ``t2s``; one converter per process, created lazily);
4. split into tokens at every other character that is not a letter or digit
   (whitespace, punctuation, symbols such as ☆ and emoji, control characters);
5. single ASCII letters separated only by separators joined (``n s d d``, ``n.s.d.d`` →
   ``nsdd``; the letters of an ordinary word are never split);
6. every maximal run of Latin letters that is a known pinyin abbreviation
   (``data/pinyin_abbreviations.yaml``) replaced by its hanzi: ``nsdd`` → ``你说得对``,
   also next to hanzi (``nsdd但是``), but not inside a longer run (``nsddx``).

The normalised text is the tokens joined (``你.说 得<U+200B>对`` and ``你☆说🙂得对`` both give
``你说得对``); :func:`normalize_tokens` returns the tokens themselves, for terms that must
stand alone as a whole token. ``normalize(t) == "".join(normalize_tokens(t))`` always.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Final, Protocol

import opencc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

DEFAULT_ABBREVIATIONS: Final[str] = "pinyin_abbreviations.yaml"

# Common English words, and acronyms common in Chinese posts, that an abbreviation must not
# be: expanding one would rewrite ordinary text (and lexicon forms such as 卡成ppt).
# fmt: off
ENGLISH_WORDS: Final[frozenset[str]] = frozenset([
    "the", "and", "for", "you", "not", "are", "but", "all", "any", "can", "her", "was", "one",
    "our", "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see",
    "two", "way", "who", "boy", "did", "its", "let", "put", "say", "she", "too", "use", "yes",
    "yet", "why", "had", "may", "own", "off", "ago", "few", "far", "got", "lot", "top", "big",
    "bad", "end", "men", "set", "run", "try", "ask", "job", "law", "war", "car", "act", "add",
    "age", "air", "arm", "art", "bed", "bit", "box", "buy", "cut", "dog", "eat", "eye", "fun",
    "god", "guy", "hit", "hot", "key", "kid", "lay", "leg", "lie", "low", "map", "mom", "net",
    "oil", "pay", "per", "red", "sea", "sit", "six", "son", "sun", "tax", "ten", "tea", "via",
    "win", "abs", "bus", "bag", "bar", "cat", "cup", "dad", "die", "dry", "fan", "fat", "fit",
    "fix", "fly", "gas", "gun", "hat", "ice", "ill", "kit", "lab", "mix", "mud", "nor", "odd",
    "pen", "pet", "pig", "pop", "pot", "raw", "row", "sad", "sex", "sky", "tip", "toe", "toy",
    "van", "wet", "that", "this", "with", "have", "from", "they", "will", "what", "when", "your",
    "which", "there", "their", "would", "about", "been", "were", "then", "them", "some", "more",
    "time", "very", "just", "like", "over", "also", "back", "only", "know", "take", "into",
    "year", "good", "well", "make", "come", "work", "most", "even", "must", "here", "want",
    "need", "give", "much", "down", "call", "lol", "omg", "wtf", "btw", "idk", "imo", "lmao",
    "rofl", "cool", "nice", "love", "hate", "best", "okay", "yeah", "sure",
    "app", "bug", "cpu", "gpu", "ppt", "pua", "bgm", "emo", "vip", "diy", "ceo", "ufo", "usb",
    "wifi", "mark", "doge", "gay", "pdf", "mvp", "npc", "dna", "bbq", "nba", "cba", "xxs", "xxl",
])
# fmt: on

_ABBREVIATION: Final[str] = r"^[a-z]{3,}$"
_HANZI_ONLY: Final[str] = r"^[\u4e00-\u9fff]+$"

# Runs of characters that are not letters or digits (``\w`` minus ``_`` is str.isalnum()).
_SEPARATORS: Final = re.compile(r"[\W_]+")
_LATIN_RUN: Final = re.compile(r"[a-z\u00c0-\u024f]+")
_ASCII_LETTER: Final = re.compile(r"[a-z]")
# Hangul fillers are letters by category but render as nothing.
_FILLERS: Final[dict[int, None]] = dict.fromkeys(map(ord, "\u115f\u1160\u3164\uffa0"))


class PinyinAbbreviation(BaseModel):
    """One pinyin-initials abbreviation and the hanzi it stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    abbreviation: str = Field(pattern=_ABBREVIATION, description="≥3 lower-case ASCII letters.")
    expansion: str = Field(pattern=_HANZI_ONLY, description="Simplified hanzi only.")

    @field_validator("abbreviation")
    @classmethod
    def _not_english(cls, value: str) -> str:
        if value in ENGLISH_WORDS:
            raise ValueError(f"{value!r} is a common English word, not a pinyin abbreviation")
        return value


class PinyinAbbreviationFile(BaseModel):
    """The YAML document."""

    model_config = ConfigDict(extra="forbid")

    version: int
    abbreviations: list[PinyinAbbreviation] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> PinyinAbbreviationFile:
        seen: set[str] = set()
        for item in self.abbreviations:
            if item.abbreviation in seen:
                raise ValueError(f"abbreviation {item.abbreviation!r} is listed twice")
            seen.add(item.abbreviation)
        return self


class _Converter(Protocol):
    def convert(self, text: str) -> str: ...


_converter_lock = threading.Lock()
_converter: _Converter | None = None
_table_lock = threading.Lock()
_table: dict[str, str] | None = None


def _t2s() -> _Converter:
    """The process's OpenCC traditional → simplified converter, created on first use."""
    global _converter
    converter = _converter
    if converter is None:
        with _converter_lock:
            if _converter is None:
                _converter = opencc.OpenCC("t2s")
            converter = _converter
    return converter


def load_abbreviations(path: Path | None = None) -> dict[str, str]:
    """Load and validate an abbreviation file (the packaged one when ``path`` is None).

    Returns abbreviation → expansion. Raises ValueError naming the file when it is
    invalid: an unknown field, an abbreviation shorter than 3 letters or that is a
    common English word, a duplicate, or an expansion that is not simplified hanzi.
    """
    if path is None:
        packaged = resources.files("serve_app.understanding").joinpath(
            "data", DEFAULT_ABBREVIATIONS
        )
        text = packaged.read_text("utf-8")
        source = f"serve_app/understanding/data/{DEFAULT_ABBREVIATIONS}"
    else:
        text = Path(path).read_text("utf-8")
        source = str(path)
    try:
        document = PinyinAbbreviationFile.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise ValueError(f"{source}: invalid pinyin abbreviations: {exc}") from exc
    converter = _t2s()
    for item in document.abbreviations:
        if converter.convert(item.expansion) != item.expansion:
            raise ValueError(
                f"{source}: expansion {item.expansion!r} of {item.abbreviation!r} "
                "is not in simplified characters"
            )
    return {item.abbreviation: item.expansion for item in document.abbreviations}


def _abbreviations() -> dict[str, str]:
    """The packaged abbreviation table, loaded once per process."""
    global _table
    table = _table
    if table is None:
        with _table_lock:
            if _table is None:
                _table = load_abbreviations()
                logger.debug("loaded %d pinyin abbreviations", len(_table))
            table = _table
    return table


def _is_invisible(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category == "Cf" or category[0] == "M"


def _is_latin(ch: str) -> bool:
    return "a" <= ch <= "z" or "\u00c0" <= ch <= "\u024f"


def _single_letter_tail(token: str) -> bool:
    return "a" <= token[-1] <= "z" and (len(token) == 1 or not _is_latin(token[-2]))


def _single_letter_head(token: str) -> bool:
    return "a" <= token[0] <= "z" and (len(token) == 1 or not _is_latin(token[1]))


def normalize_tokens(text: str) -> list[str]:
    """The normalised whole tokens of ``text`` (the pieces between separators).

    See the module docstring for the steps; joined, they are :func:`normalize`.
    """
    if not unicodedata.is_normalized("NFKC", text):  # the check is much the cheaper
        text = unicodedata.normalize("NFKC", text)
    folded = text.lower()
    if not folded.isascii():
        folded = folded.translate(_FILLERS)
        if any(_is_invisible(ch) for gap in _SEPARATORS.findall(folded) for ch in gap):
            folded = "".join(ch for ch in folded if not _is_invisible(ch))
        folded = _t2s().convert(folded)
    pieces = [piece for piece in _SEPARATORS.split(folded) if piece]
    if not pieces:
        return []
    merged = [pieces[0]]
    for previous, piece in pairwise(pieces):
        if _single_letter_tail(previous) and _single_letter_head(piece):
            merged[-1] += piece
        else:
            merged.append(piece)
    table = _abbreviations()
    return [
        _LATIN_RUN.sub(lambda run: table.get(run.group(), run.group()), token)
        if _ASCII_LETTER.search(token)
        else token
        for token in merged
    ]


def normalize(text: str) -> str:
    """The matching form of ``text``: normalised, separators dropped, abbreviations expanded.

    ``你說得對，但是``, ``你.说 得<U+200B>对，但是``, ``ＮＳＤＤ，但是`` and ``n s d d 但是`` all
    give ``你说得对但是``.
    """
    return "".join(normalize_tokens(text))
