"""What the vllm engine passes to vLLM, checked without vLLM (the contract test uses vLLM)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from serve_app.config.models import ControllerUserConfig, EngineArgs
from serve_app.engines import create_engine
from serve_app.engines.vllm_engine import VllmEngine, build_engine_kwargs, sampling_kwargs
from serve_app.errors import ServiceUnavailable
from serve_app.understanding.prompts import FIELD_ORDER, processor_size, text_bound


def vllm_args(**vllm: object) -> EngineArgs:
    return EngineArgs.model_validate(
        {"kind": "vllm", "model_id": "glm", "model_path": "/models/glm", "vllm": vllm}
    )


def test_defaults_fill_in_what_production_relies_on() -> None:
    kwargs = build_engine_kwargs(vllm_args())
    assert kwargs["model"] == "/models/glm"
    assert kwargs["served_model_name"] == "glm"
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kwargs["disable_log_stats"] is False  # the load figures come from stats
    # Whitespace-free JSON grammar: an engine-level switch, xgrammar named explicitly.
    assert kwargs["structured_outputs_config"] == {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
    # The engine-level image cap equals the largest level budget (memory profiling).
    assert kwargs["mm_processor_kwargs"] == {"size": processor_size(1024)}
    assert processor_size(1024)["longest_edge"] == 2 * 28 * 28 * 1024


def test_profile_values_win_over_defaults() -> None:
    args = vllm_args(
        engine_kwargs={
            "model": "/other",
            "enable_prefix_caching": False,
            "mm_processor_kwargs": {"size": {"shortest_edge": 1, "longest_edge": 2}, "x": 1},
            "dtype": "float16",
        }
    )
    kwargs = build_engine_kwargs(args)
    assert kwargs["model"] == "/other" and kwargs["dtype"] == "float16"
    assert kwargs["enable_prefix_caching"] is False
    assert kwargs["mm_processor_kwargs"] == {
        "size": {"shortest_edge": 1, "longest_edge": 2},
        "x": 1,
    }


def test_the_engine_cap_is_the_configured_largest_budget() -> None:
    args = EngineArgs.model_validate({"kind": "vllm", "model_path": "/m", "max_visual_tokens": 512})
    assert build_engine_kwargs(args)["mm_processor_kwargs"] == {"size": processor_size(512)}
    engine = create_engine(args)
    assert isinstance(engine, VllmEngine)


@pytest.mark.parametrize("level", ControllerUserConfig().levels, ids=lambda row: row.name)
def test_sampling_is_greedy_bounded_and_schema_constrained(level: object) -> None:
    from serve_app.config.models import LevelArgs

    assert isinstance(level, LevelArgs)
    kwargs = sampling_kwargs(
        max_output_tokens=level.max_output_tokens,
        explanation_max_chars=level.explanation_max_chars,
        structured_output=True,
    )
    assert kwargs["temperature"] == 0.0
    assert kwargs["max_tokens"] == level.max_output_tokens
    schema = kwargs["structured_outputs"]["json"]
    assert list(schema["properties"]) == list(FIELD_ORDER)  # labels first
    explanation = schema["properties"]["explanation"]
    assert text_bound(explanation) == max(1, level.explanation_max_chars)
    assert schema["additionalProperties"] is False
    unconstrained = sampling_kwargs(
        max_output_tokens=16, explanation_max_chars=10, structured_output=False
    )
    assert "structured_outputs" not in unconstrained


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vllm is installed in this environment"
)
def test_start_without_vllm_says_how_to_install_it() -> None:
    engine = VllmEngine(vllm_args())
    with pytest.raises(ServiceUnavailable, match=r"memeserve\[gpu\]"):
        asyncio.run(engine.start())
    with pytest.raises(ServiceUnavailable, match="not started"):
        engine.check_health()


def test_relative_model_path_is_pinned_where_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = EngineArgs.model_validate({"kind": "transformers", "model_path": "ckpt"})
    assert args.model_path == tmp_path / "ckpt"


def test_profile_sampling_kwargs_come_first_and_ours_win() -> None:
    kwargs = sampling_kwargs(
        max_output_tokens=64,
        explanation_max_chars=40,
        structured_output=False,
        extra={"repetition_penalty": 1.05, "max_tokens": 9999, "temperature": 0.7},
    )
    assert kwargs["repetition_penalty"] == 1.05
    assert kwargs["max_tokens"] == 64 and kwargs["temperature"] == 0.0


def test_budget_fitted_schema_when_the_profile_asks_for_it() -> None:
    fitted = sampling_kwargs(
        max_output_tokens=320,
        explanation_max_chars=300,
        structured_output=True,
        json_tokens_per_char=4,
    )["structured_outputs"]["json"]
    plain = sampling_kwargs(
        max_output_tokens=320, explanation_max_chars=300, structured_output=True
    )["structured_outputs"]["json"]
    assert text_bound(plain["properties"]["explanation"]) == 300
    fitted_chars = text_bound(fitted["properties"]["explanation"])
    assert fitted_chars is not None and fitted_chars < 300
    assert fitted["properties"]["ocr_text"]["maxItems"] <= 5


def test_raw_json_validity_is_strict() -> None:
    from serve_app.engines.vllm_engine import raw_json_valid

    answer: dict[str, object] = {
        "emotion": "anger",
        "intent": "offensive",
        "sarcastic": True,
        "offensiveness": 2,
        "confidence": 0.5,
        "explanation": "阴阳怪气",
        "ocr_text": ["你说得对"],
        "slang": [],
    }
    assert list(answer) == list(FIELD_ORDER)
    assert raw_json_valid(json.dumps(answer, ensure_ascii=False))
    assert not raw_json_valid(json.dumps(answer)[:-1])  # truncated
    assert not raw_json_valid(json.dumps({"emotion": "anger"}))  # fields missing
    for field, bad in [
        ("emotion", "rage"),
        ("offensiveness", 4),
        ("offensiveness", True),
        ("confidence", 1.5),
        ("sarcastic", "yes"),
        ("slang", "nsdd"),
        ("explanation", "a\x13b"),  # a raw control character is not strict JSON
    ]:
        # json.dumps escapes the control character: put it back raw, as xgrammar wrote it.
        text = json.dumps({**answer, field: bad}, ensure_ascii=False).replace("\\u0013", "\x13")
        assert not raw_json_valid(text), (field, bad)
    assert not raw_json_valid("   ")
