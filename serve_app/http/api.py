"""The FastAPI application: middleware, error handlers and the routes of DESIGN.md §3.

Routes are plain functions over the replica's :class:`IngressService`, which the Ingress
deployment (``deployments/ingress.py``) binds with :func:`bind_service` when it starts.
One Ingress replica runs per process, so one service per process is all there is.
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from serve_app import __version__
from serve_app.errors import ServiceUnavailable
from serve_app.http.body import parse_analyze_input, parse_batch_input
from serve_app.http.errors import install_error_handlers
from serve_app.http.headers import REQUEST_TIMEOUT_HEADER, request_timeout_s
from serve_app.http.middleware import RequestIdMiddleware
from serve_app.http.openapi import (
    ANALYZE_BODY,
    BATCH_BODY,
    ERROR_RESPONSES,
    PROXY_TIMEOUT_RESPONSE,
    STREAM_RESPONSES,
    EventStreamResponse,
)
from serve_app.http.security_middleware import SecurityMiddleware
from serve_app.http.service import IngressService
from serve_app.http.wire import BatchResponse
from serve_app.understanding.analysis import Analysis

_service: IngressService | None = None


def bind_service(service: IngressService) -> None:
    """Make ``service`` the one the routes of this process use."""
    global _service
    _service = service


def _current() -> IngressService:
    if _service is None:  # a route reached before the Ingress finished starting
        raise ServiceUnavailable("the ingress is starting", retry_after_s=1)
    return _service


def _timeout(service: IngressService, request: Request) -> float:
    """This request's deadline in seconds: the configured one, or the caller's shorter one."""
    return request_timeout_s(
        request.headers.get(REQUEST_TIMEOUT_HEADER), service.args.request_timeout_s
    )


@functools.cache
def _page_html() -> str:
    return (resources.files("serve_app.http") / "static" / "index.html").read_text("utf-8")


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


@app.post(
    "/v1/memes/analyze",
    response_model=Analysis,
    responses={**ERROR_RESPONSES, **PROXY_TIMEOUT_RESPONSE},
    openapi_extra=ANALYZE_BODY,
    summary="Analyse one meme",
)
async def analyze(request: Request) -> JSONResponse:
    """Multipart (``image`` file, optional ``text``) or JSON (``image_base64``, ``text``)."""
    started = time.perf_counter()
    service = _current()
    timeout = _timeout(service, request)
    data, text = await parse_analyze_input(request, service.body_limit)
    result = await service.analyze(data, text, request.state.request_id, started, timeout)
    return JSONResponse(result)


@app.post(
    "/v1/memes/analyze/batch",
    response_model=BatchResponse,
    responses={**ERROR_RESPONSES, **PROXY_TIMEOUT_RESPONSE},
    openapi_extra=BATCH_BODY,
    summary="Analyse several memes; each item succeeds or fails on its own",
)
async def analyze_batch(request: Request) -> JSONResponse:
    """Items run concurrently through the graph; results keep ids and order."""
    service = _current()
    timeout = _timeout(service, request)
    limit = service.body_limit * service.args.limits.max_batch_items
    batch = await parse_batch_input(request, limit)
    return JSONResponse(await service.analyze_batch(batch, request.state.request_id, timeout))


@app.post(
    "/v1/memes/analyze/stream",
    response_class=EventStreamResponse,
    responses=STREAM_RESPONSES,
    openapi_extra=ANALYZE_BODY,
    summary="Analyse one meme, streaming the explanation as the model writes it",
)
async def analyze_stream(request: Request) -> EventStreamResponse:
    """Same input as analyze. Errors before acceptance are plain JSON errors."""
    started = time.perf_counter()
    service = _current()
    timeout = _timeout(service, request)
    data, text = await parse_analyze_input(request, service.body_limit)
    return EventStreamResponse(
        service.events(data, text, request.state.request_id, started, timeout),
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@app.get("/", summary="The web page", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """Upload a meme, add context, read the result (self-contained: no CDN)."""
    return HTMLResponse(_page_html(), headers={"cache-control": "no-cache"})


@app.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The ingress process is up."""
    return {"status": "ok"}


@app.get("/readyz", summary="Readiness", responses={503: ERROR_RESPONSES[503]})
async def readyz() -> dict[str, Any]:
    """Ready when a VLM pool replica answers with a started engine."""
    return await _current().ready()


@app.get("/v1/status", summary="Degradation level, cache figures, engine, replicas")
async def status() -> dict[str, Any]:
    """Operational snapshot of the running graph."""
    return await _current().status()
