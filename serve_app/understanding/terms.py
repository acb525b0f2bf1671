"""Multi-pattern term matching: the platforms' term lists, found in OCR text and context.

Every term and every text is compared in the one matching form of
:func:`serve_app.understanding.normalize.normalize`, so ``你說得對``, ``ＮＳＤＤ`` and
``你.说 得对`` all find the term ``你说得对``. :class:`TermMatcher` builds one
Aho–Corasick automaton (pyahocorasick) over the normalised terms of all lists, so a
search costs one pass over each text whatever the number of terms.
:class:`KeywordAutomaton` is that automaton on its own, also used by the slang lexicon.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

import ahocorasick

from serve_app.understanding.normalize import normalize

logger = logging.getLogger(__name__)

TermAction = Literal["block", "review", "pass"]

V = TypeVar("V")

# Keys and texts go into the automaton as UTF-8: pyahocorasick finds a node's child by
# scanning the node's children, and over hanzi the root alone has thousands of them (one
# per distinct first character), while over bytes no node has more than 256. At 10**5
# terms this took a call of the benchmark from ~120 µs to ~3 µs. A str build of
# pyahocorasick is given one character per byte (latin-1), a bytes build the bytes
# themselves. UTF-8 is self-synchronising, so every match starts on a character boundary.
_UNICODE: Final[bool] = bool(ahocorasick.unicode)


def _encode(text: str) -> Any:
    """``text`` as UTF-8, in the form the installed pyahocorasick build takes."""
    raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("latin-1") if _UNICODE else raw


def _char_index(encoded: str | bytes, offset: int) -> int:
    """The character index of byte ``offset`` of an :func:`_encode`-d text."""
    prefix = encoded[:offset]
    if isinstance(prefix, str):
        prefix = prefix.encode("latin-1")
    return len(prefix.decode("utf-8", "surrogatepass"))


class KeywordAutomaton(Generic[V]):
    """An Aho–Corasick automaton over already-normalised keys, each with a value.

    An automaton with no keys is allowed and finds nothing.
    """

    def __init__(self, items: Mapping[str, V]) -> None:
        self._automaton = ahocorasick.Automaton()
        for key, value in items.items():
            if not key:
                raise ValueError("an automaton key may not be empty")
            encoded = _encode(key)
            self._automaton.add_word(encoded, (key, len(encoded), value))
        self._size = len(items)
        if self._size:
            self._automaton.make_automaton()

    def __len__(self) -> int:
        return self._size

    def finditer(self, text: str) -> Iterator[tuple[int, str, V]]:
        """Every occurrence of every key in ``text``, overlapping ones included.

        Yields ``(start, key, value)`` with ``start`` a character index, in order of the
        occurrence's end; occurrences of one key therefore come in order of start.
        """
        if not self._size or not text:
            return
        encoded = _encode(text)
        ascii_only = len(encoded) == len(text)
        for end, (key, size, value) in self._automaton.iter(encoded):
            start = end + 1 - size
            yield (start if ascii_only else _char_index(encoded, start)), key, value


@dataclass(frozen=True)
class TermEntry:
    """One term of a named list, with what the list says to do when it is found."""

    term: str
    list_name: str
    action: TermAction


@dataclass(frozen=True)
class TermHit:
    """A term found in a text.

    ``where`` is the caller's label of the text's source (``"ocr"``, ``"context"`` …);
    ``matched`` is the normalised form that was found.
    """

    term: str
    list_name: str
    action: TermAction
    where: str
    matched: str


class TermMatcher:
    """The terms of any number of lists, found in texts with one automaton.

    Raises ValueError for a term whose normalised form is empty (``"，，"``) and for one
    ``(list_name, term)`` given twice with different actions; an exact repeat of an entry
    is dropped. The same normalised term in several lists keeps every list's entry.
    """

    def __init__(self, entries: Iterable[TermEntry]) -> None:
        by_key: dict[str, list[TermEntry]] = {}
        seen: dict[tuple[str, str], TermEntry] = {}
        for entry in entries:
            prior = seen.get((entry.list_name, entry.term))
            if prior is not None:
                if prior.action != entry.action:
                    raise ValueError(
                        f"term {entry.term!r} of list {entry.list_name!r} is given twice, "
                        f"as {prior.action!r} and as {entry.action!r}"
                    )
                continue
            key = normalize(entry.term)
            if not key:
                raise ValueError(
                    f"term {entry.term!r} of list {entry.list_name!r} is empty once "
                    "normalised (it has no letters or digits)"
                )
            seen[(entry.list_name, entry.term)] = entry
            by_key.setdefault(key, []).append(entry)
        self._entries: tuple[TermEntry, ...] = tuple(seen.values())
        self._automaton: KeywordAutomaton[tuple[TermEntry, ...]] = KeywordAutomaton(
            {key: tuple(group) for key, group in by_key.items()}
        )
        logger.debug(
            "term matcher: %d entries, %d distinct normalised terms",
            len(self._entries),
            len(self._automaton),
        )

    def __len__(self) -> int:
        """The number of entries (exact repeats counted once)."""
        return len(self._entries)

    @property
    def empty(self) -> bool:
        """True when the matcher has no entries (and finds nothing)."""
        return not self._entries

    def find(self, sources: Mapping[str, Iterable[str]]) -> list[TermHit]:
        """The terms found in ``sources`` (source label → its texts).

        Each text is normalised and searched once. Each ``(list_name, term)`` is reported
        once, at its first appearance: sources in mapping order, texts in order, and
        within a text by start position (a longer term first where two start together).
        A bare string given as a source's texts counts as one text; empty texts are
        skipped.
        """
        hits: list[TermHit] = []
        if self.empty:
            return hits
        reported: set[tuple[str, str]] = set()
        for where, texts in sources.items():
            for text in [texts] if isinstance(texts, str) else texts:
                if not text:
                    continue
                found = sorted(
                    self._automaton.finditer(normalize(text)),
                    key=lambda occurrence: (occurrence[0], -len(occurrence[1])),
                )
                for _, key, group in found:
                    for entry in group:
                        ident = (entry.list_name, entry.term)
                        if ident in reported:
                            continue
                        reported.add(ident)
                        hits.append(
                            TermHit(
                                term=entry.term,
                                list_name=entry.list_name,
                                action=entry.action,
                                where=where,
                                matched=key,
                            )
                        )
        return hits
