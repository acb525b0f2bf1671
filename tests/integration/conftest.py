"""One real Ray Serve application per test module, driven over real HTTP."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, timeout_s: float = 120.0) -> None:
    """Poll /readyz (never sleep a fixed time for a server)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s: {last}")


def start_app(args: dict[str, Any]) -> Iterator[str]:
    """Start Ray + the memeserve graph in this process; yield its base URL."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="memeserve", route_prefix="/", blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url)
        yield base_url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    """Override in a test module to start the app with other args."""
    return {}


@pytest.fixture(scope="module")
def base_url(app_args: dict[str, Any]) -> Iterator[str]:
    yield from start_app(app_args)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        yield http
