"""The ``vllm`` engine: GLM-4.6V-Flash on a GPU through vLLM's ``AsyncLLM`` (paged KV cache).

vLLM is imported inside this engine only (the module imports without it), so
``import serve_app`` and the other engines work on machines that lack it.

What the engine passes to vLLM is built by two pure functions,
:func:`build_engine_kwargs` and :func:`sampling_kwargs`, so that a contract test can
construct ``AsyncEngineArgs`` and ``SamplingParams`` from every shipped profile and
level without a GPU: a misspelt or removed vLLM argument fails the build, not a
production rollout.

Per request: the prompt is rendered with the model's own chat template (thinking
off), the image travels as ``multi_modal_data``, the level's image budget as
``mm_processor_kwargs`` (the same cap is set at engine level, so vLLM's memory
profiling sees the largest image it will get), the output is constrained to the
analysis JSON schema, and the request id is vLLM's, so a client that leaves or a
deadline that passes aborts exactly that request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from PIL import Image

from serve_app.config.models import EngineArgs, VllmArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats
from serve_app.errors import DeadlineExceeded, EngineError, MemeServeError, ServiceUnavailable
from serve_app.understanding.labels import EMOTIONS, INTENTS
from serve_app.understanding.prompts import (
    FIELD_ORDER,
    analysis_json_schema,
    build_messages,
    processor_size,
)

logger = logging.getLogger(__name__)

_DEAD_RETRY_AFTER_S: Final[float] = 10.0
"""Retry-After for requests refused by a replica whose vLLM engine process died: Serve's
health check restarts the replica (health_check_period_s) and the next one answers."""

# Defaults we rely on; a profile may override any of them explicitly.
_ENGINE_DEFAULTS: Final[dict[str, Any]] = {
    # The system prompt is shared by every request: its KV blocks are computed once.
    "enable_prefix_caching": True,
    # One meme image per prompt, never video: bounds the encoder's profiling budget.
    "limit_mm_per_prompt": {"image": 1, "video": 0},
    # Stats must stay on: the load controller's queue and KV-cache figures come
    # from the StatLogger that vLLM feeds with them.
    "disable_log_stats": False,
    # Whitespace-free JSON grammar. vLLM reads this flag from the engine's config only
    # (0.32: the xgrammar and guidance backends ignore the per-request
    # StructuredOutputsParams.disable_any_whitespace), and refuses it with backend
    # "auto". Without it a looping or random model fills its budget with whitespace
    # between two keys, and the raw text is never valid JSON.
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}


def build_engine_kwargs(args: EngineArgs) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for ``args`` (pure; no vLLM import).

    ``model`` defaults to ``engine.model_path``; ``served_model_name`` to the model id;
    the processor's image cap to ``engine.max_visual_tokens`` (the largest level budget).
    """
    kwargs: dict[str, Any] = {**_ENGINE_DEFAULTS, **args.vllm.engine_kwargs}
    if "model" not in kwargs:
        if args.model_path is None:
            raise ValueError("the vllm engine needs engine.model_path or vllm.engine_kwargs.model")
        kwargs["model"] = str(args.model_path)
    kwargs.setdefault("served_model_name", args.model_id)
    processor_kwargs = dict(kwargs.get("mm_processor_kwargs") or {})
    processor_kwargs.setdefault("size", processor_size(args.max_visual_tokens))
    kwargs["mm_processor_kwargs"] = processor_kwargs
    return kwargs


def sampling_kwargs(
    *,
    max_output_tokens: int,
    explanation_max_chars: int,
    structured_output: bool,
    json_tokens_per_char: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments for one level (pure; no vLLM import):
    the profile's ``extra`` (``vllm.sampling_kwargs``), then ours over them.

    ``structured_outputs`` holds the JSON schema as a plain dict; :func:`sampling_params`
    wraps it in vLLM's ``StructuredOutputsParams``. With ``json_tokens_per_char`` the
    schema's free text is bounded to fit ``max_output_tokens`` (see
    :func:`serve_app.understanding.prompts.fit_text_bounds`).
    """
    kwargs: dict[str, Any] = {
        **(extra or {}),
        # Greedy: a moderation judgement should not change between two identical calls.
        "temperature": 0.0,
        "max_tokens": max_output_tokens,
        "skip_special_tokens": True,
    }
    if structured_output:
        kwargs["structured_outputs"] = {
            "json": analysis_json_schema(
                explanation_max_chars,
                max_output_tokens=max_output_tokens if json_tokens_per_char else None,
                tokens_per_char=json_tokens_per_char,
            )
        }
    return kwargs


def sampling_params(request: EngineRequest, args: VllmArgs, *, stream: bool) -> Any:
    """vLLM ``SamplingParams`` for ``request`` (imports vLLM)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    kwargs = sampling_kwargs(
        max_output_tokens=request.max_output_tokens,
        explanation_max_chars=request.explanation_max_chars,
        structured_output=args.structured_output,
        json_tokens_per_char=args.json_tokens_per_char,
        extra=args.sampling_kwargs,
    )
    if "structured_outputs" in kwargs:
        kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return SamplingParams(output_kind=kind, **kwargs)


