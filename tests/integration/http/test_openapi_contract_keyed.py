"""Schemathesis against a profile with API keys and CORS on: the same contract holds.

Every fuzzed request carries a valid key (so it reaches the routes); unknown paths and
methods are sent with and without one. With :mod:`test_openapi_contract` this makes
well over 1,000 cases across the two profiles.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis

from tests.support.openapi_fuzz import fuzz_service, fuzz_unknown_routes, load_schema

KEY = "fuzz-key-0123456789abcdef"
ORIGIN = "https://web.example"
AUTH = {"authorization": f"Bearer {KEY}", "origin": ORIGIN}


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return {
        "security": {
            "api_keys": [{"name": "fuzz", "sha256": digest, "rate_per_s": None}],
            "cors_allow_origins": [ORIGIN],
        }
    }


@pytest.fixture(scope="module")
def document(base_url: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_document_holds_with_keys_and_cors_on(base_url: str, document: dict[str, Any]) -> None:
    schema: schemathesis.BaseSchema = load_schema(base_url)
    tally = fuzz_service(base_url, schema, document, headers=AUTH)
    fuzz_unknown_routes(base_url, tally, headers=AUTH)
    fuzz_unknown_routes(base_url, tally, headers={"origin": "https://evil.example"}, examples=60)
    print(f"\n{tally.summary()}")
    assert sum(tally.cases.values()) >= 500, tally.summary()
    assert not tally.failures, tally.failure_report()


def test_without_a_key_every_documented_route_is_a_json_401(base_url: str) -> None:
    for path in ("/v1/memes/analyze", "/v1/memes/analyze/batch", "/v1/memes/analyze/stream"):
        response = httpx.post(f"{base_url}{path}", json={}, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
    response = httpx.get(f"{base_url}/v1/status", timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
