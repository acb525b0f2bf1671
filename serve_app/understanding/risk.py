"""Risk tier and moderation action from offensiveness × confidence."""

from __future__ import annotations

from serve_app.config.models import RiskThresholds
from serve_app.understanding.analysis import Risk


def assess_risk(offensiveness: int, confidence: float, thresholds: RiskThresholds) -> Risk:
    """Map ``offensiveness * confidence`` (0..3) onto none/low/medium/high.

    The product weighs how offensive the meme is by how sure the engine is, so an
    unsure "3" (e.g. the lite engine on a single ambiguous word) is tagged for a
    person rather than blocked outright.
    """
    score = max(0, min(3, offensiveness)) * max(0.0, min(1.0, confidence))
    if offensiveness > 0 and score >= thresholds.block:
        return Risk(level="high", action="block")
    if offensiveness > 0 and score >= thresholds.tag:
        return Risk(level="medium", action="tag")
    if offensiveness > 0 and score >= thresholds.throttle:
        return Risk(level="low", action="throttle")
    return Risk(level="none", action="pass")
