"""The load controller's logic without Serve: reports in, one level out."""

from __future__ import annotations

import time

import pytest

from serve_app.config.models import ControllerUserConfig
from serve_app.load.controller import Controller


def test_a_pool_reporting_full_load_raises_the_level_and_status_says_why() -> None:
    controller = Controller("test-replica")
    assert controller.state().level == 0
    for step in range(20):  # more samples than any level's enter_samples
        controller.report("vlm-1", "vlm", {"gpu_util": 0.99}, capacity=4)
        controller.report("ingress-1", "ingress", {"graph_in_flight": 2.0})
        decision = controller.tick(now=time.monotonic() + step * 0.01)
    assert decision.level >= 1 and controller.state().level == decision.level
    status = controller.status()
    assert status["level"] == decision.level and status["controller"] == "on"
    assert status["dominant"] == "gpu_util" and status["signals"]["gpu_util"] == 0.99
    assert status["reporters"] == {"vlm": 1, "ingress": 1}
    assert status["transitions"] and status["replica"] == "test-replica"


def test_a_transition_keeps_its_time_across_status_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = Controller("r")
    controller.reconfigure(ControllerUserConfig(force_level=2))
    controller.tick()
    first = controller.status()["transitions"]
    assert first and abs(first[0]["at"] - time.time()) < 5
    # A busy machine: the wall clock read late (or stepped) against the monotonic one.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 0.25)
    assert controller.status()["transitions"] == first


def test_reports_older_than_stale_after_are_dropped() -> None:
    controller = Controller("r")
    controller.report("vlm-1", "vlm", {"gpu_util": 0.99}, capacity=4)
    stale = controller.config.stale_after_s
    controller.tick(now=time.monotonic() + stale + 1)
    assert controller.status()["reporters"]["vlm"] == 0


def test_a_forced_level_is_published_on_reconfigure() -> None:
    controller = Controller("r")
    controller.reconfigure(ControllerUserConfig(force_level=2))
    decision = controller.tick()
    assert decision.level == 2 and controller.state().row.name == "strained"
    assert controller.status()["controller"] == "forced"


def test_with_the_default_timing_a_step_in_load_raises_the_level_within_a_second() -> None:
    """A step of demand: every reporter reports each period, the controller ticks each
    period, and the replicas hear the level on their next report (one period later)."""
    controller = Controller("r")
    config = controller.config
    period = config.period_s
    start = time.monotonic()
    heard_at = None
    for step in range(40):
        now = start + step * period
        demand = 12.0 if step >= 4 else 0.0  # the step: 3x the pool's capacity of 4
        controller.report("vlm-1", "vlm", {"engine_in_flight": 0.5}, capacity=4)
        state = controller.report("ingress-1", "ingress", {"graph_in_flight": demand})
        if step >= 4 and state.level > 0:
            heard_at = now - (start + 4 * period)
            break
        controller.tick(now=now + period / 2)
    assert heard_at is not None and heard_at <= 1.0, heard_at
    assert config.enter_samples * period <= 0.5


def test_admission_is_published_only_while_the_controller_is_on() -> None:
    controller = Controller("r")
    controller.tick()
    assert controller.state().admission == controller.config.admission
    assert controller.status()["admission"] == "on"
    controller.reconfigure(ControllerUserConfig(enabled=False))
    assert controller.state().admission is None and controller.status()["admission"] == "off"
    controller.reconfigure(ControllerUserConfig(admission={"enabled": False}))
    assert controller.state().admission is None


def test_refusals_reported_as_requests_in_flight_are_counted_as_such() -> None:
    controller = Controller("r")
    controller.report("vlm-1", "vlm", {"engine_in_flight": 0.5}, capacity=4)
    controller.report(
        "ingress-1",
        "ingress",
        {"graph_in_flight": 2.0, "refused": 9.0, "refused_in_flight": 4.0},
    )
    controller.tick()
    assert controller.status()["signals"]["graph_queue"] == 1.5  # (2 + 4) / 4, not (2 + 9) / 4
    controller.report("ingress-1", "ingress", {"graph_in_flight": 2.0, "refused": 2.0})
    controller.tick()
    assert controller.status()["signals"]["graph_queue"] == 1.0  # the count, as before
    assert controller.state().refused == 2.0


def test_the_engine_figures_are_the_latest_fresh_vlm_report() -> None:
    controller = Controller("test-replica", ControllerUserConfig(stale_after_s=5))
    assert controller.engine() is None
    controller.report("vlm-1", "vlm", {}, capacity=4, engine={"waiting": 1})
    controller.report("ingress-1", "ingress", {"graph_in_flight": 2.0})
    controller.report("vlm-2", "vlm", {}, capacity=4, engine={"waiting": 7})
    controller.report("vlm-3", "vlm", {}, capacity=4)  # reports no figures
    latest = controller.engine()
    assert latest is not None
    assert latest["waiting"] == 7 and latest["replicas_reporting"] == 2
    assert 0.0 <= latest["reported_s_ago"] < 5
    # Reports older than stale_after_s are dropped, as for the level.
    assert controller.engine(now=time.monotonic() + 6) is None


def test_the_published_level_carries_how_often_idle_replicas_report() -> None:
    controller = Controller("test-replica", ControllerUserConfig(idle_report_s=2.0))
    assert controller.state().idle_report_s == 2.0
    controller.tick()
    assert controller.state().idle_report_s == 2.0
