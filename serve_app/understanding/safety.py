"""Output filter for the free-text explanation.

The explanation is shown to people and stored; whatever the image or the context
said, it must not carry links, markup, special tokens or instructions. Sentences that
read as instructions (prompt-injection echoes) are dropped whole; the rest is cleaned
and cut to the length cap.
"""

from __future__ import annotations

import re
import unicodedata

_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<!--.*?-->", re.DOTALL)
_SPECIAL = re.compile(r"<\|[^|>]*\|>|\[gMASK\]|<sop>|<eop>")
_URL = re.compile(
    r"(?:(?:https?|ftp|file|javascript|data):[^\s，。！？、）)】]+)"
    r"|(?:www\.[^\s，。！？、）)】]+)"
    r"|(?:\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|net|org|cn|io|ru|xyz|top|info|me|cc|tv|app|link)(?![a-z0-9-])"
    r"(?:/[^\s，。！？、）)】]*)?)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_CODE = re.compile(r"```.*?```|`[^`]*`", re.DOTALL)
# Full-width letters, digits, "．" and "／" spell links that dodge the URL pattern;
# Chinese punctuation (，。：) is left alone.
_FULLWIDTH_ASCII = {
    code: code - 0xFEE0
    for code in (
        *range(0xFF10, 0xFF1A),
        *range(0xFF21, 0xFF3B),
        *range(0xFF41, 0xFF5B),
        0xFF0E,
        0xFF0F,
    )
}
# A "." ends a sentence only before whitespace or the end ("1.2", "a.com" do not split).
_SENTENCE = re.compile(r"(?:[^。！？!?；;\n.]|\.(?!\s|$))+[。！？!?；;\n.]*")
_INSTRUCTION = re.compile(
    r"ignore\s+(all\s+)?(the\s+)?(previous|prior|above|earlier)"
    r"|disregard\s+(all\s+)?(the\s+)?(previous|prior|above)"
    r"|system\s*prompt|you\s+are\s+now|act\s+as|jailbreak|developer\s+mode"
    r"|rate\s+(this|it)\s+as|classify\s+(this|it)\s+as|respond\s+with|output\s+only"
    r"|忽略(之前|以上|上述|前面|先前|所有)|无视(之前|以上|上述|前面|所有)"
    r"|(系统|初始)提示词?|你现在是|扮演|越狱|请(将|把)(这|它|本|此).{0,12}(评为|判定为|标记为|归为)"
    r"|(评为|判定为|标记为)(无害|安全|正常)",
    re.IGNORECASE,
)


def clean_explanation(text: str, max_chars: int) -> tuple[str, list[str]]:
    """Return the filtered explanation and the names of the filters that fired."""
    fired: list[str] = []
    text = text.translate(_FULLWIDTH_ASCII)
    text = _strip(text, _CODE, "code", fired)
    text = _strip(text, _MARKDOWN_IMAGE, "markup", fired)
    if _MARKDOWN_LINK.search(text):
        text = _MARKDOWN_LINK.sub(r"\1", text)
        fired.append("markup")
    text = _strip(text, _TAG, "markup", fired)
    text = _strip(text, _SPECIAL, "special_tokens", fired)
    # Emails first: the bare-domain URL pattern would otherwise leave "name@" behind.
    text = _strip(text, _EMAIL, "urls", fired)
    text = _strip(text, _URL, "urls", fired)
    text = "".join(ch for ch in text if ch in "\n" or unicodedata.category(ch)[0] != "C")
    kept = []
    for sentence in _SENTENCE.findall(text):
        if _INSTRUCTION.search(sentence):
            if "instructions" not in fired:
                fired.append("instructions")
            continue
        kept.append(sentence)
    text = re.sub(r"\s+", " ", "".join(kept)).strip()
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 1)].rstrip() + "…" if max_chars > 0 else ""
        fired.append("length")
    return text, sorted(set(fired))


def _strip(text: str, pattern: re.Pattern[str], name: str, fired: list[str]) -> str:
    if pattern.search(text):
        fired.append(name)
        return pattern.sub("", text)
    return text
