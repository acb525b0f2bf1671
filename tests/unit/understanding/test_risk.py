"""Risk tiers from offensiveness × confidence, and the threshold model."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from serve_app.config.models import RiskThresholds, StructurerUserConfig
from serve_app.understanding.risk import assess_risk

DEFAULT = RiskThresholds()  # throttle 0.5, tag 1.2, block 2.0


def _tier(
    offensiveness: int, confidence: float, thresholds: RiskThresholds = DEFAULT
) -> tuple[str, str]:
    risk = assess_risk(offensiveness, confidence, thresholds)
    return risk.level, risk.action


def test_defaults() -> None:
    """The documented default thresholds."""
    assert (DEFAULT.throttle, DEFAULT.tag, DEFAULT.block) == (0.5, 1.2, 2.0)


@pytest.mark.parametrize(
    ("offensiveness", "confidence", "expected"),
    [
        # offensiveness 1: the score is the confidence itself, so thresholds are exact.
        (1, 0.5, ("low", "throttle")),
        (1, math.nextafter(0.5, 0.0), ("none", "pass")),
        (1, 1.0, ("low", "throttle")),
        (2, 0.25, ("low", "throttle")),  # 0.5 exactly
        (2, math.nextafter(0.25, 0.0), ("none", "pass")),
        (2, 0.6, ("medium", "tag")),  # 1.2 exactly
        (2, math.nextafter(0.6, 0.0), ("low", "throttle")),
        (2, 1.0, ("high", "block")),  # 2.0 exactly
        (2, math.nextafter(1.0, 0.0), ("medium", "tag")),
        (3, 0.4, ("medium", "tag")),  # 1.2000000000000002
        (3, 1.0, ("high", "block")),
        (3, 0.7, ("high", "block")),  # 2.1
        (3, 0.6, ("medium", "tag")),  # 1.8
        (3, 0.2, ("low", "throttle")),  # 0.6
        (3, 0.1, ("none", "pass")),  # 0.3
    ],
)
def test_default_tiers_at_boundaries(
    offensiveness: int, confidence: float, expected: tuple[str, str]
) -> None:
    """A score equal to a threshold reaches that tier (>=); just below does not."""
    assert _tier(offensiveness, confidence) == expected


@pytest.mark.parametrize("confidence", [0.0, 0.5, 0.99, 1.0, 5.0])
@pytest.mark.parametrize(
    "thresholds",
    [
        DEFAULT,
        RiskThresholds(throttle=0.0, tag=0.0, block=0.0),
        RiskThresholds(throttle=0.0, tag=0.1, block=0.2),
    ],
    ids=["default", "all_zero", "low"],
)
def test_offensiveness_zero_always_passes(confidence: float, thresholds: RiskThresholds) -> None:
    """Nothing offensive is never acted on, whatever the confidence or thresholds."""
    assert _tier(0, confidence, thresholds) == ("none", "pass")


@pytest.mark.parametrize("offensiveness", [-5, -1, 0])
def test_non_positive_offensiveness_passes(offensiveness: int) -> None:
    """Negative offensiveness (out of schema) is treated as not offensive."""
    assert _tier(offensiveness, 1.0) == ("none", "pass")


@pytest.mark.parametrize(
    ("offensiveness", "confidence", "expected"),
    [
        (9, 1.0, ("high", "block")),  # clamped to 3
        (3, 7.5, ("high", "block")),  # confidence clamped to 1
        (3, -1.0, ("none", "pass")),  # confidence clamped to 0
        (1, 0.0, ("none", "pass")),
    ],
)
def test_inputs_are_clamped(
    offensiveness: int, confidence: float, expected: tuple[str, str]
) -> None:
    """Out-of-range inputs are clamped onto 0..3 and 0..1 before scoring."""
    assert _tier(offensiveness, confidence) == expected


@pytest.mark.parametrize(
    ("thresholds", "offensiveness", "confidence", "expected"),
    [
        (RiskThresholds(throttle=1.0, tag=2.0, block=3.0), 1, 1.0, ("low", "throttle")),
        (RiskThresholds(throttle=1.0, tag=2.0, block=3.0), 2, 1.0, ("medium", "tag")),
        (RiskThresholds(throttle=1.0, tag=2.0, block=3.0), 3, 1.0, ("high", "block")),
        (RiskThresholds(throttle=1.0, tag=2.0, block=3.0), 3, 0.5, ("low", "throttle")),
        (RiskThresholds(throttle=0.1, tag=0.2, block=0.3), 1, 0.3, ("high", "block")),
        (RiskThresholds(throttle=0.1, tag=0.2, block=0.3), 1, 0.2, ("medium", "tag")),
        (RiskThresholds(throttle=0.1, tag=0.2, block=0.3), 1, 0.1, ("low", "throttle")),
        (RiskThresholds(throttle=0.1, tag=0.2, block=0.3), 1, 0.05, ("none", "pass")),
        # Equal thresholds: the highest tier reached wins.
        (RiskThresholds(throttle=1.0, tag=1.0, block=1.0), 1, 1.0, ("high", "block")),
        (RiskThresholds(throttle=1.0, tag=1.0, block=1.0), 1, 0.99, ("none", "pass")),
        (RiskThresholds(throttle=0.5, tag=1.5, block=1.5), 3, 0.5, ("high", "block")),
        # Zero thresholds: anything offensive is blocked, even at zero confidence.
        (RiskThresholds(throttle=0.0, tag=0.0, block=0.0), 1, 0.0, ("high", "block")),
        # Block at 3 needs offensiveness 3 with full confidence.
        (RiskThresholds(throttle=3.0, tag=3.0, block=3.0), 3, 0.99, ("none", "pass")),
        (RiskThresholds(throttle=3.0, tag=3.0, block=3.0), 3, 1.0, ("high", "block")),
    ],
)
def test_custom_thresholds(
    thresholds: RiskThresholds, offensiveness: int, confidence: float, expected: tuple[str, str]
) -> None:
    """Custom thresholds move the tier boundaries."""
    assert _tier(offensiveness, confidence, thresholds) == expected


@pytest.mark.parametrize(
    "values",
    [
        {"throttle": 1.0, "tag": 0.5, "block": 2.0},
        {"throttle": 0.5, "tag": 2.5, "block": 2.0},
        {"throttle": 2.5, "tag": 1.2, "block": 2.0},
        {"throttle": 3.0, "tag": 2.0, "block": 1.0},
        {"tag": 2.5},  # above the default block
        {"throttle": 1.5},  # above the default tag
    ],
)
def test_unordered_thresholds_rejected(values: dict[str, float]) -> None:
    """throttle <= tag <= block is enforced."""
    with pytest.raises(ValidationError, match="throttle <= tag <= block"):
        RiskThresholds(**values)


@pytest.mark.parametrize(
    "values",
    [{"throttle": -0.1}, {"block": 3.5}, {"tag": "high"}, {"throttel": 0.5}],
    ids=["negative", "above_three", "not_a_number", "unknown_key"],
)
def test_invalid_thresholds_rejected(values: dict[str, object]) -> None:
    """Values outside 0..3, non-numbers and unknown keys are errors."""
    with pytest.raises(ValidationError):
        RiskThresholds.model_validate(values)


def test_unordered_thresholds_rejected_inside_user_config() -> None:
    """The Structurer's user_config validates its thresholds too."""
    with pytest.raises(ValidationError):
        StructurerUserConfig.model_validate({"risk": {"throttle": 1.0, "tag": 0.5}})


def test_thresholds_are_frozen() -> None:
    """Config instances are immutable."""
    with pytest.raises(ValidationError):
        DEFAULT.block = 1.0  # type: ignore[misc]
