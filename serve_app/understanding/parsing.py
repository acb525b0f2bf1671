"""Find the JSON object in whatever a model wrote, repairing what can be repaired.

Models wrap their answer in prose, code fences, GLM ``<think>…</think>`` blocks and
``<|begin_of_box|>…<|end_of_box|>`` markers; they write trailing commas, single or
full-width quotes, bare keys, Python literals, and stop mid-object when the token
budget runs out. :func:`extract_object` copes with all of these and reports each
repair as a warning; when nothing usable is there it returns ``None`` and the
Structurer falls back to a zero-confidence answer. It never raises on any input.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

# The tempered body stops at the next tag, so unclosed tags cost linear, not quadratic, time.
_THINK_BLOCK = re.compile(r"<think>(?:(?!</?think>).)*</think>", re.DOTALL | re.IGNORECASE)
_BOX = re.compile(r"<\|begin_of_box\|>(.*?)(?:<\|end_of_box\|>|$)", re.DOTALL)
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>|\[gMASK\]|<sop>|<eop>", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_OBJECT_OPEN = re.compile(r"[{｛]")
_BARE_KEY_START = re.compile(r"[A-Za-z_\u4e00-\u9fff]")
_MAX_SCAN_CHARS = 200_000

# Opening quote -> closing quote for the string styles models use.
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」"}
_OUTSIDE_PUNCT = {"：": ":", "，": ",", "｛": "{", "｝": "}", "［": "[", "］": "]"}


@dataclass
class ParseResult:
    """The object found (or ``None``) and the repairs that were needed."""

    value: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


def extract_object(text: object) -> ParseResult:
    """Return the first usable JSON object in ``text``; never raises."""
    warnings: list[str] = []
    if not isinstance(text, str):
        return ParseResult(None, ["model_output_not_text"])
    if len(text) > _MAX_SCAN_CHARS:
        text = text[:_MAX_SCAN_CHARS]
        warnings.append("model_output_truncated_for_parsing")
    cleaned = _strip_wrappers(text, warnings)
    if not cleaned.strip():
        return ParseResult(None, [*warnings, "empty_model_output"])
    for candidate, complete in _candidates(cleaned):
        value = _load(candidate, warnings)
        if value is None and not complete:
            value = _load(_close_truncated(candidate), warnings)
            if value is not None:
                warnings.append("closed_truncated_json")
        if isinstance(value, dict) and value:
            return ParseResult(value, warnings)
    pairs = _key_value_fallback(cleaned)
    if pairs:
        return ParseResult(pairs, [*warnings, "parsed_from_prose"])
    return ParseResult(None, [*warnings, "no_json_object"])


def _strip_wrappers(text: str, warnings: list[str]) -> str:
    if "<think>" in text.lower() or "</think>" in text.lower():
        text = _THINK_BLOCK.sub("", text)
        lower = text.lower()
        if "</think>" in lower:  # closing tag without an opening one: drop what precedes it
            text = text[lower.rindex("</think>") + len("</think>") :]
        elif "<think>" in lower:  # unclosed thinking: keep only what follows the tag
            text = text[lower.index("<think>") + len("<think>") :]
        warnings.append("removed_think_block")
    box = _BOX.search(text)
    if box:
        text = box.group(1)
    text = _SPECIAL_TOKEN.sub("", text)
    fence = next((m.group(1) for m in _FENCE.finditer(text) if "{" in m.group(1)), None)
    if fence is not None:
        text = fence
    return text


def _candidates(text: str) -> list[tuple[str, bool]]:
    """Balanced ``{...}`` spans (complete) and, last, an unterminated tail (incomplete)."""
    found: list[tuple[str, bool]] = []
    start = _find_open(text, 0)
    while start >= 0 and len(found) < 8:
        end = _matching_brace(text, start)
        if end < 0:
            found.append((text[start:], False))
            break
        found.append((text[start : end + 1], True))
        start = _find_open(text, end + 1)
    # Prefer larger objects: a short "{...}" in prose before the answer is rarely it.
    found.sort(key=lambda item: (not item[1], -len(item[0])))
    return found


def _find_open(text: str, start: int) -> int:
    """Index of the next ``{`` or full-width ``｛`` at or after ``start``, else -1."""
    match = _OBJECT_OPEN.search(text, start)
    return match.start() if match else -1


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    closing: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if closing is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == closing:
                closing = None
            continue
        if ch in _QUOTES and _opens_string(text, i):
            closing = _QUOTES[ch]
        elif ch in "{｛":
            depth += 1
        elif ch in "}｝":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _opens_string(text: str, i: int) -> bool:
    """An apostrophe inside a word (don't) does not open a string."""
    if text[i] != "'":
        return True
    before = text[i - 1] if i > 0 else " "
    return not before.isalnum()


def _load(candidate: str, warnings: list[str]) -> Any:
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):
        pass
    repaired = _repair(candidate)
    try:
        value = json.loads(repaired)
    except (ValueError, RecursionError):
        value = None
    if value is not None:
        warnings.append("repaired_json")
        return value
    try:
        value = ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    warnings.append("python_literal")
    return value


def _repair(text: str) -> str:
    """Rewrite near-JSON into JSON: quotes, bare keys, literals, trailing commas."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in _QUOTES and _opens_string(text, i):
            body, i = _read_string(text, i)
            out.append(json.dumps(body, ensure_ascii=False))
            continue
        if ch in _OUTSIDE_PUNCT:
            out.append(_OUTSIDE_PUNCT[ch])
            i += 1
            continue
        if _BARE_KEY_START.match(ch):
            j = i
            while j < n and (
                text[j].isalnum() or text[j] in "_-" or "\u4e00" <= text[j] <= "\u9fff"
            ):
                j += 1
            word = text[i:j]
            k = j
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] in ":：":
                out.append(json.dumps(word, ensure_ascii=False))
            else:
                out.append(_LITERALS.get(word, json.dumps(word, ensure_ascii=False)))
            i = j
            continue
        if ch == "," and _next_significant(text, i + 1) in ("}", "]", "｝", "］", ""):
            i += 1
            continue
        if ch == "/" and text.startswith("//", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_LITERALS = {
    "true": "true",
    "True": "true",
    "TRUE": "true",
    "yes": "true",
    "false": "false",
    "False": "false",
    "FALSE": "false",
    "no": "false",
    "null": "null",
    "None": "null",
    "NULL": "null",
    "none": "null",
    "NaN": "null",
    "nan": "null",
    "Infinity": "null",
    "undefined": "null",
}


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read a string opened at ``start``; returns its body and the index after it."""
    closing = _QUOTES[text[start]]
    body: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            body.append(
                {"n": "\n", "t": "\t", "r": "", '"': '"', "'": "'", "\\": "\\"}.get(nxt, nxt)
            )
            i += 2
            continue
        if ch == closing:
            return "".join(body), i + 1
        body.append(ch)
        i += 1
    return "".join(body), i


def _next_significant(text: str, i: int) -> str:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return text[i] if i < len(text) else ""


def _close_truncated(text: str) -> str:
    """Close an object cut off mid-way: open string, dangling key, open brackets."""
    stack: list[str] = []
    closing: str | None = None
    escaped = False
    for ch in text:
        if closing is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == closing:
                closing = None
            continue
        if ch in _QUOTES:
            closing = _QUOTES[ch]
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    repaired = text + (closing or "")
    repaired = re.sub(r"[,:：，\s]+$", "", repaired)
    # A trailing key without a value ("..., "explanation") is dropped.
    repaired = re.sub(r',\s*"[^"]*"$', "", repaired)
    return repaired + "".join(reversed(stack))


_PROSE_FIELD = re.compile(
    r"(?P<key>emotion|intent|sarcastic|sarcasm|offensiveness|confidence|explanation|"
    r"情绪|情感|意图|是否讽刺|讽刺|冒犯程度|攻击性|置信度|解释|理由)"
    r"\s*[:：=]\s*(?P<value>[^\n,，;；]+)",
    re.IGNORECASE,
)


def _key_value_fallback(text: str) -> dict[str, Any]:
    """Last resort: ``emotion: sarcasm`` / ``情绪：讽刺`` lines in prose."""
    found: dict[str, Any] = {}
    for match in _PROSE_FIELD.finditer(text):
        key = match.group("key").lower()
        value = match.group("value").strip().strip("\"'“”*` ").rstrip("。.")
        if value:
            found.setdefault(key, value)
    return found
