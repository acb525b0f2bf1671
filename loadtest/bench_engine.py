"""`make bench-engine`: a GLM-4.6V-Flash-sized model through the transformers engine.

Builds a randomly initialised ``Glm4vForConditionalGeneration`` with GLM-4.6V-Flash's
real dimensions directly in GPU memory (no download, nothing written to disk) and
serves it through :class:`~serve_app.engines.transformers_engine.TransformersEngine`,
exactly as a checkpoint would be served. For each degradation level it measures,
on one synthetic meme resized to the level's image budget:

* visual tokens and prompt tokens;
* model prefill (``model.generate`` of 1 token: vision tower + prefill + one step);
* model decode ms/token: ``(t(N tokens) - t(1 token)) / (N - 1)``;
* end to end through ``engine.generate``: 1 token, a labels-only answer
  (~24 tokens) and a full answer (the level's ``max_output_tokens``);

next to the memory-bandwidth floor of DESIGN.md §5: bytes read per decode step
(the language model's weights) / the GPU's memory bandwidth.

Random weights never stop reliably (nor early), so every length is forced with
``min_new_tokens``; the engine itself is used unchanged. Timings are medians of
``--repeats`` runs after one warm-up, bracketed by ``torch.cuda.synchronize``.

Model dimensions (GLM-4.6V-Flash = GLM-4.1V-9B architecture): text 40 layers,
hidden 4096, 32 heads (head_dim 128), 2 KV heads, MLP 13696, vocab 151552, untied
LM head, partial rotary 0.5 with M-RoPE sections [8, 12, 12]; vision 24 blocks,
hidden 1536, 12 heads, block MLP width = out_hidden_size 4096, patch merger width
(``intermediate_size``) 13696 — transformers' ``Glm4vVisionConfig`` defaults, which
are GLM-4.1V's published vision config. The tokenizer is the project's GLM-style
test tokenizer (GLM's special tokens and chat template, a small BPE vocabulary), so
prompt token counts are close to, not equal to, the real tokenizer's.

Without CUDA it says so and exits 0. Figures go to stdout and, as JSON, to
``artifacts/bench_engine.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

from loadtest.corpus import FontMissing, corpus, draw_meme, draw_template
from serve_app.config.models import AppArgs, EngineArgs, LevelArgs, TransformersArgs
from serve_app.engines.base import EngineRequest
from serve_app.engines.transformers_engine import TransformersEngine, _image_only
from serve_app.media.imaging import resize_to_budget, visual_tokens
from serve_app.ops.tiny_glm4v import (
    GLM46V_FLASH_DIMS,
    TINY_DIMS,
    build_config,
    build_tokenizer,
)
from serve_app.understanding.prompts import build_messages, processor_size

DEFAULT_OUT: Final[Path] = Path("artifacts/bench_engine.json")
MODEL_ID: Final[str] = "glm-4.6v-flash-random"
LABELS_TOKENS: Final[int] = 24
"""Output tokens of a labels-only answer (emotion … confidence as JSON)."""
CONTEXT: Final[str] = "这图也太真实了吧，笑死我了，打工人的日常就是这样，破防了家人们。"
TINY_NOTE: Final[str] = "tiny CPU smoke run, not a benchmark"
NEEDS_GPU: Final[str] = (
    "bench_engine: needs a CUDA GPU (none found); on a GPU it measures prefill, decode "
    "ms/token and end-to-end latency per level of a random GLM-4.6V-Flash-sized model "
    "served through the transformers engine, beside the memory-bandwidth floor. Skipped."
)

# Peak memory bandwidth in GB/s by GPU name (most specific pattern first).
BANDWIDTH_GBPS: Final[tuple[tuple[str, float, str], ...]] = (
    (r"\bH200\b", 4800.0, "H200"),
    (r"\bH100\b.*\bPCIE\b", 2000.0, "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", 3900.0, "H100 NVL"),
    (r"\bH100\b", 3350.0, "H100 SXM"),
    (r"\bA100\b.*\b80GB\b.*\bPCIE\b", 1935.0, "A100 80GB PCIe"),
    (r"\bA100\b.*\b80GB\b", 2039.0, "A100 80GB SXM"),
    (r"\bA100\b", 1555.0, "A100 40GB"),
    (r"\bL4\b", 300.0, "L4"),
    (r"\bT4\b", 320.0, "T4"),
)

logger = logging.getLogger("bench_engine")


@dataclass(frozen=True)
class Bandwidth:
    """The GPU's peak memory bandwidth, or ``None`` where the GPU is not in the table."""

    gbps: float | None
    matched: str


