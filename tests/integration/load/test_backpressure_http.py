"""Backpressure anywhere in the graph reaches the client as our JSON 503 with Retry-After.

Queues set tiny on purpose: the Ingress holds 3 requests and queues 1 in Serve's proxy
(the proxy refuses the rest itself, which ``serve_app.http.edge`` turns into the JSON
error), and the VLM pool holds 1 and queues 1 at each caller (the Ingress's handle call
raises Serve's BackPressureError, which the ingress maps). The engine holds each
request 1.5 s (``engine.faults.delay_ms``), so a burst of 12 overflows both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.app import start_declarative, tiny_queue_document

BURST = 12


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from start_declarative(
        tiny_queue_document(
            {"max_ongoing_requests": 3, "max_queued_requests": 1},
            {"max_ongoing_requests": 1, "max_queued_requests": 1},
        )
    )


def test_a_burst_over_tiny_queues_gets_json_refusals_with_retry_after(base_url: str) -> None:
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        data = meme_bytes(MemeSpec(template=index, top=f"第{index}张", bottom="急了"))
        with httpx.Client(base_url=base_url, timeout=60) as http:
            response = http.post("/v1/memes/analyze", files={"image": ("m.png", data)})
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(r.status_code for r in responses)
    assert len(responses) == BURST and set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"nothing was refused: {statuses}"
    assert any(r.status_code == 200 for r in responses), statuses
    for response in refused:
        assert response.headers["content-type"].startswith("application/json"), response.text
        error = response.json()["error"]
        assert error["code"] == "unavailable" and error["request_id"], error
        assert int(response.headers["retry-after"]) >= 1
    print(f"\nburst of {BURST} over tiny queues: {statuses}")
    # The service keeps serving once the burst has passed.
    with httpx.Client(base_url=base_url, timeout=60) as http:
        assert http.get("/readyz").status_code == 200
