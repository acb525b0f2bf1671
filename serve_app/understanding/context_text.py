"""The request's context text (caption, comment, danmaku): normalised once, used twice.

The same normalised form is handed to the engine and used in the cache key, so two
requests whose context differs only in width of punctuation or spacing share a result.
"""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalise_context(text: str | None) -> str:
    """NFKC, control characters dropped, whitespace collapsed; ``""`` for no context."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return _SPACE.sub(" ", text).strip()


def truncate_context(text: str, max_chars: int) -> str:
    """Cut to ``max_chars`` characters (the degradation level's context budget)."""
    return text if len(text) <= max_chars else text[:max_chars]
