"""The VLM pool's own autoscaling policy in a real Serve app: the engines' queue scales it.

One app for the module, deployed from a config document as ``serve deploy`` does: the VLM
pool (1-2 replicas) runs ``serve_app.load.autoscaling:VLMPoolAutoscalingPolicy``, and its
engine is the lite one behind a simulated batch limit (``engine.faults``: one request at a
time in an 800 ms delay, the rest waiting in the engine's queue). ``target_ongoing_requests``
is 8, so Serve's own rule (requests / target) never asks for a second replica with the six
clients of the burst (6 / 8 < 1): only the engine queue can. Deadlines only, no timings.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtest.corpus import CAPTIONS, MemeSpec, meme_bytes
from serve_app.config.models import VLM_POOL_AUTOSCALING_POLICY
from tests.support.app import serve_config, start_declarative, with_own_library

CLIENTS = 6
SCALE_UP_DEADLINE_S = 40.0
SCALE_DOWN_DEADLINE_S = 30.0

AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    # Serve's own rule alone would stay at one replica: 6 requests / 8 < 1.
    "target_ongoing_requests": 8,
    "upscale_delay_s": 0.5,
    "downscale_delay_s": 2,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,
    "policy": {
        "policy_function": VLM_POOL_AUTOSCALING_POLICY,
        # Only the engine queue may add a replica here.
        "policy_kwargs": {"waiting_per_replica": 1, "in_flight_target": None},
    },
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    args = with_own_library(
        {
            "engine": {"kind": "lite", "faults": {"delay_ms": 800, "slots": 1}},
            "cache": {"backend": "memory"},
        }
    )
    config = serve_config(args, {"enabled": False})
    config["applications"][0]["deployments"].append(
        {
            "name": "VLMPool",
            "max_ongoing_requests": 8,
            "autoscaling_config": AUTOSCALING,
            "ray_actor_options": {"num_cpus": 0.3},
        }
    )
    return config


@pytest.fixture(scope="module")
def base_url(document: dict[str, Any]) -> Iterator[str]:
    yield from start_declarative(document)


def vlm_replicas() -> dict[str, int]:
    """The VLM pool's replicas by state, from Serve's own status."""
    from ray import serve

    deployment = serve.status().applications["memeserve"].deployments["VLMPool"]
    return {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}


class Burst:
    """``CLIENTS`` closed-loop clients posting fresh memes until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.templates = itertools.count(7_300_001)
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(CLIENTS)]

    def loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                with self.lock:
                    template = next(self.templates)
                spec = MemeSpec(template, top=CAPTIONS[template % len(CAPTIONS)], size=(320, 320))
                data = meme_bytes(spec, "JPEG", quality=85)
                response = client.post("/v1/memes/analyze", files={"image": ("m.jpg", data)})
                with self.lock:
                    self.statuses.append(response.status_code)

    def __enter__(self) -> Burst:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def wait_for(condition: Any, deadline_s: float) -> list[dict[str, int]]:
    """Poll the pool until ``condition(states)``; the states seen (fails at the deadline)."""
    seen: list[dict[str, int]] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        states = vlm_replicas()
        if not seen or seen[-1] != states:
            seen.append(states)
        if condition(states):
            return seen
        time.sleep(0.25)
    raise AssertionError(f"not reached in {deadline_s}s; VLM pool states seen: {seen}")


def test_the_engine_queue_scales_the_pool_up_and_idling_brings_it_back(base_url: str) -> None:
    assert vlm_replicas() == {"RUNNING": 1}
    with Burst(base_url) as burst:
        up = wait_for(lambda s: s.get("RUNNING", 0) == 2, SCALE_UP_DEADLINE_S)
    # Every request of the burst was answered: the pool grew under it, nothing was refused.
    assert burst.statuses and set(burst.statuses) == {200}, burst.statuses
    down = wait_for(lambda s: s == {"RUNNING": 1}, SCALE_DOWN_DEADLINE_S)
    assert up[0] == {"RUNNING": 1} and down[-1] == {"RUNNING": 1}
