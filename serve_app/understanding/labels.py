"""The closed label sets of the analysis schema (DESIGN.md §3) and their synonyms.

Models, the lexicon and people write labels in many ways (``讽刺``, ``阴阳怪气``,
``Sarcastic``, ``joy``); :func:`normalise_emotion` and :func:`normalise_intent` map
every known spelling onto the closed set and return ``None`` for anything else.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final, Literal, get_args

Emotion = Literal[
    "happiness",
    "excitement",
    "love",
    "anger",
    "sorrow",
    "fear",
    "disgust",
    "surprise",
    "sarcasm",
    "neutral",
]
Intent = Literal["interactive", "expressive", "entertaining", "offensive", "complaint", "other"]
RiskLevel = Literal["none", "low", "medium", "high"]
RiskAction = Literal["pass", "throttle", "tag", "block"]

EMOTIONS: Final[tuple[str, ...]] = get_args(Emotion)
INTENTS: Final[tuple[str, ...]] = get_args(Intent)

EMOTION_ZH: Final[dict[str, str]] = {
    "happiness": "快乐",
    "excitement": "兴奋",
    "love": "喜爱",
    "anger": "愤怒",
    "sorrow": "悲伤",
    "fear": "恐惧",
    "disgust": "厌恶",
    "surprise": "惊讶",
    "sarcasm": "讽刺",
    "neutral": "中性",
}

INTENT_ZH: Final[dict[str, str]] = {
    "interactive": "互动",
    "expressive": "表达",
    "entertaining": "娱乐",
    "offensive": "冒犯",
    "complaint": "投诉",
    "other": "其他",
}

_EMOTION_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    "happiness": (
        "happy",
        "joy",
        "joyful",
        "glad",
        "cheerful",
        "amusement",
        "amused",
        "funny",
        "开心",
        "高兴",
        "快乐",
        "愉快",
        "喜悦",
        "欢乐",
        "幸福",
        "搞笑",
        "好笑",
    ),
    "excitement": ("excited", "thrilled", "hype", "hyped", "兴奋", "激动", "亢奋", "燃"),
    "love": (
        "affection",
        "adoration",
        "loving",
        "cute",
        "喜爱",
        "喜欢",
        "爱",
        "爱慕",
        "可爱",
        "心动",
        "宠爱",
    ),
    "anger": (
        "angry",
        "rage",
        "furious",
        "mad",
        "annoyed",
        "irritated",
        "frustration",
        "frustrated",
        "愤怒",
        "生气",
        "恼火",
        "暴怒",
        "气愤",
        "不满",
        "烦躁",
    ),
    "sorrow": (
        "sad",
        "sadness",
        "grief",
        "depressed",
        "depression",
        "melancholy",
        "upset",
        "悲伤",
        "难过",
        "伤心",
        "忧伤",
        "悲哀",
        "沮丧",
        "emo",
        "失落",
        "心碎",
    ),
    "fear": ("afraid", "scared", "anxiety", "anxious", "terror", "恐惧", "害怕", "恐慌", "焦虑"),
    "disgust": (
        "disgusted",
        "disgusting",
        "contempt",
        "gross",
        "厌恶",
        "恶心",
        "反感",
        "嫌弃",
        "鄙视",
        "下头",
    ),
    "surprise": ("surprised", "shock", "shocked", "astonished", "惊讶", "震惊", "吃惊", "意外"),
    "sarcasm": (
        "sarcastic",
        "irony",
        "ironic",
        "mocking",
        "mockery",
        "satire",
        "satirical",
        "讽刺",
        "嘲讽",
        "挖苦",
        "反讽",
        "阴阳怪气",
        "阴阳",
        "讥讽",
        "嘲笑",
        "调侃",
    ),
    "neutral": ("none", "calm", "no emotion", "中性", "中立", "平静", "无", "无情绪", "一般"),
}

_INTENT_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    "interactive": (
        "interaction",
        "engage",
        "engagement",
        "question",
        "asking",
        "互动",
        "交流",
        "提问",
        "求助",
        "询问",
    ),
    "expressive": (
        "expression",
        "express",
        "self-expression",
        "表达",
        "抒发",
        "表达情绪",
        "宣泄",
        "自我表达",
    ),
    "entertaining": (
        "entertainment",
        "entertain",
        "humor",
        "humour",
        "humorous",
        "joke",
        "fun",
        "娱乐",
        "搞笑",
        "玩梗",
        "整活",
        "逗乐",
        "消遣",
    ),
    "offensive": (
        "offense",
        "offence",
        "insult",
        "insulting",
        "attack",
        "harassment",
        "hate",
        "hateful",
        "abusive",
        "冒犯",
        "攻击",
        "侮辱",
        "辱骂",
        "引战",
        "挑衅",
        "歧视",
    ),
    "complaint": (
        "complain",
        "complaining",
        "grievance",
        "feedback",
        "投诉",
        "抱怨",
        "吐槽",
        "维权",
        "申诉",
        "差评",
    ),
    "other": ("unknown", "misc", "miscellaneous", "other", "其他", "其它", "未知", "无"),
}


def _key(text: str) -> str:
    """Lookup key: NFKC, lower case, surrounding space and separators removed."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    return re.sub(r"[\s_\-/]+", " ", text).strip()


def _build_index(canon: tuple[str, ...], synonyms: dict[str, tuple[str, ...]]) -> dict[str, str]:
    index: dict[str, str] = {}
    for label in canon:
        index[_key(label)] = label
    for label, words in synonyms.items():
        for word in words:
            index.setdefault(_key(word), label)
    return index


_EMOTION_INDEX: Final = _build_index(EMOTIONS, _EMOTION_SYNONYMS)
_INTENT_INDEX: Final = _build_index(INTENTS, _INTENT_SYNONYMS)
for _label, _zh in EMOTION_ZH.items():
    _EMOTION_INDEX.setdefault(_key(_zh), _label)
for _label, _zh in INTENT_ZH.items():
    _INTENT_INDEX.setdefault(_key(_zh), _label)


def _lookup(value: object, index: dict[str, str]) -> str | None:
    if not isinstance(value, str):
        return None
    key = _key(value)
    if key in index:
        return index[key]
    # "sarcasm (讽刺)", "讽刺/嘲讽", "Emotion: anger" — try each word-like piece.
    for piece in re.split(r"[\s,，、/|()（）:：;；]+", key):
        if piece and piece in index:
            return index[piece]
    return None


def normalise_emotion(value: object) -> str | None:
    """Map any known spelling of an emotion to the closed set, else ``None``."""
    return _lookup(value, _EMOTION_INDEX)


def normalise_intent(value: object) -> str | None:
    """Map any known spelling of an intent to the closed set, else ``None``."""
    return _lookup(value, _INTENT_INDEX)
