"""Fixtures of the scenes tests: the real fingerprinter and real generated memes."""

from __future__ import annotations

import pytest

from serve_app.media.fingerprint import Fingerprinter
from tests.unit.scenes.meme_copies import Meme, make_meme


@pytest.fixture(scope="session")
def fingerprinter() -> Fingerprinter:
    return Fingerprinter()


@pytest.fixture(scope="session")
def memes(fingerprinter: Fingerprinter) -> list[Meme]:
    """Three memes on different templates, each with its copies and a caption variant."""
    return [
        make_meme(fingerprinter, 7101, "破防了", "你说得对，但是"),
        make_meme(fingerprinter, 7102, "笑死我了", "绝绝子"),
        make_meme(fingerprinter, 7103, "我真的会谢", "摆烂了"),
    ]
