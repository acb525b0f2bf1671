"""Stopping without losing requests: drain the graph, then delete it.

Serve stops every deployment of a deleted app at once. Each replica finishes its own
requests, but a request inside the Ingress still needs the Preprocessor, the VLM pool
and the Structurer afterwards, and those have already gone: it would wait until its
deadline. So the app is drained first: the LoadController's ``draining`` flag makes
every Ingress refuse new analyses (503 with ``Retry-After``) while those inside finish,
and the app is deleted once none is left. Replacing replicas (a redeploy, downscaling)
needs none of this; Serve drains each one within ``graceful_shutdown_timeout_s``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.config.check import IMPORT_PATH
from serve_app.config.models import AppArgs, ControllerUserConfig

# A drain waits this long past the app's own request deadline before giving up.
_MARGIN_S = 5.0


def _memeserve_apps(document: dict[str, Any]) -> list[dict[str, Any]]:
    apps = [a for a in document.get("applications", []) if a.get("import_path") == IMPORT_PATH]
    if not apps:
        raise ValueError(f"no application with import_path {IMPORT_PATH} in the config")
    return apps


def _controller_entry(deployments: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The LoadController's entry among an application's deployments, if it has one."""
    return next((d for d in deployments if d.get("name") == "LoadController"), None)


def drain_timeout_s(document: dict[str, Any]) -> float:
    """How long a drain waits by default: the app's ``request_timeout_s`` + 5 s."""
    args = _memeserve_apps(document)[0].get("args") or {}
    return AppArgs.model_validate(args).request_timeout_s + _MARGIN_S


def drain_settle_s(document: dict[str, Any]) -> float:
    """How long the graph must read empty before a drain ends: two of the LoadController's
    ``idle_report_s`` (an idle Ingress hears the flag within one) plus a second, and never
    under 1.5 s."""
    slowest = 0.0
    for app in _memeserve_apps(document):
        entry = _controller_entry(app.get("deployments") or []) or {}
        config = ControllerUserConfig.model_validate(entry.get("user_config") or {})
        slowest = max(slowest, config.idle_report_s)
    return max(1.5, 2 * slowest + 1.0)


def drained_document(document: dict[str, Any], draining: bool = True) -> dict[str, Any]:
    """``document`` with ``draining`` set in every memeserve app's LoadController.

    Nothing else changes, so applying it reconfigures the LoadController in place.
    """
    drained = copy.deepcopy(document)
    for app in _memeserve_apps(drained):
        deployments = app.setdefault("deployments", [])
        entry = _controller_entry(deployments)
        if entry is None:
            entry = {"name": "LoadController"}
            deployments.append(entry)
        entry["user_config"] = {**(entry.get("user_config") or {}), "draining": draining}
    return drained


def apply_document(document: dict[str, Any], address: str | None = None) -> None:
    """Apply a config document like ``serve deploy`` (token auth as ``make run`` sets it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(document, handle, allow_unicode=True, sort_keys=False)
    command = [sys.executable, "-m", "ray.serve.scripts", "deploy", handle.name]
    if address:
        command += ["--address", address]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"serve deploy failed: {(done.stderr or done.stdout).strip()[-2000:]}")


@dataclass(frozen=True)
class DrainResult:
    """How the drain ended: ``idle`` when nothing was left inside the graph."""

    idle: bool
    waited_s: float
    in_flight: int | None


def wait_until_idle(
    base_url: str, timeout_s: float, settle_s: float = 3.0, poll_s: float = 0.25
) -> DrainResult:
    """Poll ``/v1/status`` until draining is in force and the graph stays empty.

    Empty must hold for ``settle_s``: each Ingress hears the flag and reports what it
    holds once per controller period, an idle one once per ``idle_report_s`` (1 s by
    default), so one empty reading may still be old news, and an idle Ingress that has
    not yet heard the flag would still let a new request in.
    """
    started = time.monotonic()
    in_flight: int | None = None
    empty_since: float | None = None
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while (now := time.monotonic()) - started < timeout_s:
            try:
                status = client.get("/v1/status").json()
            except (httpx.HTTPError, ValueError):
                status = None
            if status is not None:
                degradation = status.get("degradation") or {}
                in_flight = max(
                    int(status.get("in_flight") or 0), int(degradation.get("graph_in_flight") or 0)
                )
                if degradation.get("draining") and in_flight == 0:
                    empty_since = now if empty_since is None else empty_since
                    if now - empty_since >= settle_s:
                        return DrainResult(True, now - started, 0)
                else:
                    empty_since = None
            time.sleep(poll_s)
    return DrainResult(False, time.monotonic() - started, in_flight)


def drain(
    config: Path, base_url: str, timeout_s: float | None = None, address: str | None = None
) -> DrainResult:
    """Set ``draining`` on the running app from ``config`` and wait until it is idle.

    ``timeout_s`` None: :func:`drain_timeout_s` of the config.
    """
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    apply_document(drained_document(document), address)
    return wait_until_idle(
        base_url,
        drain_timeout_s(document) if timeout_s is None else timeout_s,
        settle_s=drain_settle_s(document),
    )
