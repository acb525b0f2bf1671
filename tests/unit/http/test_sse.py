"""The explanation tap and the SSE encoding of the stream endpoint."""

from __future__ import annotations

import json

import pytest

from serve_app.http.client import SseParser
from serve_app.http.sse import ExplanationTap, sse

ANSWER = json.dumps(
    {
        "emotion": "sarcasm",
        "intent": "offensive",
        "sarcastic": True,
        "explanation": '先认同再转折。语气"阴阳怪气"！详见 http://evil.example/x 。最后一句',
        "ocr_text": ["你说得对"],
    },
    ensure_ascii=False,
)


def feed_in_chunks(tap: ExplanationTap, text: str, size: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(text), size):
        out += tap.feed(text[start : start + size])
    return out + tap.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sentences_come_out_filtered_whatever_the_chunking(size: int) -> None:
    pieces = feed_in_chunks(ExplanationTap(300), ANSWER, size)
    text = "".join(pieces)
    assert text.startswith("先认同再转折。")
    assert '"阴阳怪气"' in text and "最后一句" in text
    assert "http" not in text and "evil.example" not in text
    if size < len(ANSWER):  # arriving piecemeal, a sentence is released at its end
        assert pieces[0] == "先认同再转折。"


def test_nothing_before_the_key_and_nothing_after_the_value() -> None:
    tap = ExplanationTap(300)
    assert tap.feed('{"emotion": "neutral", "intent": "other", ') == []
    assert tap.feed('"explanation": "好的。", "ocr_text": ["尾巴。"]}') == ["好的。"]
    assert tap.flush() == []


def test_unicode_escapes_split_across_chunks() -> None:
    raw = json.dumps({"explanation": "笑死。"})  # ASCII-escaped: \\u7b11\\u6b7b
    assert "\\u" in raw
    assert "".join(feed_in_chunks(ExplanationTap(300), raw, 1)) == "笑死。"


def test_the_cap_bounds_what_is_streamed() -> None:
    raw = json.dumps({"explanation": "一二三四五。六七八九十。"}, ensure_ascii=False)
    assert len("".join(feed_in_chunks(ExplanationTap(8), raw, 2))) <= 8


def test_gibberish_yields_no_deltas() -> None:
    assert feed_in_chunks(ExplanationTap(300), "朋太太�朋 explanation 太", 2) == []


def test_sse_frames_parse_back() -> None:
    parser = SseParser()
    frames = sse("accepted", {"request_id": "r"}) + sse("delta", {"text": "换行\n也行"})
    events = [parser.feed(line) for line in frames.decode().split("\n")]
    parsed = [event for event in events if event is not None]
    assert [(e.event, e.data) for e in parsed] == [
        ("accepted", {"request_id": "r"}),
        ("delta", {"text": "换行\n也行"}),
    ]
