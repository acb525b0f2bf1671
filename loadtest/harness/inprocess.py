"""The service under test inside this process: Ray without a dashboard, a profile deployed.

:func:`serve_in_process` starts a Ray instance of its own (``address="local"``) with no
dashboard, so that no ``serve deploy`` or job submission from another program on a shared
machine (they go to the dashboard's port, 8265 by default) can replace the application
while it is measured; starts Serve on the profile's ``http_options`` (loopback, a free
port), applies the profile's ``applications`` the way ``serve deploy`` does, and polls
``/readyz``. On the way out it shuts Serve and Ray down, whatever happened.

``memeserve run`` (:mod:`loadtest.harness.service`) is what an operator starts; this is
for benchmarks whose two runs must see nothing but their own load.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.harness.http import READYZ
from loadtest.harness.ports import free_port
from loadtest.harness.service import READY_POLL_S, START_TIMEOUT_S
from serve_app.config.check import PROXY_CALLBACK, PROXY_CALLBACK_ENV

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InProcessService:
    """Where the in-process service listens, and how long it took to be ready."""

    url: str
    ready_s: float


@contextlib.contextmanager
def serve_in_process(
    document: Mapping[str, Any], *, num_cpus: int = 2, timeout_s: float = START_TIMEOUT_S
) -> Iterator[InProcessService]:
    """Ray and Serve in this process with ``document``'s applications; see the module doc."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # As `memeserve run` does: the proxy's own errors in our JSON body (serve_app.http.edge).
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    doc = copy.deepcopy(dict(document))
    http_options = dict(doc.pop("http_options", None) or {})
    http_options["host"] = "127.0.0.1"
    http_options.setdefault("port", free_port())
    doc.pop("proxy_location", None)
    started = time.monotonic()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        serve.start(http_options=http_options)
        client = _get_global_client()
        assert client is not None, "Serve did not start"
        client.deploy_apps(ServeDeploySchema.model_validate(doc))
        url = f"http://127.0.0.1:{http_options['port']}"
        _wait_ready(url, timeout_s)
        yield InProcessService(url, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def _wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``/readyz`` until 200 (TimeoutError with the last answer after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"{url}{READYZ}")
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(READY_POLL_S)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s: {last}")
