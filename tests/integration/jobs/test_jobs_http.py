"""Async jobs over HTTP: 202 + Location, results in order, signed callbacks, retries, limits.

One app for the module with two API keys, callbacks allowed to 127.0.0.1 and a secret
for the key ``web`` (from the environment, as an operator would set it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.jobs.signing import SIGNATURE_HEADER, sign, verify
from tests.support.app import start_app
from tests.support.receiver import running_receiver

SECRETS_ENV = "MEMESERVE_TEST_CALLBACK_SECRETS"
SECRET = "s3cret-for-web"
WEB = {"authorization": "Bearer web-key"}
OTHER = {"authorization": "Bearer other-key"}
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    os.environ[SECRETS_ENV] = f"web={SECRET}"  # inherited by the Ray workers
    args = {
        "security": {
            "api_keys": [
                {"name": "web", "sha256": _sha("web-key")},
                {"name": "other", "sha256": _sha("other-key")},
            ]
        },
        "jobs": {
            "max_items": 12,
            "max_open_jobs": 3,
            "workers": 2,
            "poll_s": 0.1,
            "callback_hosts": ["127.0.0.1"],
            "callback_secrets_env": SECRETS_ENV,
            "callback_attempts": 3,
            "callback_backoff_s": 0.2,
            "callback_timeout_s": 5,
        },
    }
    yield from start_app(args, {"enabled": False})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _items(count: int, start: int = 50) -> list[dict[str, Any]]:
    return [
        {
            "id": f"m{i}",
            "image_base64": _b64(meme_bytes(MemeSpec(template=start + i, top="第", bottom=str(i)))),
        }
        for i in range(count)
    ]


def _finished(client: httpx.Client, location: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = client.get(location, headers=WEB, params={"limit": 100}).json()
        if view["state"] in ("done", "cancelled"):
            return view
        assert time.monotonic() < deadline, f"job not finished: {view}"
        time.sleep(0.2)


def _callback_state(client: httpx.Client, location: str, want: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        callback: dict[str, Any] = client.get(location, headers=WEB).json()["callback"]
        if callback["state"] == want:
            return callback
        assert time.monotonic() < deadline, f"callback not {want}: {callback}"
        time.sleep(0.2)


def test_a_job_answers_202_then_results_in_order_and_a_signed_callback(
    client: httpx.Client,
) -> None:
    items = [
        *_items(2),
        {"id": "svg", "image_base64": _b64(SVG)},
        {"id": "not-base64", "image_base64": "!!!"},
    ]
    with running_receiver() as receiver:
        response = client.post(
            "/v1/jobs",
            json={"items": items, "callback_url": f"{receiver.url}/hook?x=1"},
            headers=WEB,
        )
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        assert location == response.json()["location"] == f"/v1/jobs/{response.json()['id']}"
        view = _finished(client, location)
        assert (view["total"], view["done"], view["failed"]) == (4, 4, 2)
        assert [r["id"] for r in view["results"]] == ["m0", "m1", "svg", "not-base64"]
        assert [r["status"] for r in view["results"]] == [200, 200, 415, 400]
        assert view["results"][0]["result"]["emotion"]
        page = client.get(location, headers=WEB, params={"offset": 2, "limit": 1}).json()
        assert [r["id"] for r in page["results"]] == ["svg"]

        posts = receiver.wait_for(1, 60)
        assert posts[0].path == "/hook?x=1"
        header = posts[0].headers[SIGNATURE_HEADER]
        assert verify(header, posts[0].body, [SECRET], time.time())
        # What a receiver rejects: a changed body, another secret, no header.
        assert not verify(header, posts[0].body + b" ", [SECRET], time.time())
        assert not verify(header, posts[0].body, ["another"], time.time())
        assert not verify(None, posts[0].body, [SECRET], time.time())
        sent = json.loads(posts[0].body)
        assert [r["status"] for r in sent["results"]] == [200, 200, 415, 400]
        callback = _callback_state(client, location, "delivered")
        assert callback["attempts"] == 1
        stamp = int(header.split(",")[0].removeprefix("t="))
        assert sign(SECRET, posts[0].body, stamp) == header


def test_a_failing_receiver_is_retried_and_its_last_error_kept(client: httpx.Client) -> None:
    with running_receiver(fail_first=2) as receiver:
        response = client.post(
            "/v1/jobs", json={"items": _items(1, 60), "callback_url": receiver.url}, headers=WEB
        )
        location = response.headers["location"]
        callback = _callback_state(client, location, "delivered")
        assert callback["attempts"] == 3 and len(receiver.wait_for(3, 30)) == 3
    with running_receiver(fail_first=-1) as receiver:
        response = client.post(
            "/v1/jobs", json={"items": _items(1, 61), "callback_url": receiver.url}, headers=WEB
        )
        callback = _callback_state(client, response.headers["location"], "failed")
        assert callback["attempts"] == 3 and "500" in (callback["last_error"] or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:6379/",
        "http://127.0.0.1.evil.example/hook",
        "file:///etc/passwd",
        "http://user:pass@127.0.0.1/hook",
    ],
)
def test_a_callback_off_the_allowlist_is_refused_at_submit(client: httpx.Client, url: str) -> None:
    response = client.post("/v1/jobs", json={"items": _items(1), "callback_url": url}, headers=WEB)
    assert response.status_code == 422, response.text
    assert "callback_url" in response.json()["error"]["message"]


def test_keys_own_their_jobs_and_limits_hold(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"items": _items(1, 62)}, headers=WEB)
    location = response.headers["location"]
    assert client.get(location, headers=OTHER).status_code == 404
    assert client.post(f"{location}/cancel", headers=OTHER).status_code == 404
    assert client.get(location).status_code == 401
    no_secret = client.post(
        "/v1/jobs", json={"items": _items(1), "callback_url": "http://127.0.0.1:9/x"}, headers=OTHER
    )
    assert no_secret.status_code == 422 and "secret" in no_secret.json()["error"]["message"]
    too_many = client.post("/v1/jobs", json={"items": _items(13)}, headers=WEB)
    assert too_many.status_code == 422
    unknown = client.post("/v1/jobs", json={"items": _items(1), "policy": "nope"}, headers=WEB)
    assert unknown.status_code == 422
    assert client.get("/v1/jobs/not-a-job", headers=WEB).status_code == 404
    _finished(client, location)


def test_cancel_stops_the_items_not_yet_analysed(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"items": _items(12, 70)}, headers=WEB)
    location = response.headers["location"]
    cancelled = client.post(f"{location}/cancel", headers=WEB)
    assert cancelled.status_code == 200, cancelled.text
    view = _finished(client, location)
    assert view["state"] == "cancelled"
    assert view["done"] < 12  # at most the items already claimed were analysed
