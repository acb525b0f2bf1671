"""Server-sent events for ``POST /v1/memes/analyze/stream`` (framework-free).

The engine streams model text, which is JSON with the labels first and the
explanation after them. :class:`ExplanationTap` watches that text as it grows, pulls
out the ``"explanation"`` string as the model writes it, and releases it sentence by
sentence through the same output filter the final analysis gets (no links, markup
or instruction-like sentences ever reach a client early), within the level's cap.
The final ``result`` event carries the Structurer's analysis, which is authoritative.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Final

from serve_app.understanding.safety import clean_explanation

EVENTS: Final[tuple[str, ...]] = ("accepted", "cache", "delta", "result", "error")

# The key as a model writes it: `"explanation"` (or its Chinese name), then a colon.
_KEY = re.compile(r'"(?:explanation|解释|理由)"\s*:\s*"')
_SENTENCE_END: Final[str] = "。！？!?；;\n"
_ESCAPES: Final[dict[str, str]] = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (``event:`` and a single-line JSON ``data:``)."""
    assert event in EVENTS, event
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


class ExplanationTap:
    """Incrementally extract and filter the explanation from streamed model JSON."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._seen = ""  # raw model text so far
        self._scan_from = 0  # where the explanation key search resumes
        self._value_at: int | None = None  # index in _seen where the string value starts
        self._decoded = ""  # explanation characters decoded so far
        self._consumed = 0  # raw characters of the value already decoded
        self._closed = False
        self._released = 0  # characters of _decoded already turned into deltas
        self._sent = 0  # characters sent to the client (after filtering)

    def feed(self, text: str) -> list[str]:
        """Add model text; return the filtered explanation pieces now complete."""
        self._seen += text
        if self._value_at is None:
            match = _KEY.search(self._seen, max(0, self._scan_from - 24))
            if match is None:
                self._scan_from = len(self._seen)
                return []
            self._value_at = match.end()
        if not self._closed:
            self._decode()
        return self._release(final=self._closed)

    def flush(self) -> list[str]:
        """The model finished: release whatever explanation text is still held."""
        return self._release(final=True)

    def _decode(self) -> None:
        assert self._value_at is not None
        raw = self._seen[self._value_at :]
        index = self._consumed
        while index < len(raw):
            char = raw[index]
            if char == '"':
                self._closed = True
                index += 1
                break
            if char == "\\":
                if index + 1 >= len(raw):
                    break  # the escape's second half has not arrived yet
                code = raw[index + 1]
                if code == "u":
                    if index + 6 > len(raw):
                        break
                    with contextlib.suppress(ValueError):  # a broken escape is dropped
                        self._decoded += chr(int(raw[index + 2 : index + 6], 16))
                    index += 6
                    continue
                self._decoded += _ESCAPES.get(code, code)
                index += 2
                continue
            self._decoded += char
            index += 1
        self._consumed = index

    def _release(self, final: bool) -> list[str]:
        pending = self._decoded[self._released :]
        if not pending:
            return []
        if final:
            cut = len(pending)
        else:
            ends = [pending.rfind(mark) for mark in _SENTENCE_END]
            cut = max(ends) + 1
            if cut <= 0:
                return []
        self._released += cut
        room = self._max_chars - self._sent
        if room <= 0:
            return []
        piece, _ = clean_explanation(pending[:cut], room)
        if not piece:
            return []
        self._sent += len(piece)
        return [piece]
