"""Admission by predicted wait (serve_app.load.admission): the pure policy, clock given.

The last tests replay a simulated overload: a CPU-bound engine that shares two cores
among the requests it holds (each slows down as more are inside), Poisson arrivals
at 3x what it can answer, and the policy in front of it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from serve_app.config.models import AdmissionArgs
from serve_app.load.admission import UNCAPPED, AdmissionPolicy


def args(**changes: Any) -> AdmissionArgs:
    values: dict[str, Any] = {"probe_samples": 3, "probe_interval_s": 30.0}
    values.update(changes)
    return AdmissionArgs.model_validate(values)


def learned(low_load_s: float = 0.2, **changes: Any) -> AdmissionPolicy:
    """A policy that has seen ``probe_samples`` requests run alone, each ``low_load_s``."""
    policy = AdmissionPolicy(args(**changes), now=0.0)
    for n in range(policy.args.probe_samples):
        policy.completed(1.0 + n, low_load_s, concurrency=1, in_use=False, cap=8)
    return policy


def test_while_learning_only_the_cap_holds() -> None:
    policy = AdmissionPolicy(args(), now=0.0)
    assert policy.low_load_s is None
    assert policy.limit(0.0, cap=6) == 6
    assert policy.limit(0.0, cap=None) == UNCAPPED
    assert policy.decide(0.0, inside=5, waiting=0, deadline_left_s=60, cap=6).action == "admit"
    # Requests that ran alongside others teach nothing about the low-load time.
    for n in range(10):
        policy.completed(1.0 + n, 2.0, concurrency=4, in_use=True, cap=6)
    assert policy.low_load_s is None and policy.recent_s is not None


def test_the_low_load_time_is_the_median_of_requests_that_ran_at_min_limit() -> None:
    policy = AdmissionPolicy(args(probe_samples=3, min_limit=2), now=0.0)
    for service, concurrency in ((0.3, 1), (5.0, 3), (0.1, 2), (0.2, 2)):
        policy.completed(1.0, service, concurrency=concurrency, in_use=False, cap=8)
    assert policy.low_load_s == pytest.approx(0.2)
    policy.completed(2.0, 0.25, concurrency=1, in_use=False, cap=8)  # the oldest (0.3) drops
    assert policy.low_load_s == pytest.approx(0.2)


def grown(policy: AdmissionPolicy, to: int, at: float = 9.0) -> AdmissionPolicy:
    """``policy`` after fast answers, each taking the last place, slow-started it to ``to``."""
    while policy.limit(at, cap=to) < to:
        policy.completed(at, 0.2, concurrency=2, in_use=True, cap=to)
        at += 0.001
    return policy


def test_once_learned_the_limit_slow_starts_from_twice_min_limit() -> None:
    policy = learned()  # min_limit 1
    assert policy.limit(10.0, cap=8) == 2
    assert policy.upper(cap=4) == 4 and learned(max_limit=1).limit(10.0, cap=4) == 1
    assert learned(min_limit=3).limit(10.0, cap=4) == 4  # 2 x 3, but the cap holds
    for n in range(3):  # in use and fast: one more place per answer until the first cut
        policy.completed(10.0 + n * 0.01, 0.2, concurrency=2, in_use=True, cap=8)
    assert policy.limit(11.0, cap=8) == 5
    policy.completed(11.1, 0.2, concurrency=2, in_use=False, cap=8)  # not in use: no growth
    assert policy.limit(11.2, cap=8) == 5


def test_slow_answers_cut_the_limit_in_proportion_at_most_halving_once_per_service_time() -> None:
    policy = grown(learned(low_load_s=0.2), to=8)  # target: 1.5 x 0.2 = 0.3 s
    assert policy.limit(10.0, cap=8) == 8
    policy.completed(10.0, 1.2, concurrency=8, in_use=True, cap=8)  # recent 0.45 > 0.3
    limit = policy.limit(10.0, cap=8)
    assert limit == 5  # 8 x 0.3 / 0.45 = 5.3: cut in proportion
    policy.completed(10.1, 1.2, concurrency=8, in_use=True, cap=8)  # same wave: no second cut
    assert policy.limit(10.1, cap=8) == limit
    policy.completed(12.0, 5.0, concurrency=8, in_use=True, cap=8)  # far over: halved at most
    assert policy.limit(12.0, cap=8) == 2  # 5.33 x 0.5
    for n in range(20):
        policy.completed(13.0 + n, 5.0, concurrency=8, in_use=True, cap=8)
    assert policy.limit(30.0, cap=8) == policy.args.min_limit == 1


def test_answers_within_the_target_grow_the_limit_only_while_it_is_in_use() -> None:
    policy = learned(low_load_s=0.2, probe_interval_s=1000.0)
    for n in range(30):  # cut down to the floor first
        policy.completed(10.0 + n, 5.0, concurrency=8, in_use=True, cap=8)
    for n in range(30):  # fast answers bring the recent time back under the target
        policy.completed(50.0 + n * 0.01, 0.2, concurrency=2, in_use=False, cap=8)
    assert policy.limit(51.0, cap=8) == 1  # not in use: no growth
    for n in range(3):  # after a cut, +1/limit per answer: 1 -> 2 -> 2.5 -> 2.9
        policy.completed(52.0 + n * 0.01, 0.2, concurrency=2, in_use=True, cap=8)
    assert policy.limit(53.0, cap=8) == 2
    for n in range(100):
        policy.completed(54.0 + n * 0.01, 0.2, concurrency=2, in_use=True, cap=8)
    assert policy.limit(60.0, cap=8) == 8  # never above the cap
    assert policy.limit(60.0, cap=3) == 3  # a smaller share caps it at once


def test_a_request_waits_only_when_its_predicted_wait_fits_its_budget() -> None:
    policy = learned(low_load_s=0.4, max_wait_s=0.5)  # recent 0.4; target 0.6
    policy.completed(10.0, 0.4, concurrency=2, in_use=False, cap=2)
    assert policy.limit(10.0, cap=2) == 2
    assert policy.decide(10.0, 1, 0, 60.0, cap=2).action == "admit"
    # Full: the first in line waits about 0.4 / 2 = 0.2 s, within 0.6 - 0.4.
    first = policy.decide(10.0, 2, 0, 60.0, cap=2)
    assert first.action == "wait"
    assert first.predicted_wait_s == pytest.approx(0.2)
    assert first.budget_s == pytest.approx(0.2)
    # The second would wait 0.4 s: refused at once, and the message says why.
    second = policy.decide(10.0, 2, 1, 60.0, cap=2)
    assert second.action == "refuse" and "predicted wait 0.40 s" in second.reason
    # A deadline that leaves no time for a wait refuses too.
    assert policy.decide(10.0, 2, 0, 0.5, cap=2).action == "refuse"


def test_max_wait_bounds_the_budget_and_slow_service_closes_the_queue() -> None:
    policy = learned(low_load_s=2.0, max_wait_s=0.3)
    policy.completed(10.0, 2.0, concurrency=1, in_use=False, cap=4)
    assert policy.wait_budget(60.0) == pytest.approx(0.3)  # not 3.0 - 2.0
    for n in range(10):
        policy.completed(11.0 + n, 3.5, concurrency=4, in_use=True, cap=4)
    assert policy.recent_s is not None and policy.recent_s > 3.0
    assert policy.wait_budget(60.0) == 0.0  # already past the target: nobody waits


def test_sustained_load_without_low_load_answers_probes_at_min_limit() -> None:
    policy = learned(low_load_s=0.2, probe_interval_s=5.0, min_limit=2)
    assert not policy.probing(4.0)
    for n in range(10):  # busy: every answer ran with 3 or more inside
        policy.completed(5.0 + n, 0.3, concurrency=4, in_use=True, cap=8)
    assert policy.probing(12.0) and policy.limit(12.0, cap=8) == 2
    assert policy.snapshot(12.0, cap=8)["probing"] is True
    for n in range(3):  # probe_samples answers at min_limit end the probe
        policy.completed(12.5 + n * 0.1, 0.25, concurrency=2, in_use=True, cap=8)
    assert not policy.probing(13.0) and policy.limit(13.0, cap=8) > 2
    assert policy.low_load_s == pytest.approx(0.25)


def test_a_cold_start_straight_into_load_probes_after_the_interval() -> None:
    policy = AdmissionPolicy(args(probe_interval_s=5.0), now=100.0)
    assert policy.limit(104.0, cap=8) == 8
    assert policy.limit(105.5, cap=8) == 1
    for n in range(3):
        policy.completed(106.0 + n, 0.2, concurrency=1, in_use=True, cap=8)
    # Measured: 2 x min_limit, +1 for the last answer, which took the last place.
    assert policy.low_load_s == pytest.approx(0.2) and policy.limit(110.0, cap=8) == 3


def test_reconfiguring_keeps_what_was_learned() -> None:
    policy = learned(low_load_s=0.2)
    policy.configure(args(probe_samples=2, tolerance=3.0))
    assert policy.low_load_s == pytest.approx(0.2)
    assert policy.args.tolerance == 3.0
    policy.configure(policy.args)  # the same knobs: nothing changes
    assert policy.snapshot(10.0, cap=4) == {
        "limit": 2,
        "probing": False,
        "low_load_ms": 200.0,
        "recent_ms": 200.0,
        "target_ms": 600.0,
    }


# ----------------------------------------------------------------------------- simulation

CORES = 2.0
WORK_S = 0.3  # one request's engine time alone (±30 %)
CAPACITY = CORES / WORK_S  # answers per second at best
STEP_S = 0.002


def simulate(rate: float, seconds: float, *, gate: bool, seed: int) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s onto a processor-sharing engine with ``CORES``."""
    rng = random.Random(seed)
    policy = learned(low_load_s=WORK_S, probe_samples=5)
    cap = 8
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    inside: list[dict[str, Any]] = []
    queue: list[tuple[float, float]] = []  # (arrived, give up at)
    latencies: list[float] = []
    refused = entries = next_arrival = 0
    now = 0.0

    def take(arrived: float, in_use: bool) -> None:
        nonlocal entries
        entries += 1
        work = WORK_S * rng.uniform(0.7, 1.3)
        inside.append(
            {"left": work, "start": now, "arrived": arrived, "n": len(inside) + 1, "e": entries}
        )
        inside[-1]["in_use"] = in_use

    while now < seconds + 30 and (next_arrival < len(arrivals) or inside or queue):
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= now:
            arrived = arrivals[next_arrival]
            next_arrival += 1
            if not gate:
                take(arrived, False)
                continue
            verdict = policy.decide(now, len(inside), len(queue), 60.0, cap)
            if verdict.action == "admit":
                take(arrived, len(inside) + 1 >= verdict.limit)
            elif verdict.action == "wait":
                queue.append((arrived, now + verdict.budget_s))
            else:
                refused += 1
        refused += sum(1 for _, give_up in queue if give_up < now)
        queue = [entry for entry in queue if entry[1] >= now]
        if inside:
            share = min(1.0, CORES / len(inside)) * STEP_S
            for request in list(inside):
                request["left"] -= share
                if request["left"] <= 0:
                    inside.remove(request)
                    latencies.append(now - request["arrived"])
                    concurrency = request["n"] + entries - request["e"]
                    policy.completed(
                        now, now - request["start"], concurrency, request["in_use"], cap
                    )
        while queue and len(inside) < (policy.limit(now, cap) if gate else UNCAPPED):
            take(queue.pop(0)[0], True)
        now += STEP_S
    latencies.sort()
    return {
        "ok": len(latencies),
        "refused": refused,
        "p95": latencies[int(0.95 * len(latencies))],
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_at_three_times_capacity_the_p95_of_answers_stays_within_twice_the_unloaded_one(
    seed: int,
) -> None:
    unloaded = simulate(0.5, 60.0, gate=True, seed=seed)
    assert unloaded["refused"] == 0
    overloaded = simulate(3 * CAPACITY, 30.0, gate=True, seed=seed)
    assert overloaded["p95"] <= 2 * unloaded["p95"], (unloaded, overloaded)
    # ... while the engine stays busy: most of what it can answer is answered.
    assert overloaded["ok"] >= 0.8 * CAPACITY * 30.0, overloaded
    # Without the policy every request is let in and waits behind all the others.
    ungated = simulate(3 * CAPACITY, 10.0, gate=False, seed=seed)
    assert ungated["p95"] > 5 * unloaded["p95"], ungated


def test_the_limits_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="max_limit"):
        AdmissionArgs(min_limit=4, max_limit=2)
    assert AdmissionArgs(min_limit=2, max_limit=2).max_limit == 2
