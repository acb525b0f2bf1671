"""Serve's autoscaler on CPU: a step load scales the VLM pool up, and back down after it.

Starts ``autoscale_configs/test-autoscale-cpu.yaml`` (the VLM pool between 1 and 3
replicas, one ongoing request per replica as the target, delays of seconds) as a user
would, with ``memeserve run`` in its own process group, and drives it with the
scenario of ``python -m loadtest.autoscale_demo``: closed-loop clients posting fresh
memes, then no load. Only "within N seconds or fail" deadlines, never timing figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.autoscale_demo import run_scenario, vlm_autoscaling
from loadtest.harness.service import Service, start_service, stop_service
from tests.support.paths import ROOT

CONFIG = ROOT / "autoscale_configs" / "test-autoscale-cpu.yaml"
USERS = 6
LOAD_S = 15.0
# The load goes on past LOAD_S until the pool has scaled up, at most this long.
SCALE_UP_DEADLINE_S = 60.0
# After the load, the pool must be back at min_replicas within this.
SCALE_DOWN_DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    """The test profile running in its own process group; stopped (all of it) after."""
    running = start_service(CONFIG, name="test_autoscaling")
    try:
        yield running
    finally:
        stop_service(running)


def test_the_profile_is_the_one_the_scenario_needs() -> None:
    autoscaling = vlm_autoscaling(CONFIG)
    assert autoscaling["min_replicas"] == 1
    assert autoscaling["max_replicas"] >= 2
    # Fewer concurrent clients than max_replicas x target would never ask for more.
    assert autoscaling["max_replicas"] * autoscaling["target_ongoing_requests"] <= USERS


def test_step_load_scales_the_vlm_pool_up_and_back_down(service: Service) -> None:
    process, url = service.process, service.url
    autoscaling = vlm_autoscaling(CONFIG)
    result = run_scenario(
        url,
        USERS,
        LOAD_S,
        min_replicas=autoscaling["min_replicas"],
        max_replicas=autoscaling["max_replicas"],
        settle_timeout_s=SCALE_DOWN_DEADLINE_S,
        hold_until_scaled_s=SCALE_UP_DEADLINE_S,
    )
    timeline = [(s.t, s.running, s.starting, s.stopping) for s in result.samples]
    assert result.samples, "no /v1/status answer at all"
    # Before the load, the pool rests at its minimum.
    assert result.samples[0].running == 1, timeline
    assert result.first_scale_up_t is not None, f"never above 1 replica: {timeline}"
    assert 1 < result.peak_replicas <= autoscaling["max_replicas"], timeline
    assert result.back_to_min_t is not None, (
        f"not back at 1 replica {SCALE_DOWN_DEADLINE_S}s after the load: {timeline}"
    )
    assert result.load_end_t is not None and result.back_to_min_t > result.load_end_t
    # The load was real traffic through the engine: answered, fresh, never refused.
    assert result.requests_done > 0 and result.request_errors == 0
    assert result.cache_hits == 0
    assert process.poll() is None, "the service died during the scenario"


def test_stopping_the_service_leaves_no_process_behind(service: Service) -> None:
    # Runs last in the module: stops the service here (the fixture's stop is then a no-op
    # for processes and finds nothing left).
    process = service.process
    report = stop_service(service)
    assert report.strays_killed == [] and report.left == []
    assert process.returncode is not None