@dataclass(frozen=True)
class LevelResult:
    """One level's figures; times in milliseconds (medians)."""

    level: int
    name: str
    image_size: tuple[int, int]
    visual_tokens: int
    prompt_tokens: int
    prefill_ms: float
    decode_tokens: int
    decode_ms_per_token: float
    floor_ms_per_token: float | None
    engine_first_token_ms: float
    labels_tokens: int
    engine_labels_ms: float
    full_tokens: int
    engine_full_ms: float
    engine_output_tokens: dict[str, int]
    peak_memory_gb: float | None


def memory_bandwidth(gpu_name: str) -> Bandwidth:
    """Peak memory bandwidth for ``gpu_name`` (``torch.cuda.get_device_name``)."""
    upper = gpu_name.upper()
    for pattern, gbps, label in BANDWIDTH_GBPS:
        if re.search(pattern, upper):
            return Bandwidth(gbps, label)
    return Bandwidth(None, "unknown GPU: not in the bandwidth table, no floor computed")


class InMemoryLoader:
    """The engine's ``loader``: builds the processor and a random model on the device.

    It keeps both, so the benchmark can time the model directly as well.
    """

    def __init__(self, tokenizer: Any, config: Any, seed: int = 0) -> None:
        self._tokenizer = tokenizer
        self._config = config
        self._seed = seed
        self.processor: Any = None
        self.model: Any = None
        self.load_s = 0.0

    def __call__(self, device: str, dtype: Any) -> tuple[Any, Any]:
        import torch
        from transformers import GenerationConfig, Glm4vForConditionalGeneration, Glm4vProcessor
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        started = time.perf_counter()
        processor = _image_only(Glm4vProcessor)(
            image_processor=Glm4vImageProcessorPil(),
            tokenizer=self._tokenizer,
            video_processor=None,
            chat_template=self._tokenizer.chat_template,
        )
        torch.manual_seed(self._seed)
        with torch.device(device):
            model = Glm4vForConditionalGeneration._from_config(self._config, dtype=dtype)
        model.generation_config = GenerationConfig(
            eos_token_id=self._config.text_config.eos_token_id,
            pad_token_id=self._config.text_config.pad_token_id,
            do_sample=False,
        )
        synchronize(device)
        self.load_s = time.perf_counter() - started
        self.processor, self.model = processor, model.eval()
        return self.processor, self.model


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def weight_figures(model: Any) -> dict[str, int]:
    """Parameter counts and bytes: total, vision tower, and what one decode step reads.

    A decode step reads every language-model weight once, except the token embedding
    (one row is gathered), plus the LM head; the vision tower is not touched.
    """
    total = sum(p.numel() for p in model.parameters())
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    language = model.model.language_model
    embed = language.get_input_embeddings().weight
    decode_params = [*language.parameters(), *model.lm_head.parameters()]
    decode_bytes = sum(p.numel() * p.element_size() for p in decode_params if p is not embed)
    return {
        "parameters": total,
        "weight_bytes": total_bytes,
        "vision_parameters": vision,
        "decode_read_bytes": decode_bytes,
    }


