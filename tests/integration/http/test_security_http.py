"""API keys, per-key rate limits and CORS at the ingress, over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.http.auth import hash_key
from serve_app.http.client import ApiError, MemeServeClient

GOOD_KEY = "test-key-good-0123"
SLOW_KEY = "test-key-slow"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    return {
        "security": {
            "require_api_key": True,
            "api_keys": [
                {"name": "good", "sha256": hash_key(GOOD_KEY)},
                # Two requests, then one token per ~17 minutes: the third is refused.
                {"name": "slow", "sha256": hash_key(SLOW_KEY), "rate_per_s": 0.001, "burst": 2},
            ],
            "cors_allow_origins": [ORIGIN],
        }
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def meme() -> bytes:
    return meme_bytes(MemeSpec(template=3, top="笑死我了"))


def analyze(client: httpx.Client, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(
        "/v1/memes/analyze", files={"image": ("meme.png", meme())}, headers=headers or {}
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["request_id"]
    return body


def test_no_key_is_401_with_a_bearer_challenge(client: httpx.Client) -> None:
    response = analyze(client, {"x-request-id": "sec-test-401"})
    body = assert_error(response, 401, "unauthorized")
    assert body["error"]["request_id"] == "sec-test-401"
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(analyze(client, {"authorization": "Basic abc"}), 401, "unauthorized")
    assert_error(client.get("/v1/status"), 401, "unauthorized")


def test_wrong_key_is_403(client: httpx.Client) -> None:
    assert_error(analyze(client, bearer("not-a-key")), 403, "forbidden")
    assert_error(analyze(client, bearer(hash_key(GOOD_KEY))), 403, "forbidden")


def test_good_key_analyses(client: httpx.Client) -> None:
    response = analyze(client, bearer(GOOD_KEY))
    assert response.status_code == 200, response.text
    assert response.json()["emotion"] and response.json()["request_id"]


def test_past_the_rate_is_429_with_retry_after(client: httpx.Client) -> None:
    assert client.get("/v1/status", headers=bearer(SLOW_KEY)).status_code == 200
    assert client.get("/v1/status", headers=bearer(SLOW_KEY)).status_code == 200
    response = client.get("/v1/status", headers=bearer(SLOW_KEY))
    assert_error(response, 429, "too_many_requests")
    assert int(response.headers["retry-after"]) >= 1
    # Other keys have their own bucket.
    assert client.get("/v1/status", headers=bearer(GOOD_KEY)).status_code == 200


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/docs", "/openapi.json"])
def test_public_paths_need_no_key(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_cors_preflight_for_an_allowed_origin(client: httpx.Client) -> None:
    response = client.options(
        "/v1/memes/analyze",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize(
    "header", ["x-request-timeout-seconds", "x-request-id", "traceparent", "tracestate"]
)
def test_cors_preflight_allows_every_documented_request_header(
    client: httpx.Client, header: str
) -> None:
    response = client.options(
        "/v1/memes/analyze",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": f"content-type, {header}",
        },
    )
    assert response.status_code == 200, response.text
    assert header in response.headers["access-control-allow-headers"].lower()


def test_cors_exposes_the_trace_and_request_ids(client: httpx.Client) -> None:
    answer = client.get("/healthz", headers={"origin": ORIGIN})
    exposed = {
        h.strip() for h in answer.headers["access-control-expose-headers"].lower().split(",")
    }
    assert {"x-request-id", "x-trace-id", "retry-after"} <= exposed


def test_cors_preflight_for_another_origin_is_refused(client: httpx.Client) -> None:
    response = client.options(
        "/v1/memes/analyze",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_headers_on_refusals_and_answers_for_allowed_origins(client: httpx.Client) -> None:
    refused = client.get("/v1/status", headers={"origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    other = client.get("/healthz", headers={"origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_python_client_sends_the_key(base_url: str) -> None:
    retry_free = {"timeout_s": 60.0}
    with MemeServeClient(base_url, api_key=GOOD_KEY, **retry_free) as client:
        analysis = client.analyze(meme())
        assert analysis.request_id
    with MemeServeClient(base_url, api_key="wrong", **retry_free) as client:
        with pytest.raises(ApiError) as caught:
            client.analyze(meme())
        assert caught.value.status == 403 and caught.value.code == "forbidden"
