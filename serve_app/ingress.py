"""HTTP ingress: FastAPI routes, request ids, limits, and orchestration of the graph.

The ingress owns everything HTTP-shaped (parsing uploads, request ids, status codes)
and nothing model-shaped: it asks the Preprocessor for a prepared request (or a
stored answer), the VLM pool for model text, and the Structurer for the analysis.
"""

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import __version__
from serve_app.config import AppArgs
from serve_app.degradation import Admission, LevelFollower, LevelState
from serve_app.engines.base import EngineOutput
from serve_app.errors import (
    BadInput,
    DeadlineExceeded,
    PayloadTooLarge,
    SchemaError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from serve_app.fingerprint_library import StoreKey, upload_key
from serve_app.http_errors import error_parts, error_response, install_error_handlers
from serve_app.openapi_docs import (
    ANALYZE_BODY,
    BATCH_BODY,
    ERROR_RESPONSES,
    PROXY_TIMEOUT_RESPONSE,
    REQUEST_TIMEOUT_HEADER,
    STREAM_RESPONSES,
    EventStreamResponse,
)
from serve_app.preprocessing import CacheHit, Prepared, request_scope
from serve_app.replica_context import replica_tag
from serve_app.request_context import (
    choose_request_id,
    configure_logging,
    request_timeout_s,
    set_request_id,
)
from serve_app.schema import (
    Analysis,
    AnalyzeJSONRequest,
    BatchItem,
    BatchRequest,
    BatchResponse,
)
from serve_app.security_middleware import SecurityMiddleware, configure_security
from serve_app.service_metrics import count_request, observe_stages
from serve_app.streaming import ExplanationTap, sse
from serve_app.tracing import annotate, current_ids, stage

logger = logging.getLogger(__name__)


# Multipart boundaries and base64 inflate the body; allow for it over the image limit.
_BODY_OVERHEAD_RATIO = 4 / 3
_BODY_OVERHEAD_BYTES = 64 * 1024
# Uploads larger than this are hashed on a worker thread, not on the event loop.
_HASH_INLINE_BYTES = 256 * 1024


class RequestIdMiddleware:
    """Pure ASGI middleware: request id, the request's span and count, no tracebacks out.

    Serve's proxy already puts ``x-request-id`` on the request (the caller's, or a
    fresh one) and echoes it on the response; we adopt it when it is sane and make a
    new one otherwise, so the id in the body is always safe to log. When tracing is on,
    the response names its trace in ``x-trace-id``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-request-id"),
            None,
        )
        request_id = choose_request_id(incoming)
        set_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        attributes = {"http.request.method": scope.get("method", ""), "http.route": path}
        with stage("http", {**attributes, "request_id": request_id}) as span:
            trace_id, _ = current_ids()
            started = False

            async def tracking_send(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    count_request(path, status)
                    if trace_id is not None:
                        headers = list(message.get("headers", []))
                        headers.append((b"x-trace-id", trace_id.encode("ascii")))
                        message = {**message, "headers": headers}
                await send(message)

            try:
                await self.app(scope, receive, tracking_send)
            except Exception as exc:
                if started:
                    logger.exception("error after the response started")
                    return
                response = error_response(exc, request_id)
                await response(scope, receive, tracking_send)


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise BadInput("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def decode_base64_image(value: str) -> bytes:
    """Base64 (optionally a ``data:`` URL) → bytes; 400 when it is not base64."""
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image_base64 is not valid base64") from None


async def parse_analyze_input(request: Request, body_limit: int) -> tuple[bytes, str | None]:
    """(image bytes, context text) from a multipart or JSON analyze request."""
    content_type = request.headers.get("content-type", "").lower()
    body = await read_body_limited(request, body_limit)
    if content_type.startswith("multipart/form-data"):
        replayed = Request(request.scope, _replay(body))
        try:
            form = await replayed.form(max_files=1, max_fields=8, max_part_size=body_limit)
        except Exception as exc:
            raise BadInput(f"malformed multipart body: {exc}") from None
        image = form.get("image")
        text = form.get("text")
        if image is None:
            raise SchemaError("multipart field 'image' (a file) is required")
        if not isinstance(image, UploadFile):
            raise SchemaError("multipart field 'image' must be a file upload")
        if text is not None and not isinstance(text, str):
            raise SchemaError("multipart field 'text' must be a plain text field")
        data = await image.read()
        await form.close()
        return data, text
    if content_type.startswith("application/json") or content_type.endswith("+json"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadInput("request body is not valid JSON") from None
        try:
            parsed = AnalyzeJSONRequest.model_validate(payload)
        except ValidationError as exc:
            raise SchemaError(_pydantic_message(exc)) from None
        return decode_base64_image(parsed.image_base64), parsed.text
    raise UnsupportedMediaType(
        "send multipart/form-data (fields image, text) or application/json (image_base64, text)"
    )


async def parse_batch_input(request: Request, body_limit: int) -> BatchRequest:
    """The batch body, read within ``body_limit`` bytes and validated (415/400/413/422)."""
    content_type = request.headers.get("content-type", "").lower()
    if not (content_type.startswith("application/json") or content_type.endswith("+json")):
        raise UnsupportedMediaType('send application/json: {"items": [{"id", "image_base64"}]}')
    body = await read_body_limited(request, body_limit)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("request body is not valid JSON") from None
    try:
        return BatchRequest.model_validate(payload)
    except ValidationError as exc:
        raise SchemaError(_pydantic_message(exc)) from None


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def _from_cache(hit: CacheHit) -> dict[str, Any]:
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


def _finish(result: dict[str, Any], request_id: str, started: float) -> dict[str, Any]:
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
        meta["cache"]["match"] or "miss",
        meta["degradation_level"],
        meta["timings_ms"]["total"],
    )
    return result


class _Calls:
    """The downstream calls one request has made, to cancel them together."""

    def __init__(self) -> None:
        self.responses: list[DeploymentResponse[Any]] = []

    def add(self, response: Any) -> Any:
        """Remember ``response`` (a unary ``DeploymentResponse``) and return it."""
        self.responses.append(response)
        return response


@contextlib.contextmanager
def _cancelled_with_caller() -> Iterator[_Calls]:
    """Cancel the request's downstream calls when it is cancelled (deadline, client gone).

    Awaiting a ``DeploymentResponse`` in a cancelled task does not stop the replica's
    work; ``cancel()`` does (the engine aborts its generation).
    """
    calls = _Calls()
    try:
        yield calls
    except asyncio.CancelledError:
        for response in calls.responses:
            response.cancel()
        raise


@functools.cache
def _page_html() -> str:
    return (resources.files("serve_app") / "static" / "index.html").read_text("utf-8")


async def _answer_or_error(call: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """A deployment's status answer, or ``fallback`` plus the error (status never fails)."""
    try:
        answer: dict[str, Any] = await asyncio.wait_for(call, 5.0)
    except Exception as exc:
        return {**fallback, "error": str(exc)[:200]}
    return answer


def _replica_summary() -> dict[str, Any]:
    """Per-deployment status and replica counts from Serve's controller."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name]
    except Exception as exc:  # the controller may be briefly unreachable
        return {"error": str(exc)[:200]}
    return {
        name: {
            "status": str(getattr(d.status, "value", d.status)),
            "replicas": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
        }
        for name, d in status.deployments.items()
    }


app = FastAPI(
    title="memeserve",
    version=__version__,
    description="Reads internet memes (image + optional context) and returns a structured "
    "judgement: emotion, intent, sarcasm, offensiveness, confidence, explanation, risk.",
)
# add_middleware puts the latest outermost: SecurityMiddleware runs inside RequestIdMiddleware.
app.add_middleware(SecurityMiddleware)
app.add_middleware(RequestIdMiddleware)
install_error_handlers(app)


@serve.deployment(
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(app)
class Ingress:
    """HTTP front of the graph."""

    def __init__(
        self,
        args: dict[str, Any],
        preprocessor: DeploymentHandle,
        vlm_pool: DeploymentHandle,
        structurer: DeploymentHandle,
        store: DeploymentHandle,
        controller: DeploymentHandle,
    ) -> None:
        configure_logging()
        self._args = AppArgs.model_validate(args)
        configure_security(self._args.security)
        self._preprocessor = preprocessor
        self._vlm = vlm_pool
        self._structurer = structurer
        self._store = store
        self._controller = controller
        self._in_flight = 0
        self._admission = Admission()
        self._source = replica_tag()
        # Reports the requests inside the graph to the LoadController (its queue signal).
        self._levels = LevelFollower(self._report_load)
        self._body_limit = int(
            self._args.limits.max_bytes * _BODY_OVERHEAD_RATIO + _BODY_OVERHEAD_BYTES
        )

    @app.post(
        "/v1/memes/analyze",
        response_model=Analysis,
        responses={**ERROR_RESPONSES, **PROXY_TIMEOUT_RESPONSE},
        openapi_extra=ANALYZE_BODY,
        summary="Analyse one meme",
    )
    async def analyze(self, request: Request) -> JSONResponse:
        """Multipart (``image`` file, optional ``text``) or JSON (``image_base64``, ``text``)."""
        started = time.perf_counter()
        request_id = request.state.request_id
        timeout = self._timeout(request)
        data, text = await parse_analyze_input(request, self._body_limit)
        return JSONResponse(await self._analyze_once(data, text, request_id, started, timeout))

    def _timeout(self, request: Request) -> float:
        """This request's deadline in seconds: the configured one, or the caller's shorter one."""
        return request_timeout_s(
            request.headers.get(REQUEST_TIMEOUT_HEADER), self._args.request_timeout_s
        )

    async def _analyze_once(
        self, data: bytes, text: str | None, request_id: str, started: float, timeout: float
    ) -> dict[str, Any]:
        """The finished analysis of one meme within ``timeout`` seconds (504 after it)."""
        with stage("analyze", {"request_id": request_id, "memeserve.bytes": len(data)}):
            with self._inside():
                try:
                    result = await asyncio.wait_for(
                        self._run_graph(data, text, request_id, time.time() + timeout), timeout
                    )
                except TimeoutError:
                    raise DeadlineExceeded(f"no answer within {timeout:g} s") from None
            return _finish(result, request_id, started)

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """Count a request inside the graph for the controller's queue signal."""
        self._levels.start()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def _report_load(self) -> LevelState:
        signals = {
            "graph_in_flight": float(self._admission.inside),
            "refused": float(self._admission.take_refused()),
        }
        state: LevelState = await self._controller.report.remote(self._source, "ingress", signals)
        return state

    @app.post(
        "/v1/memes/analyze/batch",
        response_model=BatchResponse,
        responses={**ERROR_RESPONSES, **PROXY_TIMEOUT_RESPONSE},
        openapi_extra=BATCH_BODY,
        summary="Analyse several memes; each item succeeds or fails on its own",
    )
    async def analyze_batch(self, request: Request) -> JSONResponse:
        """Items run concurrently through the graph; results keep ids and order."""
        request_id = request.state.request_id
        timeout = self._timeout(request)
        limit = self._args.limits.max_batch_items
        batch = await parse_batch_input(request, self._body_limit * limit)
        if len(batch.items) > limit:
            raise SchemaError(f"a batch holds at most {limit} items, got {len(batch.items)}")
        ids = [item.id for item in batch.items]
        if len(set(ids)) != len(ids):
            raise SchemaError("item ids must be unique within a batch")
        results = await asyncio.gather(
            *(
                self._batch_item(item, f"{request_id}:{index}", timeout)
                for index, item in enumerate(batch.items)
            )
        )
        failed = sum(1 for item in results if item["status"] != 200)
        return JSONResponse(
            {
                "request_id": request_id,
                "succeeded": len(results) - failed,
                "failed": failed,
                "items": results,
            }
        )

    async def _batch_item(
        self, item: BatchItem, item_request_id: str, timeout: float
    ) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if item.text is not None and len(item.text) > self._args.limits.max_text_chars:
                raise SchemaError(
                    f"text is {len(item.text)} characters; "
                    f"the limit is {self._args.limits.max_text_chars}"
                )
            data = decode_base64_image(item.image_base64)
            result = await self._analyze_once(data, item.text, item_request_id, started, timeout)
        except Exception as exc:
            status, body, _ = error_parts(exc, item_request_id)
            return {"id": item.id, "status": status, "error": body["error"]}
        return {"id": item.id, "status": 200, "result": result}

    @app.post(
        "/v1/memes/analyze/stream",
        response_class=EventStreamResponse,
        responses=STREAM_RESPONSES,
        openapi_extra=ANALYZE_BODY,
        summary="Analyse one meme, streaming the explanation as the model writes it",
    )
    async def analyze_stream(self, request: Request) -> EventStreamResponse:
        """Same input as analyze. Errors before acceptance are plain JSON errors."""
        started = time.perf_counter()
        request_id = request.state.request_id
        timeout = self._timeout(request)
        data, text = await parse_analyze_input(request, self._body_limit)
        return EventStreamResponse(
            self._events(data, text, request_id, started, timeout),
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _events(
        self, data: bytes, text: str | None, request_id: str, started: float, timeout: float
    ) -> AsyncIterator[bytes]:
        yield sse("accepted", {"request_id": request_id})
        try:
            span = stage("analyze", {"request_id": request_id, "memeserve.bytes": len(data)})
            with span, self._inside():
                async with asyncio.timeout(timeout):
                    async for event in self._stream_graph(data, text, request_id, started, timeout):
                        yield event
        except TimeoutError:
            error = DeadlineExceeded(f"no answer within {timeout:g} s")
            status, body, _ = error_parts(error, request_id)
            yield sse("error", {"status": status, **body})
        except Exception as exc:
            status, body, _ = error_parts(exc, request_id)
            yield sse("error", {"status": status, **body})

    async def _stream_graph(
        self, data: bytes, text: str | None, request_id: str, started: float, timeout: float
    ) -> AsyncIterator[bytes]:
        deadline = time.time() + timeout
        hit, upload = await self._resent(data, text)
        if hit is not None:
            result = _from_cache(hit)
            yield sse("cache", result["meta"]["cache"])
            yield sse("result", _finish(result, request_id, started))
            return
        with self._admitted():
            prepared = await self._preprocessor.prepare.remote(
                data, text, request_id, deadline, upload
            )
            if isinstance(prepared, CacheHit):
                result = _from_cache(prepared)
                yield sse("cache", result["meta"]["cache"])
                yield sse("result", _finish(result, request_id, started))
                return
            yield sse("cache", {"hit": False, "match": None, "distance": None})
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
            result = await self._structurer.structure.remote(
                output, prepared.structure_context(request_id), self._cache_key(prepared)
            )
        yield sse("result", _finish(result, request_id, started))

    async def _run_graph(
        self, data: bytes, text: str | None, request_id: str, deadline: float
    ) -> dict[str, Any]:
        hit, upload = await self._resent(data, text)
        if hit is not None:
            return _from_cache(hit)
        with self._admitted(), _cancelled_with_caller() as calls:
            prepared = await calls.add(
                self._preprocessor.prepare.remote(data, text, request_id, deadline, upload)
            )
            if isinstance(prepared, CacheHit):
                return _from_cache(prepared)
            # The DeploymentResponse goes straight to the Structurer as a top-level argument.
            output = calls.add(self._vlm.generate.remote(prepared.request))
            analysis: dict[str, Any] = await calls.add(
                self._structurer.structure.remote(
                    output, prepared.structure_context(request_id), self._cache_key(prepared)
                )
            )
        return analysis

    async def _resent(self, data: bytes, text: str | None) -> tuple[CacheHit | None, str | None]:
        """The stored answer for bytes sent before (no decoding), and the upload's key."""
        if not self._args.cache.enabled:
            return None, None
        started = time.perf_counter()
        scope = request_scope(text, self._args)
        if len(data) > _HASH_INLINE_BYTES:  # keep the event loop free for big uploads
            upload = await asyncio.to_thread(upload_key, data, scope)
        else:
            upload = upload_key(data, scope)
        hit = await self._store.lookup_upload.remote(upload, self._levels.state.level)
        if hit is None:
            return None, upload
        cached = CacheHit(
            analysis=hit.analysis,
            level=hit.level,
            preprocess_ms=(time.perf_counter() - started) * 1000.0,
            match=hit.match,
            distance=hit.distance,
        )
        return cached, upload

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """A place in the engine path; at a shedding level, refused when none is free."""
        self._admission.enter(self._levels.state)
        try:
            yield
        finally:
            self._admission.leave()

    def _cache_key(self, prepared: Prepared) -> StoreKey | None:
        return prepared.key if self._args.cache.enabled else None

    @app.get("/", summary="The web page", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        """Upload a meme, add context, read the result (self-contained: no CDN)."""
        return HTMLResponse(_page_html(), headers={"cache-control": "no-cache"})

    @app.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict[str, str]:
        """The ingress process is up."""
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", responses={503: ERROR_RESPONSES[503]})
    async def readyz(self) -> dict[str, Any]:
        """Ready when a VLM pool replica answers with a started engine."""
        self._levels.start()
        try:
            engine = await asyncio.wait_for(self._vlm.info.remote(), 5.0)
        except TimeoutError:
            raise ServiceUnavailable("the engine did not answer in time", retry_after_s=2) from None
        except Exception as exc:
            raise ServiceUnavailable(f"engine not ready: {exc}", retry_after_s=2) from None
        return {"status": "ready", "engine": engine["kind"], "model": engine["model"]}

    @app.get("/v1/status", summary="Degradation level, cache figures, engine, replicas")
    async def status(self) -> dict[str, Any]:
        """Operational snapshot of the running graph."""
        self._levels.start()
        engine_call = self._vlm.info.remote()
        cache_call = self._store.stats.remote()
        degradation_call = self._controller.status.remote()
        return {
            "service": "memeserve",
            "version": __version__,
            "engine": await _answer_or_error(
                engine_call, {"kind": self._args.engine.kind, "ready": False}
            ),
            "model": self._args.engine.model_name,
            "prompt_version": self._args.prompt_version,
            "degradation": await _answer_or_error(degradation_call, {"level": None}),
            "cache": await _answer_or_error(cache_call, {"enabled": self._args.cache.enabled}),
            "in_flight": self._in_flight,
            "replicas": await asyncio.to_thread(_replica_summary),
        }
