"""The arguments the vllm engine passes, checked against vLLM 0.33's real classes.

vLLM cannot run without CUDA, but its argument classes import with the wheel
installed without its dependencies (``make vllm-contract-env`` builds that separate
environment, ``.venv-vllm``, on top of the project's). A misspelt or removed engine
argument in a shipped profile, or a SamplingParams field that vLLM dropped, fails
here rather than on a GPU node.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

PROBE = ROOT / "tests" / "support" / "vllm_contract_probe.py"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROFILES = sorted((ROOT / "autoscale_configs").glob("*.yaml"))


def run_probe(*files: Path) -> subprocess.CompletedProcess[str]:
    if not VLLM_PYTHON.exists():
        message = "no .venv-vllm: run `make vllm-contract-env` (make test does)"
        if os.environ.get("MEMESERVE_REQUIRE_VLLM_CONTRACT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(VLLM_PYTHON), str(PROBE), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_every_shipped_vllm_profile_builds_vllm_arguments() -> None:
    result = run_probe(*PROFILES)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["vllm"] == "0.33.0"
    checked = {
        Path(entry["file"]).name: entry["applications"]
        for entry in report["files"]
        if entry["applications"]
    }
    assert {"t4.yaml", "h100.yaml"} <= set(checked)
    for applications in checked.values():
        for application in applications:
            assert application["problems"] == []
            assert application["sampling_params_built"] == 8  # 4 levels, plain and streaming
            assert {"model", "mm_processor_kwargs", "enable_prefix_caching"} <= set(
                application["engine_kwargs"]
            )


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        ({"max_num_seq": 8}, "max_num_seq"),  # misspelt
        ({"dtype": "fp16"}, "dtype"),  # not one of vLLM's dtypes
        ({"quantization": "awq4"}, "awq4"),
        ({"gpu_memory_utilization": "most"}, "gpu_memory_utilization"),
    ],
)
def test_a_wrong_engine_argument_fails_the_contract(
    tmp_path: Path, edit: dict[str, Any], complaint: str
) -> None:
    import yaml

    document = yaml.safe_load((ROOT / "autoscale_configs" / "t4.yaml").read_text("utf-8"))
    document["applications"][0]["args"]["engine"]["vllm"]["engine_kwargs"].update(edit)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document), "utf-8")
    result = run_probe(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = json.loads(result.stdout)["files"][0]["applications"][0]["problems"]
    assert any(complaint in problem for problem in problems), problems
