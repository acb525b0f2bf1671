"""The load controller's logic without Serve: reports in, one level out."""

from __future__ import annotations

import time

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
