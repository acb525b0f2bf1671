"""A policy change through `serve deploy` applies to the next request, no replica replaced."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from loadtest.fault_drill import replica_actor_names
from tests.support.app import deploy, start_declarative, with_own_library
from tests.support.paths import ROOT

APPLY_LIMIT_S = 120.0


def _document() -> dict[str, Any]:
    profile = yaml.safe_load((ROOT / "autoscale_configs/dev-cpu.yaml").read_text("utf-8"))
    for key in ("http_options", "proxy_location", "logging_config"):
        profile.pop(key, None)  # the in-process Serve instance has its own
    application = profile["applications"][0]
    application["args"] = with_own_library(application["args"])
    return {"applications": [application]}


def _ingress(document: dict[str, Any]) -> dict[str, Any]:
    deployments = document["applications"][0]["deployments"]
    found: dict[str, Any] = next(d for d in deployments if d["name"] == "Ingress")
    return found


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return _document()


@pytest.fixture(scope="module")
def base_url(document: dict[str, Any]) -> Iterator[str]:
    yield from start_declarative(document)


def test_a_new_policy_applies_without_replacing_a_replica(
    client: httpx.Client, document: dict[str, Any]
) -> None:
    data = meme_bytes(MemeSpec(template=40, top="周末愉快", bottom="出去玩"), "PNG")

    def analyze(policy: str) -> httpx.Response:
        return client.post(
            "/v1/memes/analyze", files={"image": ("m.png", data)}, data={"policy": policy}
        )

    assert analyze("moderation").status_code == 200
    assert analyze("strict").status_code == 422
    before = set(replica_actor_names(deployment=None))

    changed = copy.deepcopy(document)
    _ingress(changed)["user_config"]["policies"]["strict"] = {
        "description": "everything to a person",
        "actions": ["pass", "review"],
        "level_actions": {"none": "review", "low": "review", "medium": "review", "high": "review"},
        "list_actions": {"block": "review", "review": "review"},
    }
    deploy(changed)
    deadline = time.monotonic() + APPLY_LIMIT_S
    response = analyze("strict")
    while response.status_code == 422:
        assert time.monotonic() < deadline, "the new policy was not applied in time"
        time.sleep(0.5)
        response = analyze("strict")
    assert response.status_code == 200, response.text
    risk = response.json()["risk"]
    assert (risk["policy"], risk["action"]) == ("strict", "review")
    assert set(replica_actor_names(deployment=None)) == before, "a replica was replaced"
