"""Admission by predicted wait: refuse early what cannot finish within its budget.

Pure and framework-free: no asyncio, no clock reads, no I/O. :class:`AdmissionPolicy`
is told the time, the gate's counts and each finished request's engine-path time, and
answers admit / wait / refuse; :class:`serve_app.load.gate.AdmissionGate` runs it in
each ingress replica in front of the engine path (Preprocessor → VLM pool →
Structurer), at every degradation level. The level still sets the budgets; this is
what keeps a request that got in from waiting behind all the others.

The rules (``AdmissionArgs``), after the usual anchors:

* **A concurrency limit that follows latency** (Netflix's concurrency-limits, AIMD
  and Gradient2; TCP's slow start). An ingress replica lets at most ``limit``
  requests into the engine path. Once the low-load time is known the limit starts at
  2 x ``min_limit``. While the recent engine-path time (an exponential average) stays
  within ``tolerance`` x the low-load time and the limit is in use, it grows: by one
  per answer until its first cut (doubling per service time), then by 1/limit per
  answer (one place per limit's worth of answers). Once the recent time is above that
  target, the limit is cut in proportion (at most halved, at most once per recent
  service time, so one slow wave cuts once). It stays between ``min_limit`` and the
  cap: ``max_limit``, or the replica's share of the pool's capacity.
* **The low-load time is measured, not configured** (Envoy's adaptive concurrency,
  its minRTT window): the median of the last ``probe_samples`` requests that ran with
  at most ``min_limit`` in the engine path, however the traffic brought them. Until
  there are that many, only the cap holds. When none has run that way for
  ``probe_interval_s`` (sustained load, or a cold start straight into it), the limit
  is held at ``min_limit`` until ``probe_samples`` have.
* **A bounded, predicted wait** (CoDel's bounded sojourn time; the SRE book's
  "refuse early and cheaply" and deadline propagation). A request that finds the
  limit reached waits only if its predicted wait — (requests waiting ahead + 1) x the
  recent service time / the limit — fits its budget: ``max_wait_s``, what is left of
  its deadline after one service time, and tolerance x the low-load time minus the
  recent service time. Otherwise it is refused at once; and one that waited its whole
  budget is refused then (the gate's part).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Literal

from serve_app.config.models import AdmissionArgs

RECENT_WEIGHT = 0.25
"""Weight of the newest engine-path time in the recent average (about four answers)."""
LARGEST_CUT = 0.5
"""The most one cut takes off the limit (a factor)."""
START_FACTOR = 2
"""Once the low-load time is known, the limit starts at this x ``min_limit``."""
UNCAPPED = 100_000
"""The cap when neither ``max_limit`` nor the pool's capacity is known."""


@dataclass(frozen=True)
class Verdict:
    """What :meth:`AdmissionPolicy.decide` says about one arriving request."""

    action: Literal["admit", "wait", "refuse"]
    limit: int
    """The limit in force when it arrived."""
    predicted_wait_s: float = 0.0
    """Its predicted wait for a place (0 when admitted at once)."""
    budget_s: float = 0.0
    """The longest it may wait (``wait``), or the budget it was measured against."""

    @property
    def reason(self) -> str:
        """One line for a refusal's message and the logs."""
        if self.action == "admit":
            return f"admitted under the limit of {self.limit}"
        return (
            f"predicted wait {self.predicted_wait_s:.2f} s for one of {self.limit} places "
            f"in the engine path, budget {self.budget_s:.2f} s"
        )