def meme_image(seed: int, side: int) -> Image.Image:
    """One synthetic ``side``-px square meme (without the CJK font: the bare template).

    At the default 1024 px every level's budget binds (level 0: 896x896 = 1024 tokens).
    """
    spec = replace(corpus(1, seed)[0], size=(side, side))
    try:
        return draw_meme(spec)
    except FontMissing:
        logger.warning("no CJK font (make system-deps): using the meme template without captions")
        return draw_template(spec.template, spec.size)


def make_request(image: np.ndarray, level: LevelArgs, max_tokens: int, tag: str) -> EngineRequest:
    """The request the Preprocessor would build for this level."""
    return EngineRequest(
        request_id=f"bench-{level.level}-{tag}",
        image=image,
        context=CONTEXT[: level.max_context_chars] or None,
        max_output_tokens=max_tokens,
        max_visual_tokens=level.max_visual_tokens,
        explanation_max_chars=level.explanation_max_chars,
        level=level.level,
    )


def model_inputs(processor: Any, request: EngineRequest, device: str) -> Any:
    """Model inputs for ``request``, built as the transformers engine builds them."""
    prompt = processor.apply_chat_template(
        build_messages(request.context),
        add_generation_prompt=True,
        tokenize=False,
        enable_thinking=False,
    )
    inputs = processor(
        text=[prompt],
        images=[Image.fromarray(request.image)],
        return_tensors="pt",
        padding=True,
        images_kwargs={"size": processor_size(request.max_visual_tokens)},
    )
    return inputs.to(device)