class _SchedulerFigures:
    """Latest scheduler figures and running cache counters, written by the StatLogger
    vLLM calls after each engine step."""

    def __init__(self) -> None:
        self.waiting = 0
        self.running = 0
        self.kv_cache_usage = 0.0
        # Cumulative since start: vLLM reports each step's increments.
        self.prefix_cache = {"queries": 0, "hits": 0}
        """Prompt tokens looked up in the prefix cache, and those found."""
        self.mm_cache = {"queries": 0, "hits": 0}
        """Images looked up in the multimodal processor cache, and those found."""

    def add(self, totals: dict[str, int], stats: Any) -> None:
        if stats is not None:
            totals["queries"] += int(getattr(stats, "queries", 0))
            totals["hits"] += int(getattr(stats, "hits", 0))


def _stat_logger_factory(figures: _SchedulerFigures) -> Any:
    """A vLLM ``StatLoggerBase`` subclass that copies scheduler stats into ``figures``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class FiguresLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                # vLLM 0.32 counts a request that waits for a free sequence slot
                # (max_num_seqs) or its grammar as "skipped" (deferred), not as
                # waiting: both are queued work for the load controller.
                figures.waiting = scheduler_stats.num_waiting_reqs + getattr(
                    scheduler_stats, "num_skipped_waiting_reqs", 0
                )
                figures.running = scheduler_stats.num_running_reqs
                figures.kv_cache_usage = scheduler_stats.kv_cache_usage
                figures.add(figures.prefix_cache, scheduler_stats.prefix_cache_stats)
            figures.add(figures.mm_cache, mm_cache_stats)

        def log_engine_initialized(self) -> None:
            logger.info("vllm engine %d initialised", self._engine_index)

    return FiguresLogger


def _raise_on_error(request_id: str, finish_reason: str | None) -> None:
    """vLLM ends a request it could not serve (e.g. its grammar failed to build) with
    ``finish_reason="error"`` and no text: that is an engine failure, not an answer."""
    if finish_reason == "error":
        logger.error("vllm ended request %s with an error (see the engine core's log)", request_id)
        raise EngineError("vllm could not generate this answer (finish_reason=error)")


def raw_json_valid(text: str) -> bool:
    """True when ``text``, as it stands, is one strict JSON object of the analysis schema
    (every field in order, each of its type and range): what a grammar-constrained
    answer must be before the Structurer repairs anything."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict) or list(value) != list(FIELD_ORDER):
        return False
    offensiveness, confidence = value["offensiveness"], value["confidence"]
    return (
        value["emotion"] in EMOTIONS
        and value["intent"] in INTENTS
        and isinstance(value["sarcastic"], bool)
        and type(offensiveness) is int
        and 0 <= offensiveness <= 3
        and type(confidence) in (int, float)
        and 0 <= confidence <= 1
        and isinstance(value["explanation"], str)
        and all(
            isinstance(items, list) and all(isinstance(item, str) for item in items)
            for items in (value["ocr_text"], value["slang"])
        )
    )


