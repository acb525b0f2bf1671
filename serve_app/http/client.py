"""Python client for a running memeserve: sync and async, typed results, polite retries.

    from serve_app.http.client import MemeServeClient

    with MemeServeClient("http://127.0.0.1:8000") as client:
        analysis = client.analyze("meme.jpg", text="你说得对，但是")
        print(analysis.emotion, analysis.risk.action)

Retries: 429 and 503 (the service is shedding load or not ready) and connection
failures are retried up to ``retries`` times, waiting what the ``Retry-After`` header
asks (capped at ``max_retry_wait_s``), else an exponential backoff. Every other error
raises :class:`ApiError` at once with the server's code, message and request id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from serve_app.http.wire import BatchResponse
from serve_app.understanding.analysis import Analysis

ImageInput = bytes | str | Path
"""Raw image bytes, or a path to an image file."""

RETRY_STATUSES = frozenset({429, 503})


def transport_error(exc: httpx.TransportError) -> ApiError:
    """A failure to get any answer, as an :class:`ApiError` with status 0.

    Its code says which: ``timeout`` (no answer within the client's ``timeout_s``) or
    ``unreachable`` (no connection, or the connection broke).
    """
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return ApiError(0, code, str(exc) or type(exc).__name__, None)


class ApiError(Exception):
    """The service answered with an error body (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"HTTP {status} {code}: {message} (request {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            detail = response.json()["error"]
            return cls(
                response.status_code, detail["code"], detail["message"], detail["request_id"]
            )
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:300], None)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of ``/v1/memes/analyze/stream``."""

    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait before retrying a 429/503 or lost connection."""

    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            header = response.headers.get("retry-after")
            if header is not None:
                try:
                    return min(self.max_wait_s, max(0.0, float(header)))
                except ValueError:
                    pass
        return min(self.max_wait_s, self.backoff_s * 2**attempt)


