"""Degradation level policy: load samples in, a level 0..3 out, with hysteresis.

Pure and framework-free: no Ray, no clock reads, no I/O. Time arrives with each
:class:`LoadSample`, so a recorded trace replays to exactly the same decisions.

The rules (``ControllerUserConfig``):

* Each enabled, reported signal's raw value divided by its ``full_at`` is its load;
  the sample's load is the largest of them (:func:`normalise`).
* Level ``k`` (1..3) is entered when the load holds at or above ``levels[k].enter_load``
  for ``enter_samples`` consecutive samples. Several levels may be crossed at once: the
  policy goes to the highest level whose enter condition held that long.
* The current level ``k`` is left one step down, to ``k - 1``, when the load holds
  below ``levels[k].leave_load`` for ``leave_samples`` consecutive samples. The count
  restarts after every step, so the level falls at most one step per ``leave_samples``.
* ``force_level`` pins the level (reason ``"forced"``); otherwise ``enabled: false``
  keeps level 0 (reason ``"disabled"``). Force wins over disable: it is the more
  specific, deliberate instruction (drills are run with the automatic controller off).
  The load is computed and the streaks kept either way, so lifting the pin resumes
  from real evidence.
* A sample without any enabled, reported signal (no replica reports, every report
  stale, a GPU-less host whose only signal is the GPU) holds the current level and
  restarts both streaks. Counting it as load 0 would walk an overloaded graph back to
  level 0 precisely when its replicas are too busy or too broken to report; holding
  never degrades on no evidence either. Fresh consecutive samples are then needed for
  any change.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from serve_app.config.models import ControllerUserConfig

logger = logging.getLogger(__name__)

LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class LoadSample:
    """One observation of the graph: raw signal values at time ``at``."""

    at: float
    """Seconds, monotonic or wall clock: only differences and order matter."""
    signals: Mapping[str, float]
    """Raw signal values keyed by ``SignalName``; a missing name was not reported."""


@dataclass(frozen=True)
class Decision:
    """What :meth:`LoadPolicy.step` concluded from one sample."""

    level: int
    previous: int
    load: float
    """The largest normalised load; 0.0 when the sample had no usable signal."""
    dominant: str | None
    """The signal with the largest normalised load; None when there was none."""
    changed: bool
    reason: str
    loads: dict[str, float] = field(default_factory=dict)
    """Normalised load of each enabled, reported signal."""


@dataclass(frozen=True)
class Transition:
    """A level change, kept in :attr:`LoadPolicy.transitions`."""

    at: float
    from_level: int
    to_level: int
    reason: str


def normalise(signals: Mapping[str, float], config: ControllerUserConfig) -> dict[str, float]:
    """Normalised load of each enabled signal in ``signals``: raw value / ``full_at``.

    Unknown and disabled names are left out, and so are non-finite values (a broken
    reading is no evidence either way); negative values count as 0.
    """
    loads: dict[str, float] = {}
    for name, raw in signals.items():
        args = config.signals.get(name)  # type: ignore[call-overload]
        if args is None or not args.enabled:
            continue
        value = float(raw)
        if not math.isfinite(value):
            logger.debug("ignoring non-finite signal %s=%r", name, raw)
            continue
        loads[name] = max(value, 0.0) / args.full_at
    return loads


class LoadPolicy:
    """Turns a stream of :class:`LoadSample` into degradation levels (module docstring)."""

    def __init__(self, config: ControllerUserConfig, history: int = 100) -> None:
        """Start at level 0; keep the newest ``history`` transitions."""
        if history < 1:
            raise ValueError("history must be at least 1")
        self._config = config
        self._level = 0
        self._since: float | None = None
        self._transitions: deque[Transition] = deque(maxlen=history)
        # Consecutive samples with load >= levels[k].enter_load, for k in 1..3.
        self._above = dict.fromkeys(LEVELS, 0)
        # Consecutive samples with load < levels[current].leave_load.
        self._below = 0

    @property
    def config(self) -> ControllerUserConfig:
        """The configuration in force."""
        return self._config

    @property
    def level(self) -> int:
        """The current degradation level, 0..3."""
        return self._level

    @property
    def since(self) -> float | None:
        """When the current level was entered (the first sample's time for the initial
        level 0); None before the first sample."""
        return self._since

    @property
    def transitions(self) -> list[Transition]:
        """Recent level changes, oldest first, newest last (bounded by ``history``)."""
        return list(self._transitions)

    def reconfigure(self, config: ControllerUserConfig) -> None:
        """Apply a new configuration live.

        The level, its ``since`` and the transition history are kept; nothing changes
        until the next :meth:`step`, where ``force_level`` / ``enabled`` take effect.
        Streaks are restarted only when thresholds or signals changed, because they were
        counted against the old ones; a change of ``enter_samples`` / ``leave_samples``
        alone keeps them (a streak is a count, valid under either requirement).
        """
        thresholds_changed = (
            config.levels != self._config.levels or config.signals != self._config.signals
        )
        self._config = config
        if thresholds_changed:
            self._reset_streaks()

    def step(self, sample: LoadSample) -> Decision:
        """Take one sample and return the decision (and the new level)."""
        config = self._config
        previous = self._level
        if self._since is None:
            self._since = sample.at
        loads = normalise(sample.signals, config)
        dominant = max(loads, key=loads.__getitem__) if loads else None
        load = loads[dominant] if dominant is not None else 0.0

        if not loads:
            self._reset_streaks()
        else:
            self._count(load)

        if config.force_level is not None:
            target, reason = config.force_level, "forced"
        elif not config.enabled:
            target, reason = 0, "disabled"
        elif not loads:
            target, reason = previous, f"no signals: holding level {previous}"
        else:
            target, reason = self._automatic(load)

        if target != previous:
            self._move(sample.at, previous, target, reason)
        return Decision(
            level=self._level,
            previous=previous,
            load=load,
            dominant=dominant,
            changed=self._level != previous,
            reason=reason,
            loads=loads,
        )

    def _count(self, load: float) -> None:
        for number in LEVELS:
            enter = self._config.level(number).enter_load
            assert enter is not None  # validated by LevelArgs
            self._above[number] = self._above[number] + 1 if load >= enter else 0
        if self._level > 0:
            leave = self._config.level(self._level).leave_load
            assert leave is not None
            self._below = self._below + 1 if load < leave else 0
        else:
            self._below = 0

    def _automatic(self, load: float) -> tuple[int, str]:
        config = self._config
        current = self._level
        for number in reversed(LEVELS):
            if number <= current:
                break
            if self._above[number] >= config.enter_samples:
                enter = config.level(number).enter_load
                return number, (f"load {load:.2f} >= {enter:.2f} for {self._above[number]} samples")
        if current > 0 and self._below >= config.leave_samples:
            leave = config.level(current).leave_load
            return current - 1, f"load {load:.2f} < {leave:.2f} for {self._below} samples"
        return current, f"load {load:.2f} at level {current}"

    def _move(self, at: float, previous: int, target: int, reason: str) -> None:
        self._level = target
        self._since = at
        # The leave streak is measured against the level's own leave_load: restart it.
        self._below = 0
        self._transitions.append(Transition(at, previous, target, reason))
        logger.info("degradation level %d -> %d at %.3f: %s", previous, target, at, reason)

    def _reset_streaks(self) -> None:
        self._above = dict.fromkeys(LEVELS, 0)
        self._below = 0
