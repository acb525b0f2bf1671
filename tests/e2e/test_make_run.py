"""`make run` as a user runs it: a subprocess, real HTTP, then Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.make_run import Service, running, shipped_profile_on_free_port, stop_and_check
from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shipped_profile_on_free_port("dev-cpu.yaml", tmp_path_factory.mktemp("profile"))


@pytest.fixture(scope="module")
def service(profile: Path) -> Iterator[Service]:
    with running(profile) as service:
        yield service


def test_make_run_serves_then_stops_cleanly_on_ctrl_c(service: Service, profile: Path) -> None:
    port = yaml.safe_load(profile.read_text("utf-8"))["http_options"]["port"]
    match = service.wait_for_line(r"memeserve: ready in ([0-9.]+) s at (http://\S+)", timeout_s=300)
    url = match.group(2)
    assert url == f"http://127.0.0.1:{port}"

    data = meme_bytes(MemeSpec(template=5, top="你说得对，但是", bottom="急了"), "JPEG", quality=90)
    response = httpx.post(
        f"{url}/v1/memes/analyze",
        files={"image": ("meme.jpg", data)},
        data={"text": "你说得对，但是"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "你说得对" in " ".join(body["evidence"]["ocr_text"])
    assert "你说得对但是" in body["evidence"]["slang"]

    # A refused input is the client's mistake: one INFO line with its code, no traceback;
    # the replicas' periodic load reports leave no access-log line on the console.
    before = len(service.lines)
    bad = httpx.post(f"{url}/v1/memes/analyze", files={"image": ("x.png", b"not an image")})
    assert bad.status_code in (400, 415), bad.text
    service.wait_for_line(r"request refused: 415 unsupported_media_type", timeout_s=30)
    time.sleep(2)  # four load-report periods: none of them may print a line
    console = "".join(service.lines[before:])
    assert "Traceback" not in console and " ERROR " not in console, console[-4000:]
    assert "CALL report" not in console and "CALL state" not in console, console[-4000:]

    # `memeserve drain` (serve deploy with token auth, then polling /v1/status): new
    # analyses are refused with 503 + Retry-After, nothing is left inside.
    memeserve = str(Path(sys.executable).parent / "memeserve")
    drained = subprocess.run(
        [memeserve, "drain", "--config", str(profile), "--url", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "can be deleted now" in drained.stdout
    refused = httpx.post(f"{url}/v1/memes/analyze", files={"image": ("meme.jpg", data)}, timeout=60)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert "draining" in refused.json()["error"]["message"]
    stop_and_check(service, url)
    assert "memeserve: drained in" in "".join(service.lines)


def test_make_run_on_the_tiny_glm4v_profile_builds_its_checkpoint_and_serves(
    tmp_path: Path,
) -> None:
    """`make run CONFIG=autoscale_configs/cpu-tiny-glm4v.yaml`: the transformers engine."""
    with running(shipped_profile_on_free_port("cpu-tiny-glm4v.yaml", tmp_path)) as service:
        match = service.wait_for_line(r"memeserve: ready in [0-9.]+ s at (http://\S+)", 300)
        url = match.group(1)
        assert (ROOT / ".gl" / "tiny-glm4v" / "config.json").is_file()
        data = meme_bytes(MemeSpec(template=8, top="蚌埠住了"), "PNG")
        response = httpx.post(
            f"{url}/v1/memes/analyze", files={"image": ("meme.png", data)}, timeout=120
        )
        assert response.status_code == 200, response.text
        meta = response.json()["meta"]
        assert (meta["engine"], meta["model"]) == ("transformers", "tiny-glm4v-random@tiny-1")
        stop_and_check(service, url)
