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
import copy
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from serve_app import __version__
from serve_app.config.models import AppArgs
from serve_app.engines.base import EngineOutput
from serve_app.errors import DeadlineExceeded, SchemaError, ServiceUnavailable
from serve_app.http.body import decode_base64_image
from serve_app.http.errors import error_parts, ray_errors_as_ours
from serve_app.http.jobs import Jobs
from serve_app.http.scenes import Scenes
from serve_app.http.sse import ExplanationTap, sse
from serve_app.http.wire import BatchItem, BatchRequest
from serve_app.library.hot import HotAnswers
from serve_app.library.store import LibraryHit, StoreKey, upload_key
from serve_app.load.degradation import LevelFollower, LevelState
from serve_app.load.gate import AdmissionGate, Ticket
from serve_app.media.imaging import probe_image
from serve_app.observability.metrics import count_cache_lookup, observe_stages
from serve_app.observability.tracing import annotate, stage
from serve_app.pipeline.prepare import CacheHit, Prepared, Refused, limits_from, request_scope
from serve_app.scenes.lookup import Looked
from serve_app.scenes.state import Marks
from serve_app.understanding.context_text import check_context_length
from serve_app.understanding.structuring import StructuredAnswer

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
    meta["usage"] = None  # the stored answer's tokens were spent by another request
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


STATUS_WAIT_S = 5.0
"""How long ``/v1/status`` and ``/readyz`` wait for one deployment's answer."""
ENGINE_ASK_S = 1.0
"""How long they wait for a VLM pool replica itself before reading its last report."""


