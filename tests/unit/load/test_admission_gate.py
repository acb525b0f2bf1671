"""The ingress's admission gate (serve_app.load.gate): places, waits, refusals, on one loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from serve_app.config.models import AdmissionArgs, ControllerUserConfig
from serve_app.errors import ServiceUnavailable, TooManyRequests
from serve_app.load.degradation import LevelState
from serve_app.load.gate import AdmissionGate, Ticket

TABLE = ControllerUserConfig()
REJECT = TABLE.level(3).model_copy(update={"route": "reject", "retry_after_s": 3})


def state(level: int = 0, *, admit: int | None = 2, **admission: Any) -> LevelState:
    """A level as the controller publishes it; admission on unless ``admission=None``."""
    args = (
        None
        if admission.get("off")
        else AdmissionArgs.model_validate({"probe_samples": 2, **admission})
    )
    row = REJECT if level == 3 else TABLE.level(level)
    return LevelState(level=level, row=row, period_s=0.25, admit=admit, admission=args)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def teach(gate: AdmissionGate, clock: Clock, at: LevelState, service_s: float) -> None:
    """Two requests that ran alone for ``service_s``: the low-load time is known."""

    async def one() -> None:
        ticket = await gate.enter(at, 60.0)
        clock.now += service_s
        ticket.served()
        gate.leave(ticket)

    for _ in range(2):
        asyncio.run(one())


# ------------------------------------------------------------------ admission off (levels only)


def test_without_admission_a_reject_level_lets_in_its_share_and_counts_the_refusals() -> None:
    gate = AdmissionGate()
    shedding = state(3, admit=2, off=True)

    async def scenario() -> None:
        first = await gate.enter(shedding, 60.0)
        await gate.enter(shedding, 60.0)
        for _ in range(3):
            with pytest.raises(ServiceUnavailable) as refused:
                await gate.enter(shedding, 60.0)
            assert refused.value.retry_after_s == 3
        assert gate.inside == 2 and gate.take_refused() == 3
        assert gate.take_refused() == 0  # counted once
        gate.leave(first)
        await gate.enter(shedding, 60.0)  # a freed place is taken again
        # Below the shedding level nothing is refused, whatever is inside.
        await gate.enter(state(2, admit=2, off=True), 60.0)
        assert gate.inside == 3 and gate.take_refused() == 0

    run(scenario)


def test_without_admission_or_a_known_capacity_a_reject_level_lets_one_in() -> None:
    gate = AdmissionGate()
    shedding = state(3, admit=None, off=True)

    async def scenario() -> None:
        await gate.enter(shedding, 60.0)
        with pytest.raises(ServiceUnavailable):
            await gate.enter(shedding, 60.0)

    run(scenario)


def test_draining_refuses_every_new_request_but_not_as_demand() -> None:
    gate = AdmissionGate()
    draining = LevelState(level=0, row=TABLE.level(0), period_s=0.5, draining=True)

    async def scenario() -> None:
        with pytest.raises(ServiceUnavailable, match="draining") as refused:
            await gate.enter(draining, 60.0)
        assert refused.value.retry_after_s == 5

    run(scenario)
    # A stop is not load: the refusal must not push the degradation level up.
    assert gate.inside == 0 and gate.take_refused() == 0


# ------------------------------------------------------------------ admission on


def test_a_full_gate_lets_the_next_wait_and_gives_it_the_first_freed_place() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=5.0, tolerance=10.0)
    teach(gate, clock, at, 0.2)

    async def scenario() -> None:
        holder = await gate.enter(at, 60.0)
        waiter = asyncio.ensure_future(gate.enter(at, 60.0))
        await asyncio.sleep(0.01)
        assert gate.waiting == 1 and not waiter.done()
        # The third would wait 2 x 0.2 s: within the budget, so it waits too.
        third = asyncio.ensure_future(gate.enter(at, 60.0))
        await asyncio.sleep(0.01)
        assert gate.waiting == 2
        gate.leave(holder)
        ticket = await waiter
        assert isinstance(ticket, Ticket) and ticket.in_use
        assert gate.inside == 1 and gate.waiting == 1 and not third.done()
        gate.leave(ticket)
        gate.leave(await third)
        assert gate.inside == 0 and gate.waiting == 0 and gate.take_refused() == 0

    run(scenario)


def test_a_wait_past_its_budget_is_refused_then_and_counted() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=0.05, tolerance=10.0, retry_after_s=4)
    teach(gate, clock, at, 0.01)

    async def scenario() -> None:
        holder = await gate.enter(at, 60.0)
        with pytest.raises(ServiceUnavailable, match="no place in the engine path") as refused:
            await gate.enter(at, 60.0)
        assert refused.value.retry_after_s == 4
        assert gate.waiting == 0 and gate.inside == 1 and gate.take_refused() == 1
        gate.leave(holder)  # the gave-up waiter is skipped
        assert gate.inside == 0

    run(scenario)


def test_a_predicted_wait_over_budget_is_refused_at_once_with_the_configured_status() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=0.5, reject_status=429)
    teach(gate, clock, at, 2.0)  # a 2 s engine path: 1.5 x 2 - 2 = 1 s, capped at 0.5 s

    async def scenario() -> None:
        await gate.enter(at, 60.0)
        with pytest.raises(TooManyRequests, match=r"shedding load: predicted wait 2\.00 s"):
            await gate.enter(at, 60.0)
        assert gate.waiting == 0 and gate.take_refused() == 1

    run(scenario)


def test_at_a_reject_level_the_refusal_is_the_levels() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    teach(gate, clock, state(admit=4), 2.0)
    shedding = state(3, admit=1, max_wait_s=0.5)

    async def scenario() -> None:
        await gate.enter(shedding, 60.0)
        with pytest.raises(ServiceUnavailable, match="degradation level 3") as refused:
            await gate.enter(shedding, 60.0)
        assert refused.value.retry_after_s == 3

    run(scenario)


def test_a_request_cancelled_while_waiting_leaves_the_queue() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=5.0, tolerance=10.0)
    teach(gate, clock, at, 0.2)

    async def scenario() -> None:
        holder = await gate.enter(at, 60.0)
        waiter = asyncio.ensure_future(gate.enter(at, 60.0))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting == 0
        gate.leave(holder)
        assert gate.inside == 0 and gate.take_refused() == 0

    run(scenario)


def test_served_requests_teach_the_policy_and_others_do_not() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=4)

    async def one(service_s: float, served: bool) -> None:
        ticket = await gate.enter(at, 60.0)
        clock.now += service_s
        if served:
            ticket.served()
        gate.leave(ticket)

    async def scenario() -> None:
        await one(0.001, served=False)  # a cache hit: says nothing about the engine
        await one(0.001, served=False)
        assert gate.snapshot()["low_load_ms"] is None
        await one(0.3, served=True)
        await one(0.5, served=True)
        figures = gate.snapshot()
        assert figures["admission"] == "on" and figures["low_load_ms"] == 400.0
        assert figures["limit"] == 2 and figures["inside"] == 0  # 2 x min_limit

    run(scenario)


def test_turning_admission_off_lets_the_waiters_in() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=5.0, tolerance=10.0)
    teach(gate, clock, at, 0.2)

    async def scenario() -> None:
        await gate.enter(at, 60.0)
        waiter = asyncio.ensure_future(gate.enter(at, 60.0))
        await asyncio.sleep(0.01)
        await gate.enter(state(admit=1, off=True), 60.0)  # the controller was switched off
        await waiter
        assert gate.inside == 3 and gate.waiting == 0
        assert gate.snapshot()["admission"] == "off"

    run(scenario)


def test_the_report_counts_refusals_as_requests_in_flight_by_littles_law() -> None:
    clock = Clock()
    gate = AdmissionGate(clock)
    at = state(admit=1, max_wait_s=0.5)
    assert gate.report() == {"graph_in_flight": 0.0, "refused": 0.0}  # admission not heard yet
    teach(gate, clock, at, 0.4)

    async def scenario() -> None:
        await gate.enter(at, 60.0)
        for _ in range(5):
            with pytest.raises(ServiceUnavailable):
                await gate.enter(at, 60.0)

    gate.report()
    clock.now += 0.5
    asyncio.run(scenario())
    # 5 refusals in 0.5 s, each worth a 0.4 s engine path: 4 more requests in flight.
    assert gate.report() == pytest.approx(
        {"graph_in_flight": 1.0, "refused": 5.0, "refused_in_flight": 4.0}
    )


def test_the_gate_is_idle_only_with_nothing_inside_waiting_or_refused_unreported() -> None:
    gate = AdmissionGate()
    shedding = state(3, admit=1, off=True)

    async def scenario() -> None:
        assert gate.idle()
        ticket = await gate.enter(shedding, 60.0)
        assert not gate.idle()
        with pytest.raises(ServiceUnavailable):
            await gate.enter(shedding, 60.0)
        gate.leave(ticket)
        assert not gate.idle()  # the refusal is not reported yet
        assert gate.report()["refused"] == 1.0
        assert gate.idle()

    run(scenario)
