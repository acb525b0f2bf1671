"""The request's context text (caption, comment, danmaku): normalised once, used twice.

The same normalised form is handed to the engine and used in the cache key, so two
requests whose context differs only in width of punctuation or spacing share a result.
"""

from __future__ import annotations

import re
import unicodedata

from serve_app.errors import SchemaError

_SPACE = re.compile(r"\s+")


def normalise_context(text: str | None) -> str:
    """NFKC, control characters dropped, whitespace collapsed; ``""`` for no context."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return _SPACE.sub(" ", text).strip()


def check_context_length(text: str | None, max_chars: int) -> None:
    """Refuse (422) a context text over ``limits.max_text_chars`` characters."""
    if text is not None and len(text) > max_chars:
        raise SchemaError(f"text is {len(text)} characters; the limit is {max_chars}")


def truncate_context(text: str, max_chars: int) -> str:
    """Cut to ``max_chars`` characters (the degradation level's context budget)."""
    return text if len(text) <= max_chars else text[:max_chars]
