"""The curated slang / meme lexicon (``data/slang_lexicon.yaml`` here) and its matcher.

Text is compared in a folded form — NFKC, lower case, whitespace and punctuation
removed — so ``你说得对，但是`` matches the entry ``你说得对但是``. Entries marked
``standalone`` (one-character terms such as ``典``) count only when they form a whole
token on their own, so they do not fire inside ordinary words (``字典``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.understanding.labels import Emotion, Intent

DEFAULT_LEXICON: Final[str] = "slang_lexicon.yaml"


class LexiconEntry(BaseModel):
    """One slang term and the cues it carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    term: str = Field(min_length=1, description="Canonical form, without punctuation.")
    aliases: tuple[str, ...] = Field(default=(), description="Alternative spellings.")
    gloss: str = Field(min_length=1, description="Short Chinese explanation.")
    emotion: Emotion
    intent: Intent
    sarcasm: bool
    offensiveness: int = Field(ge=0, le=3)
    weight: float = Field(1.0, ge=0.2, le=1.5, description="Strength of the cue.")
    standalone: bool = Field(False, description="Must be a whole token to match.")


class LexiconFile(BaseModel):
    """The YAML document."""

    model_config = ConfigDict(extra="forbid")

    version: int
    entries: list[LexiconEntry] = Field(min_length=1)


@dataclass(frozen=True)
class LexiconHit:
    """An entry found in a text, with the spelling that matched."""

    entry: LexiconEntry
    matched: str


_SEPARATORS = re.compile(r"[\s\u3000]+")


def fold(text: str) -> str:
    """Matching form: NFKC, lower case, no whitespace, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZSC")


def tokens(text: str) -> list[str]:
    """Folded pieces of ``text`` between whitespace and punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    pieces: list[str] = []
    current: list[str] = []
    for ch in text:
        if unicodedata.category(ch)[0] in "PZSC":
            if current:
                pieces.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        pieces.append("".join(current))
    return pieces


class Lexicon:
    """A loaded lexicon; :meth:`find` returns the entries present in a text."""

    def __init__(self, entries: Iterable[LexiconEntry]) -> None:
        self.entries: tuple[LexiconEntry, ...] = tuple(entries)
        self._forms: list[tuple[str, LexiconEntry]] = []
        seen: dict[str, str] = {}
        for entry in self.entries:
            for form in (entry.term, *entry.aliases):
                key = fold(form)
                if not key:
                    raise ValueError(f"lexicon entry {entry.term!r} has an empty form {form!r}")
                if key in seen:
                    raise ValueError(
                        f"lexicon form {form!r} of {entry.term!r} duplicates {seen[key]!r}"
                    )
                seen[key] = entry.term
                self._forms.append((key, entry))
        # Longest forms first so that "破大防" is preferred over a shorter overlapping form.
        self._forms.sort(key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def load(cls, path: Path | None = None) -> Lexicon:
        """Load and validate a lexicon file (the packaged one when ``path`` is None)."""
        if path is None:
            packaged = resources.files("serve_app.understanding").joinpath("data", DEFAULT_LEXICON)
            text = packaged.read_text("utf-8")
            source = f"serve_app/understanding/data/{DEFAULT_LEXICON}"
        else:
            text = Path(path).read_text("utf-8")
            source = str(path)
        try:
            document = LexiconFile.model_validate(yaml.safe_load(text))
        except ValidationError as exc:
            raise ValueError(f"{source}: invalid lexicon: {exc}") from exc
        return cls(document.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, *texts: str | None) -> list[LexiconHit]:
        """Entries found in any of ``texts``, each once, in order of first appearance.

        A form that only occurs inside a longer form already matched (``破防`` inside
        ``破大防``) does not count again.
        """
        hits: dict[str, tuple[int, LexiconHit]] = {}
        for text_index, text in enumerate(t for t in texts if t):
            folded = fold(text)
            covered = [False] * len(folded)
            whole_tokens = set(tokens(text))
            for key, entry in self._forms:
                if entry.term in hits or (entry.standalone and key not in whole_tokens):
                    continue
                position = _first_uncovered(folded, key, covered)
                if position < 0:
                    continue
                for i in range(position, position + len(key)):
                    covered[i] = True
                order = text_index * 1_000_000 + position
                hits[entry.term] = (order, LexiconHit(entry=entry, matched=key))
        return [hit for _, hit in sorted(hits.values(), key=lambda item: item[0])]


def _first_uncovered(folded: str, key: str, covered: list[bool]) -> int:
    """Start of the first occurrence of ``key`` not wholly inside matched spans, or -1."""
    start = folded.find(key)
    while start >= 0:
        if not all(covered[start : start + len(key)]):
            return start
        start = folded.find(key, start + 1)
    return -1
