"""The routes the benchmarks call, their shared httpx clients, and posting a meme."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

logger = logging.getLogger(__name__)

ANALYZE = "/v1/memes/analyze"
BATCH = "/v1/memes/analyze/batch"
STREAM = "/v1/memes/analyze/stream"
STATUS = "/v1/status"
READYZ = "/readyz"
SHED_STATUSES = (429, 503)
"""The statuses of a service shedding load (each should carry ``Retry-After``)."""


def async_client(
    url: str, timeout_s: float, *, max_connections: int = 4096, max_keepalive: int = 512
) -> httpx.AsyncClient:
    """An async client on ``url`` with room for an open loop's many connections."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits)


async def post_meme(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    filename: str = "meme.jpg",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST one JPEG meme to the analyze route (multipart ``image``)."""
    return await client.post(
        ANALYZE, files={"image": (filename, data, "image/jpeg")}, headers=headers
    )


def analyze(client: httpx.Client, data: bytes, text: str | None) -> tuple[float, dict[str, Any]]:
    """POST a meme (and its ``text``); (round trip in ms, the body). Non-200 raises."""
    started = time.perf_counter()
    response = client.post(
        ANALYZE, files={"image": ("m.jpg", data)}, data={"text": text} if text else None
    )
    elapsed = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return elapsed, response.json()