async def answer_or_error(call: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """A deployment's status answer, or ``fallback`` plus the error (status never fails)."""
    try:
        answer: dict[str, Any] = await asyncio.wait_for(call, STATUS_WAIT_S)
    except Exception as exc:
        return {**fallback, "error": str(exc)[:200] or type(exc).__name__}
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
        self._admission = AdmissionGate()
        # Reports the requests inside the graph to the LoadController (its queue signal).
        self._levels = LevelFollower(self._report_load, idle=self._admission.idle)
        self.body_limit = int(args.limits.max_bytes * _BODY_OVERHEAD_RATIO + _BODY_OVERHEAD_BYTES)
        # Answers for resent bytes kept here: a viral repeat needs no hop to the store.
        self._hot: HotAnswers[Looked] = HotAnswers(
            args.cache.hot_entries if args.cache.enabled else 0,
            ttl_s=args.cache.hot_ttl_s,
            stale_after_s=max(1.0, 4 * args.cache.hot_sync_s),
        )
        self._hot_task: asyncio.Task[None] | None = None
        # Hot answers by match not yet counted in the store's figures.
        self._answered: dict[str, int] = {}
        # Reviews and list changes made through this replica apply to its next request.
        self.scenes = Scenes(args.scenes, store, preprocessor, on_write=self._hot.clear)
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
            # Ray's refusals (a full queue, a lost replica) leave as ours: batch items and
            # job workers see a ServiceUnavailable they can retry.
            with self._inside(), ray_errors_as_ours():
                try:
                    result, marks, seen = await asyncio.wait_for(
                        self._run_graph(data, text, request_id, time.time() + timeout, policy),
                        timeout,
                    )
                except TimeoutError:
                    raise DeadlineExceeded(f"no answer within {timeout:g} s") from None
            judged = self.scenes.judge(result, policy, text, marks, request_id, seen=seen)
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

        def judged(result: dict[str, Any], marks: Marks, seen: bytes | None = None) -> bytes:
            answer = self.scenes.judge(result, policy, text, marks, request_id, seen=seen)
            return sse("result", finish(answer, request_id, started))

        hit, upload = await self._resent(data, text, request_id)
        if hit is not None:
            result = from_cache(hit)
            yield sse("cache", result["meta"]["cache"])
            yield judged(result, hit.marks, hit.unseen)
            return
        async with self._engine_path(deadline) as (_, calls):
            prepared = await self._prepare(calls, data, text, request_id, deadline, upload)
            if isinstance(prepared, CacheHit):
                self._keep_hit(upload, prepared)
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
            answer: StructuredAnswer = await calls.add(
                self._structurer.structure.remote(
                    output, prepared.structure_context(request_id), self._cache_key(prepared)
                )
            )
            self._keep_answer(upload, prepared, answer)
        yield judged(answer.analysis, prepared.marks)

    async def _run_graph(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        deadline: float,
        policy: tuple[str, Any],
    ) -> tuple[dict[str, Any], Marks, bytes | None]:
        """The analysis (policy-free, as stored), the image's marks, and its fingerprint
        when the store has not seen this request (a hot answer: the decision carries it)."""
        hit, upload = await self._resent(data, text, request_id)
        if hit is not None:
            return from_cache(hit), hit.marks, hit.unseen
        async with self._engine_path(deadline) as (ticket, calls):
            prepared = await self._prepare(calls, data, text, request_id, deadline, upload)
            if isinstance(prepared, CacheHit):
                self._keep_hit(upload, prepared)
                return from_cache(prepared), prepared.marks, None
            answered = self._without_engine(prepared, policy, request_id)
            if answered is not None:
                return answered, prepared.marks, None
            # The DeploymentResponse goes straight to the Structurer as a top-level argument.
            output = calls.add(self._vlm.generate.remote(prepared.request))
            answer: StructuredAnswer = await calls.add(
                self._structurer.structure.remote(
                    output, prepared.structure_context(request_id), self._cache_key(prepared)
                )
            )
            ticket.served()
            self._keep_answer(upload, prepared, answer)
        return answer.analysis, prepared.marks, None

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
        level = self._levels.state.level
        self._follow_store()
        hot = self._hot.get(upload, level)
        if hot is not None and hot.hit is not None:
            match = hot.hit.match
            with stage("cache_lookup", {"memeserve.cache.kind": "hot"}):
                annotate(
                    {"memeserve.cache.match": match, "memeserve.cache.distance": hot.hit.distance}
                )
                self._answered[match] = self._answered.get(match, 0) + 1
                count_cache_lookup("hot", match)
                return self._cache_hit(hot, started, unseen=True), upload
        looked: Looked = await self._store.lookup_upload.remote(upload, level, request_id)
        if looked.hit is None:
            return None, upload
        self._keep(upload, looked)
        return self._cache_hit(looked, started, unseen=False), upload

    def _keep(self, upload: str | None, looked: Looked) -> None:
        """Keep the store's answer for these bytes in this replica (a private copy: the
        answers built from it are changed per request)."""
        if upload is not None and looked.hit is not None:
            hit = dataclasses.replace(looked.hit, analysis=copy.deepcopy(looked.hit.analysis))
            self._hot.put(upload, dataclasses.replace(looked, hit=hit), hit.level, looked.epoch)

    def _keep_hit(self, upload: str | None, found: CacheHit) -> None:
        """A fingerprint hit the Preprocessor found: the store now answers these bytes too."""
        hit = LibraryHit(
            found.analysis, found.level, found.match, found.distance, found.fingerprint
        )
        self._keep(upload, Looked(hit, found.marks, found.epoch))

    def _keep_answer(
        self, upload: str | None, prepared: Prepared, answer: StructuredAnswer
    ) -> None:
        """A fresh answer the library kept: resending these bytes finds it as an exact hit."""
        if answer.stored:
            level = int(answer.analysis["meta"]["degradation_level"])
            hit = LibraryHit(answer.analysis, level, "exact", 0, prepared.key.fingerprint)
            self._keep(upload, Looked(hit, prepared.marks, prepared.epoch))

    def _cache_hit(self, looked: Looked, started: float, *, unseen: bool) -> CacheHit:
        """A kept answer as this request's hit (a copy of the analysis when kept here)."""
        hit = looked.hit
        assert hit is not None
        return CacheHit(
            analysis=copy.deepcopy(hit.analysis) if unseen else hit.analysis,
            level=hit.level,
            preprocess_ms=(time.perf_counter() - started) * 1000.0,
            match=hit.match,
            distance=hit.distance,
            marks=looked.marks,
            unseen=hit.fingerprint.to_bytes() if unseen and hit.fingerprint else None,
        )

    def _take_answered(self) -> dict[str, int]:
        """The hot answers since the store last heard of them (it counts them as hits)."""
        answered, self._answered = self._answered, {}
        return answered

    def _follow_store(self) -> None:
        """Start asking the store's epoch for the hot answers, once (on the replica's loop)."""
        if self._hot_task is None and self._hot.max_entries > 0:
            self._hot_task = asyncio.get_running_loop().create_task(self._follow_epoch())

    async def _follow_epoch(self) -> None:
        """Every ``hot_sync_s``: the store's epoch (a new one empties the hot answers)."""
        period = self.args.cache.hot_sync_s
        while True:
            try:
                answered = self._take_answered()
                epoch: str = await asyncio.wait_for(
                    self._store.epoch.remote(answered), STATUS_WAIT_S
                )
                self._hot.heard(epoch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._hot.epoch is not None:
                    logger.warning("hot answers off: the store's epoch: %s", str(exc)[:200])
                self._hot.lost()
            await asyncio.sleep(period)

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """Count a request inside the graph for the controller's queue signal."""
        self._levels.start()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def _engine_path(self, deadline: float) -> AsyncIterator[tuple[Ticket, Calls]]:
        """A place in the engine path (:class:`AdmissionGate`: it may wait for one, or be
        refused), and the downstream calls made while holding it, cancelled together."""
        ticket = await self._admission.enter(self._levels.state, deadline - time.time())
        try:
            with cancelled_with_caller() as calls:
                yield ticket, calls
        finally:
            self._admission.leave(ticket)

    async def _report_load(self) -> LevelState:
        signals = self._admission.report()
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
            state: LevelState = await asyncio.wait_for(
                self._controller.state.remote(), STATUS_WAIT_S
            )
        except Exception:
            state = self._levels.state  # the controller restarting: our last copy
        if state.draining:
            raise ServiceUnavailable("draining before a stop", retry_after_s=5)
        try:
            engine = await self._engine_figures()
        except TimeoutError:
            raise ServiceUnavailable("the engine did not answer in time", retry_after_s=2) from None
        except Exception as exc:
            raise ServiceUnavailable(f"engine not ready: {exc}", retry_after_s=2) from None
        if not engine.get("ready", True):
            raise ServiceUnavailable(f"engine not ready: {engine.get('error')}", retry_after_s=2)
        return {"status": "ready", "engine": engine["kind"], "model": engine["model"]}

    async def _engine_figures(self) -> dict[str, Any]:
        """A VLM pool replica's engine figures: its own answer when it comes within
        ``ENGINE_ASK_S``, else what the pool last reported to the LoadController.

        A replica holding ``max_ongoing_requests`` answers only once one of them ends, so
        under load the report (at most ``period_s`` old, ``reported_s_ago`` says how old)
        is what status and readiness can see. Raises what the replica raised (an unusable
        engine), or ``TimeoutError`` when neither answered.
        """
        asked = self._vlm.info.remote()
        try:
            answer: dict[str, Any] = await asyncio.wait_for(asked, ENGINE_ASK_S)
            return answer
        except TimeoutError:
            asked.cancel()
        reported: dict[str, Any] | None = await asyncio.wait_for(
            self._controller.engine.remote(), STATUS_WAIT_S
        )
        if reported is None:
            raise TimeoutError
        return reported

    async def status(self) -> dict[str, Any]:
        """Operational snapshot of the running graph."""
        self._levels.start()
        engine_call = asyncio.ensure_future(self._engine_figures())
        cache_call = self._store.stats.remote(self._take_answered())
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
            "cache": {
                **await answer_or_error(cache_call, {"enabled": self.args.cache.enabled}),
                "hot": self._hot.figures(),  # this Ingress replica's answers for resent bytes
            },
            "in_flight": self.in_flight,
            "admission": self._admission.snapshot(),
            "decisions": self.scenes.outbox.figures(),  # this replica's, on their way
            "replicas": await asyncio.to_thread(self._replicas),
        }