class AdmissionPolicy:
    """One ingress replica's admission limit and its estimates (module docstring)."""

    def __init__(self, args: AdmissionArgs, now: float) -> None:
        """Start learning at ``now`` (seconds; only differences matter)."""
        self._args = args
        self._limit: float | None = None  # set to the cap on first use
        self._recent: float | None = None
        self._low_load: deque[float] = deque(maxlen=args.probe_samples)
        self._low_load_at = now
        self._probe_left = 0
        self._cut_at = -math.inf
        self._slow_start = True

    @property
    def args(self) -> AdmissionArgs:
        """The configuration in force."""
        return self._args

    def configure(self, args: AdmissionArgs) -> None:
        """Apply new knobs live; the estimates are kept (a shorter window keeps its newest)."""
        if args == self._args:
            return
        if args.probe_samples != self._args.probe_samples:
            self._low_load = deque(self._low_load, maxlen=args.probe_samples)
            self._probe_left = min(self._probe_left, args.probe_samples)
        self._args = args

    @property
    def low_load_s(self) -> float | None:
        """The measured low-load engine-path time; None until ``probe_samples`` were seen."""
        if len(self._low_load) < self._args.probe_samples:
            return None
        return statistics.median(self._low_load)

    @property
    def recent_s(self) -> float | None:
        """The recent engine-path time (exponential average); None before any answer."""
        return self._recent

    def probing(self, now: float) -> bool:
        """Whether the limit is held at ``min_limit`` to measure the low-load time."""
        if self._probe_left == 0 and now - self._low_load_at > self._args.probe_interval_s:
            self._probe_left = self._args.probe_samples
        return self._probe_left > 0

    def upper(self, cap: int | None) -> int:
        """The most the limit may be: ``max_limit``, the pool share ``cap``, at least 1."""
        bounds = [b for b in (self._args.max_limit, cap) if b is not None]
        return max(1, min(bounds)) if bounds else UNCAPPED

    def limit(self, now: float, cap: int | None) -> int:
        """Requests that may be inside the engine path at once now."""
        upper = self.upper(cap)
        limit = self._current(upper)
        if self.probing(now):
            return min(self._args.min_limit, upper)
        if self.low_load_s is None:  # still learning: only the cap holds
            return upper
        return max(1, min(math.floor(limit), upper))

    def _current(self, upper: int) -> float:
        """The adaptive limit; it starts at twice ``min_limit`` once the low-load time is known."""
        if self._limit is None:
            self._limit = float(min(upper, START_FACTOR * self._args.min_limit))
        return self._limit

    def wait_budget(self, deadline_left_s: float) -> float:
        """The longest a request with ``deadline_left_s`` to go may wait for a place."""
        service = self._recent or 0.0
        budget = min(self._args.max_wait_s, deadline_left_s - service)
        low_load = self.low_load_s
        if low_load is not None:
            budget = min(budget, self._args.tolerance * low_load - service)
        return max(0.0, budget)

    def decide(
        self, now: float, inside: int, waiting: int, deadline_left_s: float, cap: int | None
    ) -> Verdict:
        """Admit, let wait (at most ``budget_s``) or refuse one arriving request.

        ``inside``: requests in the engine path now; ``waiting``: requests ahead of it
        waiting for a place; ``cap``: the replica's share of the pool (None: unknown).
        """
        limit = self.limit(now, cap)
        if waiting == 0 and inside < limit:
            return Verdict("admit", limit)
        predicted = (waiting + 1) * (self._recent or 0.0) / limit
        budget = self.wait_budget(deadline_left_s)
        if budget > 0 and predicted <= budget:
            return Verdict("wait", limit, predicted, budget)
        return Verdict("refuse", limit, predicted, budget)

    def completed(
        self, now: float, service_s: float, concurrency: int, in_use: bool, cap: int | None
    ) -> None:
        """One request's engine-path time ``service_s``, finished at ``now``.

        ``concurrency``: the most requests that can have been inside while it was (it
        counts as a low-load sample at ``min_limit`` or fewer); ``in_use``: the limit
        was reached when it got in (only then may the limit grow).
        """
        service_s = max(0.0, service_s)
        if self._recent is None:
            self._recent = service_s
        else:
            self._recent += RECENT_WEIGHT * (service_s - self._recent)
        if concurrency <= self._args.min_limit:
            self._low_load.append(service_s)
            self._low_load_at = now
            if self._probe_left:
                self._probe_left -= 1
        low_load = self.low_load_s
        if low_load is None:
            return
        upper = max(self.upper(cap), self._args.min_limit)
        limit = self._current(upper)
        target = self._args.tolerance * low_load
        if self._recent > target:
            # One cut per service time: the answers after it show its effect.
            if now - self._cut_at >= self._recent:
                limit = max(
                    float(self._args.min_limit), limit * max(LARGEST_CUT, target / self._recent)
                )
                self._cut_at = now
                self._slow_start = False
        elif in_use:
            # Slow start (+1 per answer: doubling per service time) until the first cut,
            # then +1 per limit's worth of answers.
            limit += 1.0 if self._slow_start else 1.0 / limit
        self._limit = min(limit, float(upper))

    def snapshot(self, now: float, cap: int | None) -> dict[str, float | int | bool | None]:
        """The figures ``/v1/status`` shows for this replica."""
        low_load, recent = self.low_load_s, self._recent
        target = None if low_load is None else self._args.tolerance * low_load
        return {
            "limit": self.limit(now, cap),
            "probing": self.probing(now),
            "low_load_ms": None if low_load is None else round(low_load * 1000, 1),
            "recent_ms": None if recent is None else round(recent * 1000, 1),
            "target_ms": None if target is None else round(target * 1000, 1),
        }
