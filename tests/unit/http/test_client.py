"""The Python client's retry rule and error mapping, against an in-process HTTP transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serve_app.http.client import ApiError, AsyncMemeServeClient, MemeServeClient, RetryPolicy

ERROR_503 = {"error": {"code": "unavailable", "message": "busy", "request_id": "r1"}}


def scripted(responses: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    return httpx.MockTransport(handler)


def status_ok() -> httpx.Response:
    return httpx.Response(200, json={"service": "memeserve"})


def test_retry_after_is_honoured_then_success(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("serve_app.http.client.time.sleep", waits.append)
    seen: list[httpx.Request] = []
    responses = [
        httpx.Response(503, json=ERROR_503, headers={"Retry-After": "2"}),
        httpx.Response(429, json=ERROR_503),
        status_ok(),
    ]
    with MemeServeClient(transport=scripted(responses, seen)) as client:
        assert client.status() == {"service": "memeserve"}
    assert len(seen) == 3
    assert waits == [2.0, 1.0]  # Retry-After, then the backoff of the second attempt


def test_gives_up_after_the_retries_with_the_servers_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("serve_app.http.client.time.sleep", lambda _s: None)
    seen: list[httpx.Request] = []
    responses = [httpx.Response(503, json=ERROR_503) for _ in range(3)]
    with (
        MemeServeClient(
            retry=RetryPolicy(retries=2), transport=scripted(responses, seen)
        ) as client,
        pytest.raises(ApiError) as error,
    ):
        client.status()
    assert len(seen) == 3
    assert (error.value.status, error.value.code, error.value.request_id) == (
        503,
        "unavailable",
        "r1",
    )


def test_client_errors_are_not_retried() -> None:
    seen: list[httpx.Request] = []
    body = {"error": {"code": "unsupported_media_type", "message": "svg", "request_id": "r"}}
    with (
        MemeServeClient(transport=scripted([httpx.Response(415, json=body)], seen)) as client,
        pytest.raises(ApiError, match="415 unsupported_media_type"),
    ):
        client.analyze(b"<svg/>")
    assert len(seen) == 1
    assert seen[0].headers["content-type"].startswith("multipart/form-data")


def test_the_wait_is_capped() -> None:
    policy = RetryPolicy(retries=5, max_wait_s=3)
    response = httpx.Response(503, headers={"Retry-After": "3600"})
    assert policy.wait_s(0, response) == 3
    assert policy.wait_s(5, response) is None


def test_async_client_retries_too(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("serve_app.http.client.asyncio.sleep", no_sleep)

    async def scenario() -> dict[str, object]:
        responses = [httpx.Response(503, json=ERROR_503, headers={"Retry-After": "1"}), status_ok()]
        seen: list[httpx.Request] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return responses.pop(0)

        async with AsyncMemeServeClient(
            api_key="k", transport=httpx.MockTransport(handler)
        ) as client:
            result = await client.status()
        assert seen[0].headers["authorization"] == "Bearer k"
        return result

    assert asyncio.run(scenario()) == {"service": "memeserve"}
    assert waits == [1.0]
