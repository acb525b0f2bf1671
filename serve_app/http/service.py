"""The ingress's request flow over the graph's handles: admission, deadlines, cancellation.

:class:`IngressService` owns everything between a parsed request and its answer: the
upload shortcut, the Preprocessor → VLM pool → Structurer calls, the stream's events,
the admission count the LoadController sees, and the status snapshot. It talks to the
other deployments only through handle-shaped objects (``.remote()`` returning an
awaitable with ``cancel()``), so tests drive it with real fakes and no Serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from serve_app import __version__
from serve_app.config.models import AppArgs
from serve_app.engines.base import EngineOutput
from serve_app.errors import DeadlineExceeded, SchemaError, ServiceUnavailable
from serve_app.http.body import decode_base64_image
from serve_app.http.errors import error_parts
from serve_app.http.jobs import Jobs
from serve_app.http.scenes import Scenes
from serve_app.http.sse import ExplanationTap, sse
from serve_app.http.wire import BatchItem, BatchRequest
from serve_app.library.store import StoreKey, upload_key
from serve_app.load.degradation import Admission, LevelFollower, LevelState
from serve_app.media.imaging import probe_image
from serve_app.observability.metrics import observe_stages
from serve_app.observability.tracing import annotate, stage
from serve_app.pipeline.prepare import CacheHit, Prepared, Refused, limits_from, request_scope
from serve_app.scenes.lookup import Looked
from serve_app.scenes.state import Marks
from serve_app.understanding.context_text import check_context_length

logger = logging.getLogger(__name__)

# Multipart boundaries and base64 inflate the body; allow for it over the image limit.
_BODY_OVERHEAD_RATIO = 4 / 3
_BODY_OVERHEAD_BYTES = 64 * 1024
# Uploads larger than this are hashed on a worker thread, not on the event loop.
_HASH_INLINE_BYTES = 256 * 1024


def from_cache(hit: CacheHit) -> dict[str, Any]:
    """A stored analysis as this request's answer: cache meta, fresh timings."""
    result = dict(hit.analysis)
    meta = dict(result["meta"])
    meta["cache"] = {"hit": True, "match": hit.match, "distance": hit.distance}
    meta["timings_ms"] = {
        "preprocess": round(hit.preprocess_ms, 2),
        "engine": 0.0,
        "structure": 0.0,
        "total": 0.0,
    }
    meta["degradation_level"] = hit.level
    result["meta"] = meta
    return result


def finish(result: dict[str, Any], request_id: str, started: float) -> dict[str, Any]:
    """Stamp the request id and total time on an analysis, and log it."""
    result["request_id"] = request_id
    meta = result["meta"]
    meta["timings_ms"]["total"] = round((time.perf_counter() - started) * 1000, 2)
    match = meta["cache"]["match"] or "miss"
    observe_stages(meta["timings_ms"], match)
    image = meta.get("image") or {}
    annotate(
        {
            "memeserve.cache.hit": bool(meta["cache"]["hit"]),
            "memeserve.cache.match": match,
            "memeserve.level": meta["degradation_level"],
            "memeserve.engine": meta.get("engine"),
            "memeserve.model": meta.get("model"),
            "memeserve.image.width": image.get("width"),
            "memeserve.image.height": image.get("height"),
            "memeserve.risk": result["risk"]["level"],
        }
    )
    logger.info(
        "analysed: %s/%s offensiveness=%d risk=%s cache=%s level=%d total=%.1fms",
        result["emotion"],
        result["intent"],
        result["offensiveness"],
        result["risk"]["level"],
        match,
        meta["degradation_level"],
        meta["timings_ms"]["total"],
    )
    return result


class Calls:
    """The downstream calls one request has made, to cancel them together."""

    def __init__(self) -> None:
        self.responses: list[Any] = []

    def add(self, response: Any) -> Any:
        """Remember ``response`` (a unary ``DeploymentResponse``) and return it."""
        self.responses.append(response)
        return response

    def cancel(self) -> None:
        """Cancel every call made so far (a finished one ignores it)."""
        for response in self.responses:
            response.cancel()


@contextlib.contextmanager
def cancelled_with_caller() -> Iterator[Calls]:
    """Cancel the request's downstream calls when it is cancelled (deadline, client gone).

    Awaiting a ``DeploymentResponse`` in a cancelled task does not stop the replica's
    work; ``cancel()`` does (the engine aborts its generation). A stream whose client
    left is closed with ``GeneratorExit`` at a ``yield`` rather than cancelled at an
    ``await``; both stop the calls.
    """
    calls = Calls()
    try:
        yield calls
    except (asyncio.CancelledError, GeneratorExit):
        calls.cancel()
        raise


