"""The ``transformers`` engine: any GLM-4.xV checkpoint directory, on a GPU or the CPU.

The checkpoint is loaded through ``AutoProcessor`` and ``AutoModelForImageTextToText``
exactly as ``zai-org/GLM-4.6V-Flash`` is, from a local directory only (never a hub).
Images go through the PIL image-processor path: where torchvision is missing,
``AutoProcessor`` cannot build GLM's (video-only, torchvision-only) video processor,
so :func:`load_processor` assembles the same processor class from the checkpoint's
tokenizer and image processor with no video processor; the chat template, the
image-token expansion and ``mm_token_type_ids`` still come from the real processor.

Generation runs on one worker thread per replica (a model is not re-entrant), off
the event loop. Requests arrive batched (the VLM pool's ``@serve.batch``); each one
keeps its own image budget, output-token budget, deadline and cancellation through
a per-row stopping criterion, so one slow or abandoned request neither stretches
nor aborts its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from serve_app.config.models import EngineArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats
from serve_app.errors import DeadlineExceeded, EngineError, MemeServeError, ServiceUnavailable
from serve_app.understanding.prompts import build_messages, processor_size

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Loaded = tuple[Any, Any]
"""(processor, model) as :func:`load_checkpoint` returns them."""


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, Any]:
    """The torch device and dtype for the ``device``/``dtype`` settings.

    ``auto`` picks CUDA when present; bfloat16 where the GPU supports it, float16
    on GPUs that do not (T4), float32 on the CPU (CPU half precision is slow).
    """
    import torch

    chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if chosen == "cuda" and not torch.cuda.is_available():
        raise ServiceUnavailable("engine.transformers.device is 'cuda' but CUDA is not available")
    if dtype != "auto":
        return chosen, getattr(torch, dtype)
    if chosen == "cpu":
        return chosen, torch.float32
    return chosen, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_processor(model_dir: Path) -> Any:
    """``AutoProcessor`` for ``model_dir``; without torchvision, the same class minus video."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(str(model_dir))
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    image_processor = AutoImageProcessor.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    processor_cls = _image_only(_processor_class(image_processor))
    logger.info("torchvision missing: %s without its video processor", processor_cls.__name__)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=tokenizer.chat_template,
    )


def _processor_class(image_processor: Any) -> type:
    import transformers

    name = getattr(image_processor, "processor_class", None) or "Glm4vProcessor"
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type):
        raise EngineError(f"checkpoint names an unknown processor class {name!r}")
    return cls


def _image_only(processor_cls: type) -> type:
    """A subclass of ``processor_cls`` that accepts ``video_processor=None``.

    Only the constructor's type check is relaxed; every method that turns images
    and text into model inputs is the parent's own.
    """

    def check_argument_for_proper_class(self: Any, name: str, argument: Any) -> Any:
        if name == "video_processor" and argument is None:
            return None
        parent_check: Callable[..., Any] = processor_cls.check_argument_for_proper_class  # type: ignore[attr-defined]
        return parent_check(self, name, argument)

    return type(
        f"ImageOnly{processor_cls.__name__}",
        (processor_cls,),
        {"check_argument_for_proper_class": check_argument_for_proper_class},
    )


def load_checkpoint(model_dir: Path, device: str, dtype: Any) -> Loaded:
    """(processor, model in eval mode on ``device``) from a local checkpoint directory."""
    from transformers import AutoModelForImageTextToText

    if not (Path(model_dir) / "config.json").is_file():
        raise ServiceUnavailable(f"no checkpoint at {model_dir} (config.json missing)")
    processor = load_processor(model_dir)
    model: Any = AutoModelForImageTextToText.from_pretrained(
        str(model_dir), dtype=dtype, local_files_only=True
    )
    return processor, model.to(device).eval()


@dataclass
class _Job:
    """One request's generation state, shared with the worker thread."""

    request: EngineRequest
    cancelled: threading.Event = field(default_factory=threading.Event)
    stopped_early: bool = False
    """Counted in ``aborted`` already (a caller that left and a deadline count once)."""


