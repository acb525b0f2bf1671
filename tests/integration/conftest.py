"""One real Ray Serve application per test module, driven over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.app import start_app


@pytest.fixture(scope="module")
def app_args() -> dict[str, Any]:
    """Override in a test module to start the app with other args."""
    return {}


@pytest.fixture(scope="module")
def controller_config() -> dict[str, Any]:
    """The LoadController's user_config; override in a test module.

    Off by default: on a 2-core machine running tests, the load signals would move the
    level in the middle of tests about something else.
    """
    return {"enabled": False}


@pytest.fixture(scope="module")
def ingress_config() -> dict[str, Any] | None:
    """The Ingress's user_config (scene policies); override in a test module."""
    return None


@pytest.fixture(scope="module")
def base_url(
    app_args: dict[str, Any],
    controller_config: dict[str, Any],
    ingress_config: dict[str, Any] | None,
) -> Iterator[str]:
    yield from start_app(app_args, controller_config, ingress_config)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        yield http
