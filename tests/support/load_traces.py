"""Recorded load traces for the degradation policy tests: one load value per sample.

The values are the normalised load of a single signal (``gpu_util``, ``full_at`` 1.0).
Ramp values are rounded to two decimals so that threshold crossings fall on exact,
known sample indices.
"""

from __future__ import annotations

import random

# 0.3 held, a step to 0.9 held (samples 5..14), back to 0.3 (samples 15..34).
STEP: list[float] = [0.3] * 5 + [0.9] * 10 + [0.3] * 20

# A single sample spike to 2.0 at index 5 in a quiet trace.
SPIKE: list[float] = [0.3] * 5 + [2.0] + [0.3] * 10

# 0.00 → 1.60 in 0.05 steps (indices 0..32, peak at 32), back to 0.00 (index 64),
# then idle. Crossings: >= 0.80 from 16, >= 0.95 from 19, >= 1.50 from 30;
# going down: < 1.00 from 45, < 0.75 from 50, < 0.60 from 55.
RAMP: list[float] = (
    [round(i * 0.05, 2) for i in range(33)]
    + [round((64 - i) * 0.05, 2) for i in range(33, 65)]
    + [0.0] * 10
)

# Alternating just under / just over the level-1 enter threshold (0.8).
OSCILLATION: list[float] = [0.78, 0.83] * 30

# A large step straight to shedding territory.
BIG_STEP: list[float] = [0.2] * 3 + [2.0] * 6


def noise(
    seed: int = 7, samples: int = 300, centre: float = 0.8, width: float = 0.05
) -> list[float]:
    """Uniform noise of ±``width`` around ``centre`` from a seeded RNG."""
    rng = random.Random(seed)
    return [round(rng.uniform(centre - width, centre + width), 4) for _ in range(samples)]