class _RowStop:
    """Per-row stopping criterion: output budget reached, deadline passed, or cancelled."""

    def __init__(self, jobs: Sequence[_Job], prompt_length: int) -> None:
        self._jobs = jobs
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        produced = input_ids.shape[1] - self._prompt_length
        now = time.time()
        done = [
            job.cancelled.is_set()
            or produced >= job.request.max_output_tokens
            or (job.request.deadline is not None and now > job.request.deadline)
            for job in self._jobs
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _DeltaStreamer:
    """A transformers streamer that hands decoded text deltas to an asyncio queue."""

    def __init__(
        self, tokenizer: Any, prompt_length: int, emit: Callable[[str | None], None]
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = prompt_length
        self._ids: list[int] = []
        self._sent = ""
        self._emit = emit

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist()
        if self._skip:  # the first call carries the prompt
            taken = min(self._skip, len(ids))
            ids = ids[taken:]
            self._skip -= taken
        if not ids:
            return
        self._ids.extend(ids)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        # Hold back a trailing partial UTF-8 sequence until its last byte arrives.
        if text.endswith("\ufffd"):
            return
        if text.startswith(self._sent) and len(text) > len(self._sent):
            self._emit(text[len(self._sent) :])
            self._sent = text

    def end(self) -> None:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.startswith(self._sent) and len(text) > len(self._sent):
            self._emit(text[len(self._sent) :])
        self._emit(None)


class TransformersEngine(Engine):
    """Hugging Face transformers engine; see the module docstring.

    ``loader`` replaces checkpoint loading (it returns ``(processor, model)``); the
    engine benchmark uses it to serve a model built in GPU memory from a config.
    """

    name = "transformers"
    supports_batching = True

    def __init__(
        self,
        args: EngineArgs,
        loader: Callable[[str, Any], Loaded] | None = None,
    ) -> None:
        self._args = args
        self._loader = loader
        self._processor: Any = None
        self._model: Any = None
        self._device = "cpu"
        self._worker: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._waiting = 0
        self._counts = threading.Lock()
        self._aborted = 0
        self._failed: str | None = None

    @property
    def model(self) -> str:
        return self._args.model_name

    @property
    def device(self) -> str:
        """The torch device the model runs on (after :meth:`start`)."""
        return self._device

    async def start(self) -> None:
        if self._model is not None:
            return
        settings = self._args.transformers
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-gen")
        try:
            device, dtype = resolve_device_dtype(settings.device, settings.dtype)
            if self._loader is not None:
                loaded = await self._run(self._loader, device, dtype)
            else:
                assert self._args.model_path is not None  # EngineArgs guarantees it
                loaded = await self._run(load_checkpoint, self._args.model_path, device, dtype)
        except MemeServeError:
            raise
        except Exception as exc:
            self._failed = f"{type(exc).__name__}: {exc}"[:300]
            logger.exception("transformers engine failed to load")
            raise EngineError(f"transformers engine failed to load: {self._failed}") from exc
        self._processor, self._model = loaded
        self._processor.tokenizer.padding_side = "left"
        self._device = device
        logger.info("transformers engine ready on %s (%s): %s", device, dtype, self.model)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._worker is not None
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def check_health(self) -> None:
        if self._failed is not None:
            raise ServiceUnavailable(f"transformers engine failed: {self._failed}")
        if self._model is None:
            raise ServiceUnavailable("transformers engine is not started", retry_after_s=2.0)

    async def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None
        self._model = None
        self._processor = None

    def stats(self) -> EngineStats:
        return EngineStats(in_flight=self._in_flight, waiting=self._waiting, aborted=self._aborted)

    def _stopped_early(self, jobs: Sequence[_Job]) -> None:
        """Count each of ``jobs`` once in ``aborted`` (caller gone or deadline passed)."""
        with self._counts:
            for job in jobs:
                if not job.stopped_early:
                    job.stopped_early = True
                    self._aborted += 1

    async def generate(self, request: EngineRequest) -> EngineOutput:
        result = (await self.generate_batch([request]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        self.check_health()
        live: list[_Job] = []
        results: list[EngineOutput | BaseException | None] = []
        for request in requests:
            try:
                request.check_deadline()
            except DeadlineExceeded as exc:
                results.append(exc)
                continue
            results.append(None)
            live.append(_Job(request))
        if live:
            outputs = await self._submit(live, self._generate_sync, live)
            fill = iter(outputs)
            results = [next(fill) if slot is None else slot for slot in results]
        return [r for r in results if r is not None]

    async def _submit(self, jobs: Sequence[_Job], fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the worker; cancelling the caller stops its rows at the next token.

        Work whose caller is gone before the worker reaches it is skipped.
        """
        count = len(jobs)
        phase = ["queued"]

        def run() -> Any:
            with self._counts:
                if phase[0] == "abandoned":
                    return None
                phase[0] = "running"
                self._waiting -= count
                self._in_flight += count
            try:
                return fn(*args)
            finally:
                with self._counts:
                    self._in_flight -= count

        with self._counts:
            self._waiting += count
        try:
            return await self._run(run)
        except asyncio.CancelledError:
            for job in jobs:
                job.cancelled.set()
            self._stopped_early(jobs)
            raise
        finally:
            with self._counts:
                if phase[0] == "queued":
                    phase[0] = "abandoned"
                    self._waiting -= count

    def _inputs(self, requests: Sequence[EngineRequest]) -> Any:
        processor = self._processor
        prompts = [
            processor.apply_chat_template(
                build_messages(request.context),
                add_generation_prompt=True,
                tokenize=False,
                enable_thinking=False,
            )
            for request in requests
        ]
        images = [Image.fromarray(request.image) for request in requests]
        # The Preprocessor already resized each image to its level's budget; the
        # processor's bound is the largest budget in the batch, so no image grows.
        budget = max(request.max_visual_tokens for request in requests)
        inputs = processor(
            text=prompts,
            images=images,
            return_tensors="pt",
            padding=True,
            images_kwargs={"size": processor_size(budget)},
        )
        return inputs.to(self._device)

    def _generate_sync(self, jobs: Sequence[_Job]) -> list[EngineOutput | BaseException]:
        import torch
        from transformers import StoppingCriteriaList

        started = time.perf_counter()
        requests = [job.request for job in jobs]
        try:
            inputs = self._inputs(requests)
            prompt_length = int(inputs["input_ids"].shape[1])
            with torch.inference_mode():
                generated = self._model.generate(
                    **inputs,
                    max_new_tokens=max(r.max_output_tokens for r in requests),
                    do_sample=False,
                    stopping_criteria=StoppingCriteriaList([_RowStop(jobs, prompt_length)]),
                )
        except Exception as exc:
            logger.exception("transformers generate failed for %d requests", len(jobs))
            error = EngineError(f"transformers engine failed: {type(exc).__name__}")
            return [error] * len(jobs)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        tokenizer = self._processor.tokenizer
        attention = inputs["attention_mask"]
        outputs: list[EngineOutput | BaseException] = []
        for row, job in enumerate(jobs):
            request = job.request
            new_ids = self._answer_ids(generated[row, prompt_length:], request.max_output_tokens)
            if request.deadline is not None and time.time() > request.deadline:
                self._stopped_early([job])
                outputs.append(DeadlineExceeded("the request deadline passed during generation"))
                continue
            outputs.append(
                EngineOutput(
                    text=tokenizer.decode(new_ids, skip_special_tokens=True),
                    engine=self.name,
                    model=self.model,
                    elapsed_ms=elapsed_ms,
                    prompt_tokens=int(attention[row].sum()),
                    output_tokens=len(new_ids),
                )
            )
        return outputs

    def _answer_ids(self, ids: torch.Tensor, budget: int) -> list[int]:
        """This row's tokens: up to its own budget, without the padding after its stop."""
        pad = self._model.generation_config.pad_token_id
        stops = self._model.generation_config.eos_token_id
        stop_ids = set(stops if isinstance(stops, list) else [stops])
        kept: list[int] = []
        for token in ids.tolist()[:budget]:
            if token in stop_ids or token == pad:
                break
            kept.append(token)
        return kept

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        """Text deltas of one request as the model produces them (not batched)."""
        self.check_health()
        request.check_deadline()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        job = _Job(request)

        def emit(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            import torch
            from transformers import StoppingCriteriaList

            try:
                inputs = self._inputs([request])
                prompt_length = int(inputs["input_ids"].shape[1])
                streamer = _DeltaStreamer(self._processor.tokenizer, prompt_length, emit)
                with torch.inference_mode():
                    self._model.generate(
                        **inputs,
                        max_new_tokens=request.max_output_tokens,
                        do_sample=False,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_RowStop([job], prompt_length)]),
                    )
            except Exception as exc:
                logger.exception("transformers stream failed for %s", request.request_id)
                emit(EngineError(f"transformers engine failed: {type(exc).__name__}"))
                emit(None)

        task = asyncio.ensure_future(self._submit([job], work))
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            await task
            finished = True
            try:
                request.check_deadline()
            except DeadlineExceeded:
                self._stopped_early([job])
                raise
        finally:
            if not finished:
                # The consumer left mid-stream: stop generating at the next token.
                job.cancelled.set()
                if task.done():
                    self._stopped_early([job])
                else:
                    task.cancel()