class VllmEngine(Engine):
    """vLLM ``AsyncLLM`` engine; see the module docstring."""

    name = "vllm"

    def __init__(self, args: EngineArgs) -> None:
        self._args = args
        self._llm: Any = None
        self._tokenizer: Any = None
        self._figures = _SchedulerFigures()
        self._in_flight = 0
        self._aborted = 0
        # Constrained answers that finished, and those whose raw text was not the
        # schema's JSON (a grammar or budget problem: /v1/status shows both).
        self._json_checked = 0
        self._json_invalid = 0

    @property
    def model(self) -> str:
        return self._args.model_name

    async def start(self) -> None:
        if self._llm is not None:
            return
        try:
            from transformers import AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ServiceUnavailable(
                f"engine.kind 'vllm' needs vllm installed (pip install 'memeserve[gpu]'): {exc}"
            ) from exc
        kwargs = build_engine_kwargs(self._args)
        try:
            self._tokenizer = await asyncio.to_thread(
                AutoTokenizer.from_pretrained, kwargs.get("tokenizer") or kwargs["model"]
            )
            self._llm = AsyncLLM.from_engine_args(
                AsyncEngineArgs(**kwargs),
                stat_loggers=[_stat_logger_factory(self._figures)],
            )
        except Exception as exc:
            logger.exception("vllm engine failed to start")
            raise EngineError(f"vllm engine failed to start: {type(exc).__name__}: {exc}") from exc
        logger.info("vllm engine ready: %s", self.model)

    def check_health(self) -> None:
        if self._llm is None:
            raise ServiceUnavailable("vllm engine is not started", retry_after_s=5.0)
        if self._llm.errored:
            raise ServiceUnavailable("vllm engine is dead", retry_after_s=_DEAD_RETRY_AFTER_S)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def stats(self) -> EngineStats:
        return EngineStats(
            in_flight=self._in_flight,
            waiting=self._figures.waiting,
            kv_cache_usage=self._figures.kv_cache_usage,
            aborted=self._aborted,
            details={
                "running": self._figures.running,
                "prefix_cache": dict(self._figures.prefix_cache),
                "mm_cache": dict(self._figures.mm_cache),
                "raw_json": {"checked": self._json_checked, "invalid": self._json_invalid},
            },
        )

    def _check_json(self, request_id: str, text: str, finish_reason: str | None) -> None:
        """Count a finished constrained answer, and log one that is not the schema's JSON."""
        if not self._args.vllm.structured_output:
            return
        self._json_checked += 1
        if raw_json_valid(text):
            return
        self._json_invalid += 1
        logger.warning(
            "vllm request %s: raw output is not the analysis JSON (finish %s, %d chars)",
            request_id,
            finish_reason,
            len(text),
        )

    def _prompt(self, request: EngineRequest) -> dict[str, Any]:
        text = self._tokenizer.apply_chat_template(
            build_messages(request.context),
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=False,
        )
        prompt: dict[str, Any] = {
            "prompt": text,
            "multi_modal_data": {"image": Image.fromarray(request.image)},
            "mm_processor_kwargs": {"size": processor_size(request.max_visual_tokens)},
        }
        if request.image_key is not None:
            # vLLM keys its multimodal caches by this id instead of hashing the pixels;
            # it still hashes it together with mm_processor_kwargs, so one image at two
            # levels' budgets stays two entries.
            prompt["multi_modal_uuids"] = {"image": [request.image_key]}
        return prompt

    async def _outputs(self, request: EngineRequest, stream: bool) -> AsyncIterator[Any]:
        """vLLM's outputs for ``request``; aborted on cancellation or deadline."""
        self.check_health()
        request.check_deadline()
        params = sampling_params(request, self._args.vllm, stream=stream)
        timeout = None if request.deadline is None else max(0.0, request.deadline - time.time())
        finished = False
        self._in_flight += 1
        try:
            async with asyncio.timeout(timeout):
                async for output in self._llm.generate(
                    self._prompt(request), params, request.request_id
                ):
                    yield output
            finished = True
        except TimeoutError:
            raise DeadlineExceeded("the request deadline passed during generation") from None
        except MemeServeError:
            raise
        except Exception as exc:
            if self._llm.errored:
                # EngineDeadError: the engine process is gone (killed, OOM); every
                # request of this replica fails until Serve replaces it.
                logger.error("vllm engine died during %s: %s", request.request_id, exc)
                raise ServiceUnavailable(
                    "vllm engine is dead", retry_after_s=_DEAD_RETRY_AFTER_S
                ) from exc
            logger.exception("vllm generate failed for %s", request.request_id)
            raise EngineError(f"vllm engine failed: {type(exc).__name__}") from exc
        finally:
            self._in_flight -= 1
            if not finished and not self._llm.errored:
                await self._abort(request.request_id)

    async def _abort(self, request_id: str) -> None:
        self._aborted += 1
        try:
            await asyncio.shield(self._llm.abort(request_id))
        except Exception:
            logger.warning("could not abort vllm request %s", request_id, exc_info=True)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        started = time.perf_counter()
        final: Any = None
        async for output in self._outputs(request, stream=False):
            final = output
        if final is None or not final.outputs:
            raise EngineError("vllm returned no output")
        completion = final.outputs[0]
        _raise_on_error(request.request_id, completion.finish_reason)
        self._check_json(request.request_id, completion.text, completion.finish_reason)
        return EngineOutput(
            text=completion.text,
            engine=self.name,
            model=self.model,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            prompt_tokens=len(final.prompt_token_ids or ()),
            output_tokens=len(completion.token_ids),
        )

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        parts: list[str] = []
        finish_reason: str | None = None
        async for output in self._outputs(request, stream=True):
            for completion in output.outputs:
                finish_reason = completion.finish_reason or finish_reason
                _raise_on_error(request.request_id, finish_reason)
                if completion.text:
                    parts.append(completion.text)
                    yield completion.text
        self._check_json(request.request_id, "".join(parts), finish_reason)