def _image_bytes(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _analyze_files(image: ImageInput, text: str | None) -> dict[str, Any]:
    name = "image" if isinstance(image, bytes) else Path(image).name
    files = {"image": (name, _image_bytes(image), "application/octet-stream")}
    return {"files": files, "data": {"text": text} if text is not None else None}


def _batch_body(items: Sequence[tuple[str, ImageInput, str | None]]) -> dict[str, Any]:
    return {
        "items": [
            {
                "id": item_id,
                "image_base64": base64.b64encode(_image_bytes(image)).decode(),
                "text": text,
            }
            for item_id, image, text in items
        ]
    }


def _list_path(name: str) -> str:
    return f"/v1/lists/{quote(name, safe='')}"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class SseParser:
    """Turns ``text/event-stream`` lines into :class:`StreamEvent` objects, one at a time."""

    def __init__(self) -> None:
        self._event = "message"
        self._data = ""

    def feed(self, line: str) -> StreamEvent | None:
        """The event that ``line`` completes, if it completes one."""
        if line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("data:"):
            self._data += line[5:].strip()
        elif not line and self._data:
            event = StreamEvent(self._event, json.loads(self._data))
            self._event, self._data = "message", ""
            return event
        return None


class MemeServeClient:
    """Synchronous client; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers=_headers(api_key),
            transport=transport,
        )

    def __enter__(self) -> MemeServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                wait = self._retry.wait_s(attempt, None)
                if wait is None:
                    raise transport_error(exc) from exc
            else:
                if response.is_success:
                    return response
                wait = self._retry.wait_s(attempt, response)
                if wait is None:
                    raise ApiError.from_response(response)
            time.sleep(wait)
            attempt += 1

    def analyze(self, image: ImageInput, text: str | None = None) -> Analysis:
        """One meme's analysis."""
        response = self._request("POST", "/v1/memes/analyze", **_analyze_files(image, text))
        return Analysis.model_validate(response.json())

    def analyze_batch(self, items: Sequence[tuple[str, ImageInput, str | None]]) -> BatchResponse:
        """``(id, image, text)`` items; each result or error comes back under its id."""
        response = self._request("POST", "/v1/memes/analyze/batch", json=_batch_body(items))
        return BatchResponse.model_validate(response.json())

    def stream(self, image: ImageInput, text: str | None = None) -> Iterator[StreamEvent]:
        """The stream's events as they arrive (no retries once events have started)."""
        try:
            with self._http.stream(
                "POST", "/v1/memes/analyze/stream", **_analyze_files(image, text)
            ) as response:
                if not response.is_success:
                    response.read()
                    raise ApiError.from_response(response)
                parser = SseParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        result: dict[str, Any] = self._request("GET", "/v1/status").json()
        return result

    # -- scenes admin: term and image lists, the review audit (admin scope) --------------

    def lists(self) -> dict[str, dict[str, dict[str, int]]]:
        """``GET /v1/lists``: list → ``{"terms": {action: count}, "images": {action: count}}``."""
        result: dict[str, dict[str, dict[str, int]]] = self._request("GET", "/v1/lists").json()[
            "lists"
        ]
        return result

    def list_terms(self, name: str) -> dict[str, str]:
        """``GET /v1/lists/{name}/terms``: term → action (empty for an unknown list)."""
        result: dict[str, str] = self._request("GET", f"{_list_path(name)}/terms").json()["terms"]
        return result

    def add_terms(self, name: str, action: str, terms: Sequence[str]) -> dict[str, Any]:
        """``POST /v1/lists/{name}/terms``: at most 10,000 terms, all with ``action``."""
        body = {"action": action, "terms": list(terms)}
        result: dict[str, Any] = self._request(
            "POST", f"{_list_path(name)}/terms", json=body
        ).json()
        return result

    def remove_terms(self, name: str, terms: Sequence[str]) -> dict[str, Any]:
        """``POST /v1/lists/{name}/terms/remove``: at most 10,000 terms; absent ones are ignored."""
        result: dict[str, Any] = self._request(
            "POST", f"{_list_path(name)}/terms/remove", json={"terms": list(terms)}
        ).json()
        return result

    def list_images(self, name: str) -> list[dict[str, Any]]:
        """``GET /v1/lists/{name}/images``: entries (``entry_id``, ``action``, ``label``, …)."""
        result: list[dict[str, Any]] = self._request("GET", f"{_list_path(name)}/images").json()[
            "images"
        ]
        return result

    def add_image(
        self, name: str, image: ImageInput, action: str, label: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/lists/{name}/images``: the image and its near copies; ``entry_id`` back."""
        filename = "image" if isinstance(image, bytes) else Path(image).name
        files = {"image": (filename, _image_bytes(image), "application/octet-stream")}
        data = {"action": action} if label is None else {"action": action, "label": label}
        result: dict[str, Any] = self._request(
            "POST", f"{_list_path(name)}/images", files=files, data=data
        ).json()
        return result

    def remove_image(self, name: str, entry_id: str) -> dict[str, Any]:
        """``POST /v1/lists/{name}/images/remove``: take the entry ``entry_id`` off the list."""
        result: dict[str, Any] = self._request(
            "POST", f"{_list_path(name)}/images/remove", json={"entry_id": entry_id}
        ).json()
        return result

    def review_audit(self, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        """``GET /v1/reviews``: at most ``limit`` (1-500) audit rows, newest first.

        Only rows with ``seq`` below ``before_seq`` when given: page back with the last
        row's ``seq`` until a page is short. Each row: ``review_id``, ``seq``, ``at``,
        ``reviewer``, ``key``, ``request_id``, ``before``, ``after``, ``note``.
        """
        params: dict[str, int] = {"limit": limit}
        if before_seq is not None:
            params["before_seq"] = before_seq
        result: list[dict[str, Any]] = self._request("GET", "/v1/reviews", params=params).json()[
            "reviews"
        ]
        return result

    def reviewed_set(self, limit: int = 100, after_seq: int = 0) -> list[dict[str, Any]]:
        """``GET /v1/reviews/latest``: the latest review of each reviewed image, oldest first.

        At most ``limit`` (1-500) rows with ``seq`` above ``after_seq``: page on with the
        last row's ``seq`` until a page is short. Each row: ``review_id``, ``seq``, ``at``,
        ``reviewer``, ``labels`` (the reviewer's), ``before`` (the model's, or None),
        ``request_id`` and ``thumbnail`` (base64 JPEG, or None).
        """
        params = {"limit": limit, "after_seq": after_seq}
        result: list[dict[str, Any]] = self._request(
            "GET", "/v1/reviews/latest", params=params
        ).json()["reviews"]
        return result


class AsyncMemeServeClient:
    """Asynchronous client with the same methods as :class:`MemeServeClient`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers=_headers(api_key),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncMemeServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                wait = self._retry.wait_s(attempt, None)
                if wait is None:
                    raise transport_error(exc) from exc
            else:
                if response.is_success:
                    return response
                wait = self._retry.wait_s(attempt, response)
                if wait is None:
                    raise ApiError.from_response(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def analyze(self, image: ImageInput, text: str | None = None) -> Analysis:
        response = await self._request("POST", "/v1/memes/analyze", **_analyze_files(image, text))
        return Analysis.model_validate(response.json())

    async def analyze_batch(
        self, items: Sequence[tuple[str, ImageInput, str | None]]
    ) -> BatchResponse:
        response = await self._request("POST", "/v1/memes/analyze/batch", json=_batch_body(items))
        return BatchResponse.model_validate(response.json())

    async def stream(
        self, image: ImageInput, text: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        try:
            async with self._http.stream(
                "POST", "/v1/memes/analyze/stream", **_analyze_files(image, text)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise ApiError.from_response(response)
                parser = SseParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self._request("GET", "/v1/status")).json()
        return result
