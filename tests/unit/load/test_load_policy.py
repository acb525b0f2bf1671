"""Trace-driven tests of the degradation level policy (serve_app.load.policy)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from serve_app.config.models import ControllerUserConfig
from serve_app.load.policy import Decision, LoadPolicy, LoadSample, Transition, normalise
from tests.support.load_traces import BIG_STEP, OSCILLATION, RAMP, SPIKE, STEP, noise

EMPTY: dict[str, float] = {}


def config(**overrides: Any) -> ControllerUserConfig:
    """Default table (enter 0.8 / 0.95 / 1.5, leave 0.6 / 0.75 / 1.0), 3 in, 5 out."""
    values: dict[str, Any] = {"enter_samples": 3, "leave_samples": 5}
    values.update(overrides)
    return ControllerUserConfig.model_validate(values)


def with_levels(base: ControllerUserConfig, **rows: dict[str, float]) -> ControllerUserConfig:
    """``base`` with level rows patched, e.g. ``level1={"enter_load": 0.9}``."""
    levels = []
    for row in base.levels:
        patch = rows.get(f"level{row.level}")
        levels.append(row.model_copy(update=patch) if patch else row)
    return base.model_copy(update={"levels": tuple(levels)})


def run(
    policy: LoadPolicy, trace: Iterable[float | Mapping[str, float]], start: int = 0
) -> list[Decision]:
    """Feed a trace: a float is a gpu_util load, a mapping is the raw signals."""
    decisions = []
    for offset, value in enumerate(trace):
        signals = value if isinstance(value, Mapping) else {"gpu_util": value}
        decisions.append(policy.step(LoadSample(at=float(start + offset), signals=signals)))
    return decisions


def levels_of(decisions: list[Decision]) -> list[int]:
    return [decision.level for decision in decisions]


def moves(policy: LoadPolicy) -> list[tuple[float, int, int]]:
    return [(t.at, t.from_level, t.to_level) for t in policy.transitions]


# --- step -------------------------------------------------------------------------


def test_step_enters_after_exactly_enter_samples_and_leaves_after_leave_samples() -> None:
    policy = LoadPolicy(config())
    levels = levels_of(run(policy, STEP))
    # 0.9 starts at sample 5: three samples at >= 0.8 → level 1 at sample 7, not before.
    assert levels[:7] == [0] * 7
    assert levels[7] == 1
    # 0.3 starts at sample 15: five samples below 0.6 → level 0 at sample 19, not before.
    assert levels[7:19] == [1] * 12
    assert levels[19:] == [0] * (len(STEP) - 19)
    assert moves(policy) == [(7.0, 0, 1), (19.0, 1, 0)]
    assert policy.transitions[0].reason == "load 0.90 >= 0.80 for 3 samples"
    assert policy.transitions[1].reason == "load 0.30 < 0.60 for 5 samples"


@pytest.mark.parametrize("enter_samples", [1, 2, 4, 7])
def test_step_entry_sample_follows_enter_samples(enter_samples: int) -> None:
    policy = LoadPolicy(config(enter_samples=enter_samples))
    levels = levels_of(run(policy, STEP))
    entered = levels.index(1)
    assert entered == 5 + enter_samples - 1


@pytest.mark.parametrize("leave_samples", [1, 3, 8])
def test_step_exit_sample_follows_leave_samples(leave_samples: int) -> None:
    policy = LoadPolicy(config(leave_samples=leave_samples))
    levels = levels_of(run(policy, STEP))
    left = levels.index(0, 7)
    assert left == 15 + leave_samples - 1


def test_decision_fields_describe_the_change() -> None:
    policy = LoadPolicy(config())
    decisions = run(policy, STEP[:8])
    assert [d.changed for d in decisions] == [False] * 7 + [True]
    assert decisions[7].previous == 0 and decisions[7].level == 1
    assert decisions[6].previous == 0 and decisions[6].level == 0
    assert decisions[7].load == pytest.approx(0.9)
    assert decisions[7].dominant == "gpu_util"
    assert decisions[7].loads == {"gpu_util": pytest.approx(0.9)}


# --- spike ------------------------------------------------------------------------


@pytest.mark.parametrize("enter_samples", [2, 3])
def test_one_sample_spike_changes_nothing(enter_samples: int) -> None:
    policy = LoadPolicy(config(enter_samples=enter_samples))
    assert levels_of(run(policy, SPIKE)) == [0] * len(SPIKE)
    assert policy.transitions == []


def test_spike_with_enter_samples_one_does_shed() -> None:
    # The counter-example: the same trace does move the level when one sample suffices.
    policy = LoadPolicy(config(enter_samples=1))
    levels = levels_of(run(policy, SPIKE))
    assert levels[5] == 3
    assert moves(policy)[0] == (5.0, 0, 3)


# --- ramp -------------------------------------------------------------------------


def test_slow_ramp_rises_and_falls_one_level_at_a_time_at_the_thresholds() -> None:
    policy = LoadPolicy(config())
    levels = levels_of(run(policy, RAMP))
    assert moves(policy) == [
        (18.0, 0, 1),  # >= 0.80 from 16, third sample at 18
        (21.0, 1, 2),  # >= 0.95 from 19, third sample at 21
        (32.0, 2, 3),  # >= 1.50 from 30, third sample at 32 (the peak)
        (49.0, 3, 2),  # < 1.00 from 45, fifth sample at 49
        (54.0, 2, 1),  # count restarts: < 0.75 at 50..54
        (59.0, 1, 0),  # count restarts: < 0.60 at 55..59
    ]
    peak = 32
    assert levels[:peak] == sorted(levels[:peak])
    assert levels[peak:] == sorted(levels[peak:], reverse=True)
    assert levels[-1] == 0


def test_ramp_since_tracks_the_time_each_level_was_entered() -> None:
    policy = LoadPolicy(config())
    assert policy.since is None
    run(policy, RAMP[:1])
    assert policy.since == 0.0
    run(policy, RAMP[1:25], start=1)
    assert policy.level == 2
    assert policy.since == 21.0


# --- oscillation ------------------------------------------------------------------


def test_oscillation_around_the_enter_threshold_does_not_enter() -> None:
    policy = LoadPolicy(config())
    assert set(levels_of(run(policy, OSCILLATION))) == {0}
    assert policy.transitions == []


def test_oscillation_around_the_enter_threshold_does_not_leave() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3)
    assert policy.level == 1
    run(policy, OSCILLATION, start=3)
    assert policy.level == 1
    assert len(policy.transitions) == 1


def test_oscillation_around_the_leave_threshold_does_not_leave() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3)
    run(policy, [0.58, 0.58, 0.58, 0.58, 0.62] * 10, start=3)
    assert policy.level == 1


@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_noise_around_eighty_percent_does_not_flap(seed: int) -> None:
    trace = noise(seed=seed)
    assert min(trace) >= 0.75 and max(trace) <= 0.85
    policy = LoadPolicy(config())
    levels = levels_of(run(policy, trace))
    assert len(policy.transitions) <= 1
    assert set(levels) <= {0, 1}


def test_noise_trace_is_reproducible() -> None:
    assert noise(seed=3) == noise(seed=3)
    assert noise(seed=3) != noise(seed=4)


# --- multi-level jumps ------------------------------------------------------------


def test_large_step_jumps_straight_to_level_three() -> None:
    policy = LoadPolicy(config())
    levels = levels_of(run(policy, BIG_STEP))
    assert levels == [0, 0, 0, 0, 0, 3, 3, 3, 3]
    assert moves(policy) == [(5.0, 0, 3)]
    assert policy.transitions[0].reason == "load 2.00 >= 1.50 for 3 samples"


def test_step_to_level_two_load_skips_level_one() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.2, 1.0, 1.0, 1.0])
    assert moves(policy) == [(3.0, 0, 2)]


def test_jump_uses_the_level_whose_condition_held_long_enough() -> None:
    policy = LoadPolicy(config())
    # >= 0.8 held for three samples, >= 1.5 only for the last one: level 1 first.
    run(policy, [0.9, 0.9, 1.6])
    assert policy.level == 1
    run(policy, [1.6, 1.6], start=3)
    assert moves(policy) == [(2.0, 0, 1), (4.0, 1, 3)]


# --- force_level and enabled ------------------------------------------------------


def test_force_level_pins_the_level_and_still_reports_the_load() -> None:
    policy = LoadPolicy(config(force_level=2))
    decisions = run(policy, [0.1, 2.0, 2.0, 2.0, 0.1])
    assert levels_of(decisions) == [2] * 5
    assert [d.reason for d in decisions] == ["forced"] * 5
    assert decisions[0].changed and not decisions[1].changed
    assert decisions[1].load == pytest.approx(2.0)
    assert policy.transitions == [Transition(0.0, 0, 2, "forced")]


def test_force_level_zero_holds_under_overload() -> None:
    policy = LoadPolicy(config(force_level=0))
    assert set(levels_of(run(policy, BIG_STEP))) == {0}


def test_disabled_stays_at_level_zero_but_computes_the_load() -> None:
    policy = LoadPolicy(config(enabled=False))
    decisions = run(policy, [2.0] * 10)
    assert levels_of(decisions) == [0] * 10
    assert {d.reason for d in decisions} == {"disabled"}
    assert decisions[-1].load == pytest.approx(2.0)
    assert decisions[-1].dominant == "gpu_util"


def test_force_wins_over_disabled() -> None:
    policy = LoadPolicy(config(enabled=False, force_level=3))
    assert run(policy, [0.0])[0].level == 3


def test_disable_live_takes_effect_on_the_next_step() -> None:
    policy = LoadPolicy(config())
    run(policy, [1.0] * 3)
    assert policy.level == 2
    policy.reconfigure(config(enabled=False))
    assert policy.level == 2
    decision = run(policy, [1.0], start=3)[0]
    assert (decision.level, decision.reason, decision.changed) == (0, "disabled", True)
    # Re-enabled under the same load: the enter streaks were kept, so it returns at once.
    policy.reconfigure(config())
    assert run(policy, [1.0], start=4)[0].level == 2


def test_lifting_force_steps_down_one_level_at_a_time() -> None:
    policy = LoadPolicy(config(force_level=3))
    run(policy, [0.2, 0.2])
    policy.reconfigure(config())
    decisions = run(policy, [0.2] * 20, start=2)
    assert [(t.from_level, t.to_level) for t in policy.transitions] == [
        (0, 3),
        (3, 2),
        (2, 1),
        (1, 0),
    ]
    assert levels_of(decisions)[-1] == 0
    steps = [d for d in decisions if d.changed]
    assert all(d.previous - d.level == 1 for d in steps)


# --- reconfigure ------------------------------------------------------------------


def test_reconfigure_keeps_level_since_and_history_then_new_leave_load_applies() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3 + [0.7] * 10)
    assert policy.level == 1  # 0.7 is above leave_load 0.6
    before = policy.transitions
    policy.reconfigure(with_levels(config(), level1={"leave_load": 0.75}))
    assert policy.level == 1 and policy.since == 2.0 and policy.transitions == before
    levels = levels_of(run(policy, [0.7] * 6, start=13))
    assert levels == [1, 1, 1, 1, 0, 0]


def test_reconfigure_new_enter_load_applies_and_restarts_the_streak() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.85, 0.85])
    policy.reconfigure(with_levels(config(), level1={"enter_load": 0.9}))
    run(policy, [0.85] * 10, start=2)
    assert policy.level == 0
    levels = levels_of(run(policy, [0.92] * 3, start=12))
    assert levels == [0, 0, 1]


def test_reconfigure_of_sample_counts_alone_keeps_the_streak() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9, 0.9])
    policy.reconfigure(config(enter_samples=4))
    assert levels_of(run(policy, [0.9, 0.9], start=2)) == [0, 1]


def test_reconfigure_of_thresholds_restarts_the_streak() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9, 0.9])
    policy.reconfigure(with_levels(config(enter_samples=4), level2={"enter_load": 0.99}))
    assert levels_of(run(policy, [0.9] * 4, start=2)) == [0, 0, 0, 1]


# --- empty samples ----------------------------------------------------------------


def test_empty_samples_hold_the_level() -> None:
    policy = LoadPolicy(config())
    run(policy, [1.0] * 3)
    decisions = run(policy, [EMPTY] * 30, start=3)
    assert set(levels_of(decisions)) == {2}
    last = decisions[-1]
    assert (last.load, last.dominant, last.loads, last.changed) == (0.0, None, {}, False)
    assert last.reason == "no signals: holding level 2"


def test_empty_sample_breaks_the_enter_streak() -> None:
    policy = LoadPolicy(config())
    assert levels_of(run(policy, [0.9, 0.9, EMPTY, 0.9, 0.9, 0.9])) == [0, 0, 0, 0, 0, 1]


def test_empty_sample_breaks_the_leave_streak() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3)
    levels = levels_of(run(policy, [0.3] * 4 + [EMPTY] + [0.3] * 5, start=3))
    assert levels == [1] * 9 + [0]


def test_only_disabled_or_unknown_signals_count_as_empty() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3)
    decision = run(policy, [{"gpu_memory": 0.0, "bogus": 0.0}] * 20, start=3)[-1]
    assert decision.level == 1
    assert decision.reason.startswith("no signals")


def test_non_finite_values_are_no_evidence() -> None:
    policy = LoadPolicy(config())
    run(policy, [0.9] * 3)
    decision = run(policy, [{"gpu_util": math.nan}] * 20, start=3)[-1]
    assert decision.level == 1 and decision.loads == {}


# --- signals and normalisation ----------------------------------------------------


def test_disabled_signals_are_ignored() -> None:
    policy = LoadPolicy(config())  # gpu_memory and cpu are off by default
    decisions = run(policy, [{"gpu_memory": 1.0, "cpu": 1.0, "gpu_util": 0.1}] * 5)
    assert set(levels_of(decisions)) == {0}
    assert decisions[-1].loads == {"gpu_util": pytest.approx(0.1)}

    enabled = LoadPolicy(config(signals={"gpu_memory": {"enabled": True}}))
    decisions = run(enabled, [{"gpu_memory": 0.95, "gpu_util": 0.1}] * 3)
    assert decisions[-1].level == 2  # 0.95 / full_at 0.95 = 1.0
    assert decisions[-1].dominant == "gpu_memory"


def test_normalise_divides_by_full_at() -> None:
    cfg = config(signals={"gpu_util": {"full_at": 0.5}})
    loads = normalise({"engine_waiting": 4, "gpu_util": 0.45, "graph_queue": 0.25}, cfg)
    assert loads == {
        "engine_waiting": pytest.approx(0.5),  # default full_at 8
        "gpu_util": pytest.approx(0.9),
        "graph_queue": pytest.approx(0.25),
    }


def test_normalise_drops_non_finite_and_floors_negative() -> None:
    loads = normalise({"gpu_util": math.inf, "kv_cache": -0.2, "graph_queue": math.nan}, config())
    assert loads == {"kv_cache": 0.0}


def test_dominant_is_the_largest_normalised_signal() -> None:
    policy = LoadPolicy(config())
    decisions = run(policy, [{"engine_waiting": 12, "gpu_util": 0.99, "kv_cache": 0.5}] * 3)
    assert decisions[-1].dominant == "engine_waiting"
    assert decisions[-1].load == pytest.approx(1.5)
    assert decisions[-1].level == 3


# --- history ----------------------------------------------------------------------


def test_transition_history_is_bounded_newest_last() -> None:
    policy = LoadPolicy(config(enter_samples=1, leave_samples=1), history=3)
    run(policy, [0.9, 0.1] * 5)
    assert len(policy.transitions) == 3
    assert [t.at for t in policy.transitions] == [7.0, 8.0, 9.0]
    assert policy.transitions[-1].to_level == 0


def test_history_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history"):
        LoadPolicy(config(), history=0)
