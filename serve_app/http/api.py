"""The FastAPI application: middleware, error handlers and the routes of DESIGN.md §3.

Routes are plain functions over the replica's :class:`IngressService`, which the Ingress
deployment (``deployments/ingress.py``) binds with :func:`bind_service` when it starts.
One Ingress replica runs per process, so one service per process is all there is.
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app import __version__
from serve_app.config.models import DOCS_ASSET_PATHS
from serve_app.http.body import parse_analyze_input, parse_batch_input
from serve_app.http.current import current
from serve_app.http.errors import install_error_handlers
from serve_app.http.headers import POLICY_HEADER, REQUEST_TIMEOUT_HEADER, request_timeout_s
from serve_app.http.jobs_routes import router as jobs_router
from serve_app.http.middleware import RequestIdMiddleware
from serve_app.http.openapi import (
    ANALYZE_BODY,
    BATCH_BODY,
    ERROR_RESPONSES,
    STREAM_RESPONSES,
    EventStreamResponse,
)
from serve_app.http.scenes_routes import router as scenes_router
from serve_app.http.security_middleware import SecurityMiddleware
from serve_app.http.service import IngressService
from serve_app.http.wire import BatchResponse
from serve_app.understanding.analysis import Analysis


def _timeout(service: IngressService, request: Request) -> float:
    """Seconds left of this request's deadline (the configured one, or the caller's shorter
    one), counted from its arrival, so the time spent reading the body counts too."""
    allowed = request_timeout_s(
        request.headers.get(REQUEST_TIMEOUT_HEADER), service.args.request_timeout_s
    )
    arrived = getattr(request.state, "arrived_at", None) or time.time()
    return max(0.0, allowed - (time.time() - arrived))


@functools.cache
def _static_html(name: str) -> str:
    return (resources.files("serve_app.http") / "static" / name).read_text("utf-8")


app = FastAPI(
    title="memeserve",
    version=__version__,
    docs_url=None,  # served below from local files: FastAPI's default loads a CDN
    redoc_url=None,
    description="Reads internet memes (image + optional context) and returns a structured "
    "judgement: emotion, intent, sarcasm, offensiveness, confidence, explanation, risk.",
)
# add_middleware puts the latest outermost: SecurityMiddleware runs inside RequestIdMiddleware.
app.add_middleware(SecurityMiddleware)
app.add_middleware(RequestIdMiddleware)
install_error_handlers(app)
app.include_router(scenes_router)
app.include_router(jobs_router)


@app.post(
    "/v1/memes/analyze",
    response_model=Analysis,
    responses=ERROR_RESPONSES,
    openapi_extra=ANALYZE_BODY,
    summary="Analyse one meme",
)
async def analyze(request: Request) -> JSONResponse:
    """Multipart (``image`` file, optional ``text``) or JSON (``image_base64``, ``text``)."""
    started = time.perf_counter()
    service = current()
    data, text, policy = await parse_analyze_input(request, service.body_limit)
    timeout = _timeout(service, request)
    result = await service.analyze(data, text, request.state.request_id, started, timeout, policy)
    return JSONResponse(result)


@app.post(
    "/v1/memes/analyze/batch",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=BATCH_BODY,
    summary="Analyse several memes; each item succeeds or fails on its own",
)
async def analyze_batch(request: Request) -> JSONResponse:
    """Items run concurrently through the graph; results keep ids and order."""
    service = current()
    limit = service.body_limit * service.args.limits.max_batch_items
    batch = await parse_batch_input(request, limit)
    timeout = _timeout(service, request)
    policy = request.headers.get(POLICY_HEADER) or None
    answer = await service.analyze_batch(batch, request.state.request_id, timeout, policy)
    return JSONResponse(answer)


@app.post(
    "/v1/memes/analyze/stream",
    response_class=EventStreamResponse,
    responses=STREAM_RESPONSES,
    openapi_extra=ANALYZE_BODY,
    summary="Analyse one meme, streaming the explanation as the model writes it",
)
async def analyze_stream(request: Request) -> EventStreamResponse:
    """Same input as analyze. Input errors are plain JSON errors, before the stream opens."""
    started = time.perf_counter()
    service = current()
    data, text, policy = await parse_analyze_input(request, service.body_limit)
    await service.precheck(data, text, policy)
    deadline = time.time() + _timeout(service, request)
    return EventStreamResponse(
        service.events(data, text, request.state.request_id, started, deadline, policy),
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@app.get("/", summary="The web page", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """Upload a meme, add context, read the result (self-contained: no CDN)."""
    return HTMLResponse(_static_html("index.html"), headers={"cache-control": "no-cache"})


@app.get("/review", summary="The moderators' review page", response_class=HTMLResponse)
async def review_page() -> HTMLResponse:
    """Recent decisions with thumbnails; accept or correct in one click (admin key)."""
    return HTMLResponse(_static_html("review.html"), headers={"cache-control": "no-cache"})


# Swagger UI 5's files (the fastapi-offline package ships them), by their public path.
_DOCS_FILES = {
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "application/javascript"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css"),
    "/docs/favicon.png": ("favicon.png", "image/png"),
}
assert set(_DOCS_FILES) == set(DOCS_ASSET_PATHS)


@app.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, every file served from here (works offline)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="memeserve API",
        swagger_js_url="/docs/swagger-ui-bundle.js",
        swagger_css_url="/docs/swagger-ui.css",
        swagger_favicon_url="/docs/favicon.png",
    )


@app.get("/docs/{name}", include_in_schema=False)
async def docs_file(name: str) -> Response:
    """One of Swagger UI's files (404 for anything else)."""
    found = _DOCS_FILES.get(f"/docs/{name}")
    if found is None:
        raise StarletteHTTPException(404, f"no such file: /docs/{name}")
    filename, media_type = found
    path = Path(str(resources.files("fastapi_offline") / "static" / filename))
    return FileResponse(path, media_type=media_type, headers={"cache-control": "max-age=3600"})


@app.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The ingress process is up."""
    return {"status": "ok"}


@app.get("/readyz", summary="Readiness", responses={503: ERROR_RESPONSES[503]})
async def readyz() -> dict[str, Any]:
    """Ready when a VLM pool replica answers with a started engine."""
    return await current().ready()


@app.get("/v1/status", summary="Degradation level, cache figures, engine, replicas")
async def status() -> dict[str, Any]:
    """Operational snapshot of the running graph."""
    return await current().status()
