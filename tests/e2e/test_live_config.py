"""An operator's live change: `serve deploy` of an edited profile against `make run`.

Only the LoadController's user_config changes, so Serve reconfigures the running
replicas: the level follows the new `force_level` and no replica is replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.make_run import Service, shipped_profile_on_free_port, stop_and_check


def status(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/v1/status", timeout=10).json()
    return body


def serve_deploy(profile: Path, dashboard: str) -> subprocess.CompletedProcess[str]:
    # A fresh local cluster has token auth on; the CLI must use it too.
    env = dict(os.environ, RAY_AUTH_MODE="token")
    serve_cli = Path(sys.executable).parent / "serve"
    return subprocess.run(
        [str(serve_cli), "deploy", str(profile), "--address", dashboard],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_deploy_changes_the_level_live_without_restarts(tmp_path: Path) -> None:
    profile = shipped_profile_on_free_port("dev-cpu.yaml", tmp_path)
    service = Service(profile)
    try:
        url = service.wait_for_line(r"memeserve: ready in [0-9.]+ s at (http://\S+)", 300).group(1)
        dashboard = service.wait_for_line(r"dashboard at \S*?(http://[0-9.]+:\d+)", 10).group(1)
        before = status(url)
        assert before["degradation"]["level"] == 0

        document = yaml.safe_load(profile.read_text("utf-8"))
        (controller,) = [
            d for d in document["applications"][0]["deployments"] if d["name"] == "LoadController"
        ]
        controller["user_config"]["force_level"] = 2
        profile.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
        deployed = serve_deploy(profile, dashboard)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        deadline = time.monotonic() + 60
        after = status(url)
        while after["degradation"]["level"] != 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            after = status(url)
        assert after["degradation"]["level"] == 2 and after["degradation"]["controller"] == "forced"
        assert after["degradation"]["replica"] == before["degradation"]["replica"]
        assert after["engine"]["replica"] == before["engine"]["replica"]

        # Replicas pick the level up from their local copy within a refresh period.
        for attempt in range(60):
            data = meme_bytes(MemeSpec(template=7700 + attempt, top="前方高能"), "PNG")
            answer = httpx.post(
                f"{url}/v1/memes/analyze", files={"image": ("m.png", data)}, timeout=60
            )
            assert answer.status_code == 200, answer.text
            meta = answer.json()["meta"]
            if meta["degradation_level"] == 2:
                break
            time.sleep(0.5)
        assert meta["degradation_level"] == 2 and meta["image"]["visual_tokens"] <= 64
        stop_and_check(service, url)
    finally:
        service.ensure_stopped()
