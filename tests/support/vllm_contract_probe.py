"""Build vLLM's argument objects from memeserve profiles; run with a Python that has vLLM.

    .venv-vllm/bin/python tests/support/vllm_contract_probe.py autoscale_configs/*.yaml

For every application whose engine is ``vllm``: ``AsyncEngineArgs(**kwargs)`` from the
kwargs the engine would pass (an unknown or removed argument is a ``TypeError``), each
value validated against the type vLLM declares for that field, and ``SamplingParams``
(plain and streaming) for every degradation level. Prints one JSON report; exit 1 on
any problem. Needs vLLM's Python API only, not a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import TypeAdapter, ValidationError

from serve_app.config.check import controller_config
from serve_app.config.models import AppArgs, ControllerUserConfig
from serve_app.engines.base import EngineRequest
from serve_app.engines.vllm_engine import build_engine_kwargs, sampling_params


def check_engine_kwargs(kwargs: dict[str, Any]) -> list[str]:
    """Problems building ``AsyncEngineArgs`` from ``kwargs``."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    problems: list[str] = []
    try:
        AsyncEngineArgs(**kwargs)
    except TypeError as exc:
        problems.append(f"AsyncEngineArgs: {exc}")
    declared = {field.name: field.type for field in dataclasses.fields(AsyncEngineArgs)}
    for name, value in kwargs.items():
        if name not in declared:
            continue  # already reported by the constructor
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(declared[name])
        except Exception:
            continue  # a type pydantic cannot express; the constructor accepted it
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            problems.append(f"{name}={value!r}: not a {declared[name]}: {exc.errors()[0]['msg']}")
    quantization = kwargs.get("quantization")
    if quantization is not None:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        if quantization not in QUANTIZATION_METHODS:
            problems.append(f"quantization={quantization!r}: vLLM has no such method")
    return problems


def check_levels(args: AppArgs, controller: ControllerUserConfig) -> tuple[list[str], int]:
    """Problems building ``SamplingParams`` for each level; and how many were built."""
    problems: list[str] = []
    built = 0
    for level in controller.levels:
        request = EngineRequest(
            request_id=f"contract-{level.level}",
            image=np.zeros((28, 28, 3), dtype=np.uint8),
            context=None,
            max_output_tokens=level.max_output_tokens,
            max_visual_tokens=level.max_visual_tokens,
            explanation_max_chars=level.explanation_max_chars,
            level=level.level,
        )
        for stream in (False, True):
            try:
                params = sampling_params(request, args.engine.vllm, stream=stream)
            except Exception as exc:
                problems.append(f"level {level.level}: SamplingParams: {exc}")
                continue
            built += 1
            if params.max_tokens != level.max_output_tokens:
                problems.append(f"level {level.level}: max_tokens {params.max_tokens}")
            if args.engine.vllm.structured_output and params.structured_outputs is None:
                problems.append(f"level {level.level}: structured output was dropped")
    return problems, built


def check_file(path: Path) -> dict[str, Any]:
    """The report for one Serve config file."""
    document = yaml.safe_load(path.read_text("utf-8"))
    report: dict[str, Any] = {"file": str(path), "applications": []}
    for index, application in enumerate(document.get("applications") or []):
        args = AppArgs.model_validate(application.get("args") or {})
        if args.engine.kind != "vllm":
            continue
        kwargs = build_engine_kwargs(args.engine)
        level_problems, built = check_levels(args, controller_config(application))
        report["applications"].append(
            {
                "index": index,
                "engine_kwargs": sorted(kwargs),
                "sampling_params_built": built,
                "problems": check_engine_kwargs(kwargs) + level_problems,
            }
        )
    return report


def main(argv: list[str]) -> int:
    import vllm

    reports = [check_file(Path(name)) for name in argv]
    failed = any(app["problems"] for report in reports for app in report["applications"])
    print(json.dumps({"vllm": vllm.__version__, "files": reports}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
