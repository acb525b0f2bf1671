"""Schemathesis against the OpenAPI document the running app serves (lite engine, open).

The shared fuzzing is :mod:`tests.support.openapi_fuzz`; the keyed, CORS-on profile is
``test_openapi_contract_keyed.py``. Reproducible: Hypothesis is derandomized, and every
distinct failure is reported once with a curl command that reproduces it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis

from tests.support.openapi_fuzz import (
    fuzz_service,
    fuzz_unknown_routes,
    load_schema,
)


@pytest.fixture(scope="module")
def document(base_url: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def schema(base_url: str) -> schemathesis.BaseSchema:
    return load_schema(base_url)


def test_served_openapi_document_holds_for_generated_requests(
    base_url: str, schema: schemathesis.BaseSchema, document: dict[str, Any]
) -> None:
    tally = fuzz_service(base_url, schema, document)
    fuzz_unknown_routes(base_url, tally)
    print(f"\n{tally.summary()}")
    assert not tally.failures, tally.failure_report()


def test_stream_route_documents_only_an_event_stream_for_200(document: dict[str, Any]) -> None:
    """A 200 from the stream route is always ``text/event-stream``; nothing else may be listed."""
    content = document["paths"]["/v1/memes/analyze/stream"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"text/event-stream"}, content
