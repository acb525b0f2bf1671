"""The memeserve graph started in this process, for integration tests."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from loadtest.harness.ports import free_port
from serve_app.config.check import PROXY_CALLBACK, PROXY_CALLBACK_ENV, REPLICA_LOOP_ENV


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


def with_own_library(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with fresh SQLite library and scenes files unless they name a location."""
    directory = Path(tempfile.mkdtemp(prefix="memeserve-test-"))
    cache = dict(args.get("cache") or {})
    if cache.get("backend", "sqlite") == "sqlite" and "sqlite_path" not in cache:
        # A library file per app: the default one in the working tree outlives test runs.
        cache["sqlite_path"] = str(directory / "lib.db")
    scenes = dict(args.get("scenes") or {})
    if "sqlite_path" not in scenes:
        scenes["sqlite_path"] = str(directory / "scenes.db")
    return {**args, "cache": cache, "scenes": scenes}


@contextlib.contextmanager
def _ray_with_serve(port: int) -> Iterator[None]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # As `memeserve run` does: the proxy's own errors in our JSON body (serve_app.http.edge).
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    import ray
    from ray import serve

    # address="local": always a cluster of our own, never one another process left running.
    # The Serve settings of the shipped profiles (their runtime_env), for every replica.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(REPLICA_LOOP_ENV)},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def start_app(
    args: dict[str, Any],
    controller_config: dict[str, Any] | None = None,
    ingress_config: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Start Ray + the memeserve graph in this process (``serve.run``); yield its base URL."""
    from ray import serve

    from deployments.app import build_graph

    port = free_port()
    with _ray_with_serve(port):
        serve.run(
            build_graph(with_own_library(args), controller_config, ingress_config),
            name="memeserve",
            route_prefix="/",
            blocking=False,
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url)
        yield base_url


def serve_config(args: dict[str, Any], controller_config: dict[str, Any]) -> dict[str, Any]:
    """A Serve config document for the graph, as an operator's YAML would hold it."""
    return {
        "applications": [
            {
                "name": "memeserve",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": args,
                "deployments": [{"name": "LoadController", "user_config": controller_config}],
            }
        ]
    }


def deploy(document: dict[str, Any]) -> None:
    """Apply a config document the way ``serve deploy`` does (the controller's apply_config).

    Unlike ``serve.run``, a change confined to ``user_config`` then reconfigures the
    running replicas instead of replacing them.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    assert client is not None, "Serve is not running"
    client.deploy_apps(ServeDeploySchema.model_validate(document))


def start_declarative(document: dict[str, Any]) -> Iterator[str]:
    """Start the graph from a config document (as ``serve deploy``); yield its base URL."""
    port = free_port()
    with _ray_with_serve(port):
        deploy(document)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url)
        yield base_url


def tiny_queue_document(ingress: dict[str, Any], vlm: dict[str, Any]) -> dict[str, Any]:
    """The CPU profile as an in-process drill app (one replica each, every engine call
    held 1.5 s, 30 s deadline), with ``ingress`` and ``vlm`` set on the Ingress and VLM
    pool deployments: the queues the backpressure tests make tiny."""
    import yaml

    from loadtest.fault_drill import drill_document
    from tests.support.paths import ROOT

    profile = yaml.safe_load((ROOT / "autoscale_configs/dev-cpu.yaml").read_text("utf-8"))
    for key in ("http_options", "proxy_location", "logging_config"):
        profile.pop(key, None)  # the in-process Serve instance has its own
    document = drill_document(profile, request_timeout_s=30, delay_ms=1500, replicas=1)
    for deployment in document["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.update(ingress)
        if deployment["name"] == "VLMPool":
            deployment.update(vlm)
    return document