def median_ms(run: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``run`` in ms over ``repeats`` runs after one warm-up."""
    run()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


async def median_ms_async(run: Callable[[], Awaitable[object]], repeats: int, device: str) -> float:
    """:func:`median_ms` for a coroutine function."""
    await run()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        await run()
        synchronize(device)
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def peak_memory_gb(device: str) -> float | None:
    """Peak allocated GPU memory since the last reset, in GB (None on the CPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 1e9


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


async def bench_level(
    engine: TransformersEngine,
    loader: InMemoryLoader,
    level: LevelArgs,
    picture: Image.Image,
    args: argparse.Namespace,
    floor_ms: float | None,
) -> LevelResult:
    """Every figure for one level; see the module docstring."""
    import torch

    device = engine.device
    model, processor = loader.model, loader.processor
    resized = resize_to_budget(picture, level.max_visual_tokens)
    image = np.asarray(resized.convert("RGB"), dtype=np.uint8)
    reset_peak_memory(device)

    # The model alone: prefill (1 token) and decode (N tokens) on prepared inputs.
    inputs = model_inputs(processor, make_request(image, level, 1, "model"), device)
    merge = model.config.vision_config.spatial_merge_size
    grid = inputs["image_grid_thw"]
    vis_tokens = int(grid.prod(dim=-1).sum()) // (merge * merge)
    if vis_tokens != visual_tokens(*resized.size):
        logger.warning(
            "processor made %d visual tokens, the resize promised %d",
            vis_tokens,
            visual_tokens(*resized.size),
        )
    prompt_tokens = int(inputs["input_ids"].shape[1])
    decode_tokens = max(2, min(args.decode_tokens, level.max_output_tokens))

    def model_generate(tokens: int) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model.generate(
                    **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
                )

        return run

    prefill_ms = median_ms(model_generate(1), args.repeats, device)
    decode_total_ms = median_ms(model_generate(decode_tokens), args.repeats, device)
    decode_ms = (decode_total_ms - prefill_ms) / (decode_tokens - 1)

    # End to end through the engine: the same image, lengths forced via the
    # generation config the engine's generate() call falls back on.
    produced: dict[str, int] = {}

    def engine_call(tokens: int, tag: str) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            model.generation_config.min_new_tokens = tokens
            try:
                output = await engine.generate(make_request(image, level, tokens, tag))
            finally:
                model.generation_config.min_new_tokens = None
            produced[tag] = output.output_tokens or 0
            return output

        return run

    first_ms = await median_ms_async(engine_call(1, "first"), args.repeats, device)
    labels_tokens = min(LABELS_TOKENS, level.max_output_tokens)
    labels_ms = await median_ms_async(engine_call(labels_tokens, "labels"), args.repeats, device)
    full_ms = await median_ms_async(
        engine_call(level.max_output_tokens, "full"), args.repeats, device
    )
    return LevelResult(
        level=level.level,
        name=level.name,
        image_size=resized.size,
        visual_tokens=vis_tokens,
        prompt_tokens=prompt_tokens,
        prefill_ms=round(prefill_ms, 2),
        decode_tokens=decode_tokens,
        decode_ms_per_token=round(decode_ms, 3),
        floor_ms_per_token=None if floor_ms is None else round(floor_ms, 3),
        engine_first_token_ms=round(first_ms, 2),
        labels_tokens=labels_tokens,
        engine_labels_ms=round(labels_ms, 2),
        full_tokens=level.max_output_tokens,
        engine_full_ms=round(full_ms, 2),
        engine_output_tokens=produced,
        peak_memory_gb=_round(peak_memory_gb(device), 2),
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(meta: dict[str, Any], results: list[LevelResult]) -> None:
    """The human-readable table."""
    gb = 1e9
    if meta["tiny"]:
        print(f"*** {TINY_NOTE}: tiny config on the CPU, numbers are meaningless ***")
    print(f"device      {meta['device_name']} ({meta['device']}), dtype {meta['dtype']}")
    print(
        f"model       {meta['model_id']}: {meta['parameters']:,} parameters "
        f"({meta['vision_parameters']:,} vision), "
        f"{meta['weight_bytes'] / gb:.2f} GB of weights, built in {meta['load_s']:.1f} s"
    )
    bandwidth = meta["bandwidth_gbps"]
    if bandwidth is None:
        print(f"floor       {meta['bandwidth_source']}")
    else:
        print(
            f"floor       {meta['decode_read_bytes'] / gb:.2f} GB read per decode step / "
            f"{bandwidth:.0f} GB/s ({meta['bandwidth_source']}) = "
            f"{meta['floor_ms_per_token']:.2f} ms/token (DESIGN.md §5)"
        )
    print(f"peak memory {_fmt(meta['peak_memory_gb'], '.2f')} GB allocated")
    print(f"timings     median of {meta['repeats']} after 1 warm-up; ms")
    header = (
        f"{'level':<12}{'image':>9}{'vis tok':>8}{'prompt':>8}{'prefill':>9}"
        f"{'decode/tok':>11}{'floor/tok':>10}{'e2e 1tok':>10}{'e2e labels':>16}"
        f"{'e2e full':>17}{'peak GB':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        labels = f"{row.engine_labels_ms:.1f} ({row.labels_tokens}t)"
        full = f"{row.engine_full_ms:.1f} ({row.full_tokens}t)"
        size = f"{row.image_size[0]}x{row.image_size[1]}"
        print(
            f"{row.level} {row.name:<10}{size:>9}{row.visual_tokens:>8}{row.prompt_tokens:>8}"
            f"{row.prefill_ms:>9.1f}{row.decode_ms_per_token:>11.2f}"
            f"{_fmt(row.floor_ms_per_token, '.2f'):>10}{row.engine_first_token_ms:>10.1f}"
            f"{labels:>16}{full:>17}{_fmt(row.peak_memory_gb, '.2f'):>9}"
        )
    print(
        "prefill = model.generate of 1 token (vision + prefill); decode/tok = "
        "(t(N) - t(1)) / (N - 1); e2e = engine.generate incl. preprocessing."
    )
    if meta["tiny"]:
        print(f"*** {TINY_NOTE} ***")


async def run_benchmark(args: argparse.Namespace, tiny: bool) -> dict[str, Any]:
    """Build, serve and measure; returns the JSON document."""
    import torch
    import transformers

    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, TINY_DIMS if tiny else GLM46V_FLASH_DIMS)
    loader = InMemoryLoader(tokenizer, config, seed=args.seed)
    app = AppArgs()
    levels = [app.level(number) for number in args.levels]
    picture = meme_image(args.seed, args.image_size)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as model_dir:
        engine_args = EngineArgs(
            kind="transformers",
            model_path=Path(model_dir),
            model_id=MODEL_ID if not tiny else "tiny-glm4v-random",
            model_version="bench",
            transformers=TransformersArgs(device="cpu" if tiny else "cuda", dtype="auto"),
        )
        engine = TransformersEngine(engine_args, loader=loader)
        await engine.start()
        try:
            device = engine.device
            model = loader.model
            dtype = str(model.dtype).removeprefix("torch.")
            name = torch.cuda.get_device_name() if device == "cuda" else platform.processor()
            bandwidth = (
                memory_bandwidth(name)
                if device == "cuda"
                else Bandwidth(None, "CPU: no memory-bandwidth floor")
            )
            weights = weight_figures(model)
            floor_ms = (
                None
                if bandwidth.gbps is None
                else weights["decode_read_bytes"] / (bandwidth.gbps * 1e9) * 1000.0
            )
            # Each level resets the peak counter: the overall peak is the largest of
            # the model build's and the levels' peaks.
            peaks = [peak_memory_gb(device)]
            results = []
            for level in levels:
                print(f"level {level.level} ({level.name}) ...", file=sys.stderr, flush=True)
                result = await bench_level(engine, loader, level, picture, args, floor_ms)
                results.append(result)
                peaks.append(result.peak_memory_gb)
            known = [value for value in peaks if value is not None]
            peak = max(known) if known else None
        finally:
            await engine.shutdown()
    meta: dict[str, Any] = {
        "tiny": tiny,
        "note": TINY_NOTE if tiny else "random weights, real GLM-4.6V-Flash dimensions",
        "model_id": engine.model,
        "device": device,
        "device_name": name or "cpu",
        "dtype": dtype,
        **weights,
        "load_s": round(loader.load_s, 2),
        "bandwidth_gbps": bandwidth.gbps,
        "bandwidth_source": bandwidth.matched,
        "floor_ms_per_token": _round(floor_ms, 3),
        "peak_memory_gb": _round(peak, 2),
        "repeats": args.repeats,
        "decode_tokens": args.decode_tokens,
        "labels_tokens": LABELS_TOKENS,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_report(meta, results)
    return {"meta": meta, "levels": [asdict(row) for row in results]}


def parse_levels(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (each a degradation level 0..3)."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be integers: {text!r}") from None
    if not levels or any(level not in range(4) for level in levels):
        raise argparse.ArgumentTypeError(f"levels must be among 0,1,2,3: {text!r}")
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per figure (after 1 warm-up)"
    )
    parser.add_argument(
        "--levels", type=parse_levels, default=[0, 1, 2], help="comma-separated, e.g. 0,1,2"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    parser.add_argument(
        "--decode-tokens",
        type=int,
        default=64,
        help="N of the model decode timing (capped at the level's max_output_tokens)",
    )
    parser.add_argument(
        "--image-size", type=int, default=1024, help="side of the square synthetic meme, px"
    )
    parser.add_argument("--seed", type=int, default=0, help="meme and weight seed")
    # Debug: the same code path on the CPU with the tiny config (numbers meaningless).
    parser.add_argument("--allow-cpu-tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.decode_tokens < 2 or args.image_size < 28:
        parser.error("--repeats must be >= 1, --decode-tokens >= 2, --image-size >= 28")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tiny = False
    if not torch.cuda.is_available():
        if not args.allow_cpu_tiny:
            print(NEEDS_GPU)
            return 0
        tiny = True
    document = asyncio.run(run_benchmark(args, tiny))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
