"""The curated slang / meme lexicon (``data/slang_lexicon.yaml`` here) and its matcher.

Text and every form are compared in the one matching form of
:func:`serve_app.understanding.normalize.normalize` — NFKC, traditional → simplified,
lower case, separators and invisible characters removed, pinyin abbreviations expanded —
so ``你说得对，但是``, ``你說得對，但是`` and ``nsdd，但是`` all match the entry
``你说得对但是``. Entries marked ``standalone`` (one-character terms such as ``典``) count
only when they form a whole token on their own, so they do not fire inside ordinary words
(``字典``). All forms are found in one pass by an Aho–Corasick automaton.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.understanding.labels import Emotion, Intent
from serve_app.understanding.normalize import normalize, normalize_tokens
from serve_app.understanding.terms import KeywordAutomaton

logger = logging.getLogger(__name__)

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


class Lexicon:
    """A loaded lexicon; :meth:`find` returns the entries present in a text."""

    def __init__(self, entries: Iterable[LexiconEntry]) -> None:
        """Index the entries' forms; ValueError for an empty form or one shared by two entries.

        Two forms of the *same* entry that normalise alike (``yygq`` and ``阴阳怪气``) are
        kept once.
        """
        self.entries: tuple[LexiconEntry, ...] = tuple(entries)
        self._forms: dict[str, LexiconEntry] = {}
        owners: dict[str, int] = {}
        for index, entry in enumerate(self.entries):
            for form in (entry.term, *entry.aliases):
                key = normalize(form)
                if not key:
                    raise ValueError(f"lexicon entry {entry.term!r} has an empty form {form!r}")
                owner = owners.get(key)
                if owner == index:
                    continue
                if owner is not None:
                    raise ValueError(
                        f"lexicon form {form!r} of {entry.term!r} duplicates "
                        f"{self.entries[owner].term!r} (both read {key!r})"
                    )
                owners[key] = index
                self._forms[key] = entry
        # Longest forms first (ties in file order) so that "破大防" is preferred over a
        # shorter overlapping form.
        self._rank: dict[str, int] = {
            key: rank for rank, key in enumerate(sorted(self._forms, key=len, reverse=True))
        }
        self._automaton: KeywordAutomaton[LexiconEntry] = KeywordAutomaton(self._forms)

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

        Each text is normalised (:func:`~serve_app.understanding.normalize.normalize`)
        and searched once. Longer forms are matched first, and a form that only occurs
        inside occurrences of longer forms already matched (``破防`` inside ``破大防``)
        does not count again. A ``standalone`` form counts only where it is a whole
        token of the text.
        """
        hits: dict[str, tuple[int, LexiconHit]] = {}
        for text_index, text in enumerate(t for t in texts if t):
            pieces = normalize_tokens(text)
            folded = "".join(pieces)
            whole_tokens = set(pieces)
            starts: dict[str, list[int]] = {}
            for start, key, _ in self._automaton.finditer(folded):
                starts.setdefault(key, []).append(start)
            covered = [False] * len(folded)
            for key in sorted(starts, key=self._rank.__getitem__):
                entry = self._forms[key]
                if entry.standalone and key not in whole_tokens:
                    continue
                size = len(key)
                fresh = [s for s in starts[key] if not all(covered[s : s + size])]
                if not fresh:
                    continue
                # Every occurrence counts as matched, so no shorter form fires inside
                # a second one (or inside one of an entry already found).
                for start in fresh:
                    covered[start : start + size] = [True] * size
                if entry.term not in hits:
                    order = text_index * 1_000_000 + fresh[0]
                    hits[entry.term] = (order, LexiconHit(entry=entry, matched=key))
        return [hit for _, hit in sorted(hits.values(), key=lambda item: item[0])]