async def answer_or_error(call: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """A deployment's status answer, or ``fallback`` plus the error (status never fails)."""
    try:
        answer: dict[str, Any] = await asyncio.wait_for(call, 5.0)
    except Exception as exc:
        return {**fallback, "error": str(exc)[:200]}
    return answer


class IngressService:
    """What the HTTP routes ask of the graph; one per Ingress replica."""

    def __init__(
        self,
        args: AppArgs,
        *,
        preprocessor: Any,
        vlm_pool: Any,
        structurer: Any,
        store: Any,
        controller: Any,
        source: str,
        replicas: Callable[[], dict[str, Any]],
    ) -> None:
        self.args = args
        self._preprocessor = preprocessor
        self._vlm = vlm_pool
        self._structurer = structurer
        self._store = store
        self._controller = controller
        self._source = source
        self._replicas = replicas
        self.in_flight = 0
        self._admission = Admission()
        # Reports the requests inside the graph to the LoadController (its queue signal).
        self._levels = LevelFollower(self._report_load)
        self.body_limit = int(args.limits.max_bytes * _BODY_OVERHEAD_RATIO + _BODY_OVERHEAD_BYTES)
        self.scenes = Scenes(args.scenes, store, preprocessor)
        self.jobs = Jobs(args, self)

    async def analyze(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        started: float,
        timeout: float,
        policy_name: str | None = None,
    ) -> dict[str, Any]:
        """The finished analysis of one meme within ``timeout`` seconds (504 after it),
        judged by the scene policy ``policy_name`` (``default`` when None; 422 if unknown)."""
        policy = self.scenes.policy(policy_name)
        with stage("analyze", {"request_id": request_id, "memeserve.bytes": len(data)}):
            with self._inside():
                try:
                    result, marks = await asyncio.wait_for(
                        self._run_graph(data, text, request_id, time.time() + timeout, policy),
                        timeout,
                    )
                except TimeoutError:
                    raise DeadlineExceeded(f"no answer within {timeout:g} s") from None
            judged = self.scenes.judge(result, policy, text, marks, request_id)
            return finish(judged, request_id, started)

    async def analyze_batch(
        self, batch: BatchRequest, request_id: str, timeout: float, policy_name: str | None = None
    ) -> dict[str, Any]:
        """Items run concurrently through the graph; results keep ids and order."""
        limit = self.args.limits.max_batch_items
        if len(batch.items) > limit:
            raise SchemaError(f"a batch holds at most {limit} items, got {len(batch.items)}")
        ids = [item.id for item in batch.items]
        if len(set(ids)) != len(ids):
            raise SchemaError("item ids must be unique within a batch")
        policy_name = batch.policy or policy_name
        for item in batch.items:  # an unknown policy refuses the whole batch, before any work
            self.scenes.policy(item.policy or policy_name)
        results = await asyncio.gather(
            *(
                self._batch_item(item, f"{request_id}:{index}", timeout, policy_name)
                for index, item in enumerate(batch.items)
            )
        )
        failed = sum(1 for item in results if item["status"] != 200)
        return {
            "request_id": request_id,
            "succeeded": len(results) - failed,
            "failed": failed,
            "items": results,
        }

    async def _batch_item(
        self, item: BatchItem, item_request_id: str, timeout: float, policy_name: str | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            check_context_length(item.text, self.args.limits.max_text_chars)
            data = decode_base64_image(item.image_base64)
            result = await self.analyze(
                data, item.text, item_request_id, started, timeout, item.policy or policy_name
            )
        except Exception as exc:
            status, body, _ = error_parts(exc, item_request_id)
            return {"id": item.id, "status": status, "error": body["error"]}
        return {"id": item.id, "status": 200, "result": result}

    async def precheck(self, data: bytes, text: str | None, policy_name: str | None = None) -> None:
        """Refuse now what the request shows without the graph: text length, bytes, header,
        an unknown policy.

        The stream route calls it before the stream opens, so these refusals are plain
        HTTP errors (413/415/422/400), never an ``error`` event after ``accepted``.
        """
        self.scenes.policy(policy_name)
        check_context_length(text, self.args.limits.max_text_chars)
        limits = limits_from(self.args)
        if len(data) > _HASH_INLINE_BYTES:
            await asyncio.to_thread(probe_image, data, limits)
        else:
            probe_image(data, limits)

    async def events(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        started: float,
        deadline: float,
        policy_name: str | None = None,
    ) -> AsyncIterator[bytes]:
        """The stream: ``accepted``, ``cache``, ``delta``…, then ``result`` or ``error``."""
        yield sse("accepted", {"request_id": request_id})
        # The generator starts when the response does: what is left of the wall deadline.
        timeout = max(0.0, deadline - time.time())
        try:
            span = stage("analyze", {"request_id": request_id, "memeserve.bytes": len(data)})
            with span, self._inside():
                async with asyncio.timeout(timeout):
                    policy = self.scenes.policy(policy_name)
                    events = self._stream_graph(data, text, request_id, started, timeout, policy)
                    async for event in events:
                        yield event
        except TimeoutError:
            error = DeadlineExceeded(f"no answer within {timeout:g} s")
            status, body, _ = error_parts(error, request_id)
            yield sse("error", {"status": status, **body})
        except Exception as exc:
            status, body, _ = error_parts(exc, request_id)
            yield sse("error", {"status": status, **body})

    async def _stream_graph(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        started: float,
        timeout: float,
        policy: tuple[str, Any],
    ) -> AsyncIterator[bytes]:
        deadline = time.time() + timeout

        def judged(result: dict[str, Any], marks: Marks) -> bytes:
            answer = self.scenes.judge(result, policy, text, marks, request_id)
            return sse("result", finish(answer, request_id, started))

        hit, upload = await self._resent(data, text, request_id)
        if hit is not None:
            result = from_cache(hit)
            yield sse("cache", result["meta"]["cache"])
            yield judged(result, hit.marks)
            return
        with self._admitted(), cancelled_with_caller() as calls:
            prepared = await self._prepare(calls, data, text, request_id, deadline, upload)
            if isinstance(prepared, CacheHit):
                result = from_cache(prepared)
                yield sse("cache", result["meta"]["cache"])
                yield judged(result, prepared.marks)
                return
            yield sse("cache", {"hit": False, "match": None, "distance": None})
            answered = self._without_engine(prepared, policy, request_id)
            if answered is not None:
                yield judged(answered, prepared.marks)
                return
            pieces: list[str] = []
            engine_started = time.perf_counter()
            deltas: Any = self._vlm.options(stream=True).stream.remote(prepared.request)
            try:
                # The pool's first item says how it serves the request (level, engine).
                served: dict[str, Any] = await deltas.__anext__()
                tap = ExplanationTap(served["explanation_max_chars"])
                async for piece in deltas:
                    pieces.append(piece)
                    for out in tap.feed(piece):
                        yield sse("delta", {"text": out})
            finally:
                # The client left or the deadline passed: stop the engine's work too.
                deltas.cancel()
            for out in tap.flush():
                yield sse("delta", {"text": out})
            output = EngineOutput(
                text="".join(pieces),
                engine=served["engine"],
                model=served["model"],
                elapsed_ms=(time.perf_counter() - engine_started) * 1000.0,
                level=served["level"],
                explanation_max_chars=served["explanation_max_chars"],
                analysed_size=served["analysed_size"],
            )
            result = await calls.add(
                self._structurer.structure.remote(
                    output, prepared.structure_context(request_id), self._cache_key(prepared)
                )
            )
        yield judged(result, prepared.marks)

    async def _run_graph(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        deadline: float,
        policy: tuple[str, Any],
    ) -> tuple[dict[str, Any], Marks]:
        """The analysis (policy-free, as stored) and the image's marks."""
        hit, upload = await self._resent(data, text, request_id)
        if hit is not None:
            return from_cache(hit), hit.marks
        with self._admitted(), cancelled_with_caller() as calls:
            prepared = await self._prepare(calls, data, text, request_id, deadline, upload)
            if isinstance(prepared, CacheHit):
                return from_cache(prepared), prepared.marks
            answered = self._without_engine(prepared, policy, request_id)
            if answered is not None:
                return answered, prepared.marks
            # The DeploymentResponse goes straight to the Structurer as a top-level argument.
            output = calls.add(self._vlm.generate.remote(prepared.request))
            analysis: dict[str, Any] = await calls.add(
                self._structurer.structure.remote(
                    output, prepared.structure_context(request_id), self._cache_key(prepared)
                )
            )
        return analysis, prepared.marks

    def _without_engine(
        self, prepared: Prepared, policy: tuple[str, Any], request_id: str
    ) -> dict[str, Any] | None:
        """The answer for a reviewed or block-listed image, without the engine; or None."""
        return self.scenes.without_engine(
            policy,
            prepared.marks,
            request_id=request_id,
            image=prepared.image.model_dump(mode="json"),
            level=prepared.request.level,
            preprocess_ms=prepared.preprocess_ms,
        )

    async def _prepare(
        self,
        calls: Calls,
        data: bytes,
        text: str | None,
        request_id: str,
        deadline: float,
        upload: str | None,
    ) -> Prepared | CacheHit:
        """The Preprocessor's answer; a refusal it returns is raised here, as the response."""
        prepared = await calls.add(
            self._preprocessor.prepare.remote(data, text, request_id, deadline, upload)
        )
        if isinstance(prepared, Refused):
            raise prepared.error
        return prepared

    async def _resent(
        self, data: bytes, text: str | None, request_id: str
    ) -> tuple[CacheHit | None, str | None]:
        """The stored answer for bytes sent before (no decoding), and the upload's key."""
        if not self.args.cache.enabled:
            return None, None
        started = time.perf_counter()
        scope = request_scope(text, self.args)
        if len(data) > _HASH_INLINE_BYTES:  # keep the event loop free for big uploads
            upload = await asyncio.to_thread(upload_key, data, scope)
        else:
            upload = upload_key(data, scope)
        looked: Looked = await self._store.lookup_upload.remote(
            upload, self._levels.state.level, request_id
        )
        hit = looked.hit
        if hit is None:
            return None, upload
        cached = CacheHit(
            analysis=hit.analysis,
            level=hit.level,
            preprocess_ms=(time.perf_counter() - started) * 1000.0,
            match=hit.match,
            distance=hit.distance,
            marks=looked.marks,
        )
        return cached, upload

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """Count a request inside the graph for the controller's queue signal."""
        self._levels.start()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """A place in the engine path; at a shedding level, refused when none is free."""
        self._admission.enter(self._levels.state)
        try:
            yield
        finally:
            self._admission.leave()

    async def _report_load(self) -> LevelState:
        signals = {
            "graph_in_flight": float(self._admission.inside),
            "refused": float(self._admission.take_refused()),
        }
        state: LevelState = await self._controller.report.remote(self._source, "ingress", signals)
        return state

    def _cache_key(self, prepared: Prepared) -> StoreKey | None:
        return prepared.key if self.args.cache.enabled else None

    async def ready(self) -> dict[str, Any]:
        """Ready when a VLM pool replica answers with a started engine (else 503).

        Not ready from the moment a drain starts: the controller is asked, not this
        replica's copy of the level, so a load balancer stops sending at once.
        """
        self._levels.start()
        try:
            state: LevelState = await asyncio.wait_for(self._controller.state.remote(), 5.0)
        except Exception:
            state = self._levels.state  # the controller restarting: our last copy
        if state.draining:
            raise ServiceUnavailable("draining before a stop", retry_after_s=5)
        try:
            engine = await asyncio.wait_for(self._vlm.info.remote(), 5.0)
        except TimeoutError:
            raise ServiceUnavailable("the engine did not answer in time", retry_after_s=2) from None
        except Exception as exc:
            raise ServiceUnavailable(f"engine not ready: {exc}", retry_after_s=2) from None
        return {"status": "ready", "engine": engine["kind"], "model": engine["model"]}

    async def status(self) -> dict[str, Any]:
        """Operational snapshot of the running graph."""
        self._levels.start()
        engine_call = self._vlm.info.remote()
        cache_call = self._store.stats.remote()
        degradation_call = self._controller.status.remote()
        return {
            "service": "memeserve",
            "version": __version__,
            "engine": await answer_or_error(
                engine_call, {"kind": self.args.engine.kind, "ready": False}
            ),
            "model": self.args.engine.model_name,
            "prompt_version": self.args.prompt_version,
            "degradation": await answer_or_error(degradation_call, {"level": None}),
            "cache": await answer_or_error(cache_call, {"enabled": self.args.cache.enabled}),
            "in_flight": self.in_flight,
            "replicas": await asyncio.to_thread(self._replicas),
        }
