"""Faults over real HTTP: a failing engine, a killed VLM replica under load, draining.

One Ray Serve instance for the module, started from the CPU profile as the fault
drill adapts it (cache off, load controller off, VLMPool at 2 fixed replicas, an
engine delay); each test applies the config document it needs, as ``serve deploy``
would, and waits until every replica of the graph has been replaced.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from loadtest.fault_drill import (
    APP,
    DrillPlan,
    drill_document,
    problems,
    ray_replica_killer,
    replica_actor_names,
    run_drill,
)
from serve_app.http.client import SseParser
from serve_app.ops.drain import DrainResult, drained_document, wait_until_idle
from tests.support.app import deploy, start_declarative
from tests.support.paths import ROOT

REQUEST_TIMEOUT_S = 20.0
APPLY_LIMIT_S = 240.0


def _document(**faults: float) -> dict[str, Any]:
    profile = yaml.safe_load((ROOT / "autoscale_configs/dev-cpu.yaml").read_text("utf-8"))
    for key in ("http_options", "proxy_location", "logging_config"):
        profile.pop(key, None)  # the in-process Serve instance has its own
    document = drill_document(profile, request_timeout_s=REQUEST_TIMEOUT_S, delay_ms=300)
    document["applications"][0]["args"]["engine"]["faults"].update(faults)
    return document


def _all_replicas() -> set[str]:
    return set(replica_actor_names(deployment=None))


def _settled(old: set[str]) -> bool:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or str(getattr(app.status, "value", app.status)) != "RUNNING":
        return False
    for deployment in app.deployments.values():
        states = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
        if set(states) - {"RUNNING"}:
            return False
    return not (_all_replicas() & old)


def apply(document: dict[str, Any]) -> None:
    """Deploy ``document`` and poll until no replica from before it is left."""
    old = _all_replicas()
    deploy(document)
    deadline = time.monotonic() + APPLY_LIMIT_S
    while not _settled(old):
        assert time.monotonic() < deadline, "the new config was not applied in time"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from start_declarative(_document())


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S + 30) as http:
        yield http


def meme(number: int) -> bytes:
    return meme_bytes(MemeSpec(template=number, top="你说得对，但是", bottom="破防了"))


def test_killing_a_vlm_replica_under_load_loses_no_request(base_url: str) -> None:
    plan = DrillPlan(clients=6, duration_s=18.0, kill_at_s=6.0, request_timeout_s=REQUEST_TIMEOUT_S)
    before = replica_actor_names()
    started = time.monotonic()
    summary = run_drill(base_url, ray_replica_killer(), plan)
    print(f"\nfault drill ({time.monotonic() - started:.1f} s):", json.dumps(summary, indent=2))
    assert len(before) == 2 and summary["killed"] in before
    assert problems(summary, plan) == []
    # Requests lost with the replica are 503 + Retry-After; nothing else may fail.
    assert set(summary["errors_by_status"]) <= {"503"}, summary["errors_by_status"]
    after = replica_actor_names()
    assert len(after) == 2 and summary["killed"] not in after


def _assert_engine_error(body: dict[str, Any], status: int, request_id: str) -> None:
    assert status == 502
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == "engine_error" and "injected" in error["message"]
    assert error["request_id"] == request_id


def test_an_engine_that_always_raises_gives_502_json_with_the_request_id(
    client: httpx.Client,
) -> None:
    apply(_document(error_rate=1.0, delay_ms=0))
    files = {"image": ("m.png", meme(31), "image/png")}

    sent = client.post("/v1/memes/analyze", files=files, headers={"x-request-id": "fault-a-1"})
    assert sent.headers["x-request-id"] == "fault-a-1"
    _assert_engine_error(sent.json(), sent.status_code, "fault-a-1")
    assert "Traceback" not in sent.text and 'File "' not in sent.text

    fresh = client.post("/v1/memes/analyze", files=files)
    assert fresh.headers["x-request-id"]
    _assert_engine_error(fresh.json(), fresh.status_code, fresh.headers["x-request-id"])

    parser, events = SseParser(), []
    with client.stream(
        "POST", "/v1/memes/analyze/stream", files=files, headers={"x-request-id": "fault-s-1"}
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is not None:
                events.append(event)
    names = [event.event for event in events]
    assert names[0] == "accepted" and names[-1] == "error" and "result" not in names
    _assert_engine_error(events[-1].data, events[-1].data.pop("status"), "fault-s-1")

    image = base64.b64encode(meme(32)).decode()
    batch = client.post(
        "/v1/memes/analyze/batch",
        json={"items": [{"id": "x", "image_base64": image}, {"id": "y", "image_base64": image}]},
        headers={"x-request-id": "fault-b-1"},
    )
    assert batch.status_code == 200
    body = batch.json()
    assert body["request_id"] == "fault-b-1" and (body["succeeded"], body["failed"]) == (0, 2)
    for index, item in enumerate(body["items"]):
        assert item["id"] == ["x", "y"][index]
        _assert_engine_error({"error": item["error"]}, item["status"], f"fault-b-1:{index}")

    assert client.get("/healthz").status_code == 200


def _in_flight_then(
    client: httpx.Client, base_url: str, count: int, action: Any
) -> list[httpx.Response]:
    """Start ``count`` slow requests, poll until all are inside the graph, run ``action``."""

    def post(number: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S + 40) as own:
            return own.post(
                "/v1/memes/analyze",
                files={"image": ("m.png", meme(40 + number), "image/png")},
                headers={"x-request-id": f"drain-{number}"},
            )

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(post, number) for number in range(count)]
        deadline = time.monotonic() + 60
        while client.get("/v1/status").json()["in_flight"] < count:
            assert time.monotonic() < deadline, "the requests never got inside the graph"
            assert not any(f.done() for f in futures), [f.result().text for f in futures]
            time.sleep(0.05)
        assert not any(f.done() for f in futures), "requests finished before the action"
        action()
        return [future.result() for future in futures]


def test_replacing_every_replica_drains_in_flight_requests(
    client: httpx.Client, base_url: str
) -> None:
    apply(_document(delay_ms=3000, seed=1))
    started = time.monotonic()
    responses = _in_flight_then(client, base_url, 3, lambda: deploy(_document(delay_ms=3000)))
    print(
        f"\nredeploy drain: {[r.status_code for r in responses]} in "
        f"{time.monotonic() - started:.1f} s"
    )
    for number, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.json()["request_id"] == f"drain-{number}"


def test_draining_then_deleting_the_app_loses_no_request(
    client: httpx.Client, base_url: str
) -> None:
    """Deleting stops every deployment at once: the app is drained first (serve_app.ops.drain)."""
    from ray import serve

    document = _document(delay_ms=3000, seed=2)
    apply(document)
    refused: list[httpx.Response] = []
    not_ready: list[httpx.Response] = []
    drained: list[DrainResult] = []

    def drain_then_delete() -> None:
        deploy(drained_document(document))  # reconfigures the LoadController in place
        # Not ready from the moment the controller has the flag (readiness asks it, not
        # the ingress's copy of the level): a load balancer stops sending.
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readiness never reported the drain"
        not_ready.append(ready)
        while not refused:  # until the flag has reached the ingress
            late = client.post("/v1/memes/analyze", files={"image": ("m.png", meme(50))})
            if late.status_code == 503:
                refused.append(late)
            else:
                assert late.status_code == 200, late.text
            assert time.monotonic() < deadline, "the ingress never started refusing"
        drained.append(wait_until_idle(base_url, timeout_s=REQUEST_TIMEOUT_S + 5))
        serve.delete(APP)

    started = time.monotonic()
    responses = _in_flight_then(client, base_url, 3, drain_then_delete)
    print(
        f"\ndrain then delete: {[r.status_code for r in responses]}, drained in "
        f"{drained[0].waited_s:.1f} s, all answered in {time.monotonic() - started:.1f} s"
    )
    assert drained[0].idle
    for number, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.json()["request_id"] == f"drain-{number}"
    (ready,) = not_ready
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5", ready.text
    assert "draining" in ready.json()["error"]["message"]
    (late,) = refused
    assert late.headers["retry-after"] == "5"
    assert late.json()["error"]["code"] == "unavailable"
    assert "draining" in late.json()["error"]["message"]
