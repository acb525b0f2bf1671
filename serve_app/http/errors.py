"""The one place where exceptions become HTTP error responses.

Body shape everywhere: ``{"error": {"code", "message", "request_id"}}``. A
:class:`~serve_app.errors.MemeServeError` keeps its status and message; validation
errors become 422; anything unexpected becomes a generic 500 whose details go to the
log, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import (
    ClientError,
    Forbidden,
    MemeServeError,
    PayloadTooLarge,
    SchemaError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from serve_app.observability.logs import current_request_id
from serve_app.observability.metrics import count_error
from serve_app.observability.tracing import annotate

logger = logging.getLogger(__name__)

# Starlette's own HTTP errors get the code our error class of that status has, so one
# status never has two codes; statuses we never raise ourselves get their own.
_HTTP_CODES: dict[int, str] = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    **{
        error.status: error.code
        for error in (
            ClientError,
            Unauthorized,
            Forbidden,
            PayloadTooLarge,
            UnsupportedMediaType,
            SchemaError,
            TooManyRequests,
        )
    },
}


def unwrap(exc: BaseException) -> BaseException:
    """Ray wraps replica exceptions (``RayTaskError(X)``); return the original ``X``."""
    seen = 0
    while seen < 5 and not isinstance(exc, MemeServeError) and getattr(exc, "cause", None):
        exc = exc.cause  # type: ignore[attr-defined]
        seen += 1
    return exc


def _from_ray(exc: BaseException | None) -> MemeServeError | None:
    """Ray's own failures between deployments, as the errors a client should see.

    Serve reports a replica that died upstream of a call (the VLM pool, whose response
    the Structurer was waiting for) as a ``RayServeException`` caused by the actor
    error, so the ``__cause__`` chain is followed too.
    """
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    for _ in range(5):
        if exc is None:
            return None
        if isinstance(exc, serve_exceptions.BackPressureError):
            return ServiceUnavailable("the service is at capacity; retry shortly", retry_after_s=1)
        if isinstance(exc, ray_exceptions.RayActorError | ray_exceptions.ActorUnavailableError):
            return ServiceUnavailable(
                "a replica of the graph was lost while serving this request; retry",
                retry_after_s=2,
            )
        exc = exc.__cause__
    return None


def error_parts(
    exc: BaseException, request_id: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception: the one conversion every route uses.

    Plain responses, batch items and stream ``error`` events all carry this body.
    """
    request_id = request_id or current_request_id()
    exc = unwrap(exc)
    exc = _from_ray(exc) or exc
    headers: dict[str, str] = {}
    if isinstance(exc, MemeServeError):
        status, code, message = exc.status, exc.code, exc.message
        headers.update(exc.headers)
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        if status >= 500:
            logger.warning("request failed: %s %s", code, message)
        else:  # the client's mistake, not ours: one line, no traceback
            logger.info("request refused: %d %s: %s", status, code, message)
    elif isinstance(exc, RequestValidationError):
        status, code = 422, "invalid_request"
        message = validation_message(exc.errors())
    elif isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        code = _HTTP_CODES.get(status, "http_error")
        message = str(exc.detail)
    else:
        logger.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
        status, code, message = 500, "internal_error", "internal error; see the service logs"
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    count_error(status, code)
    annotate({"memeserve.error.code": code, "memeserve.error.status": status})
    return status, body, headers


def error_response(exc: BaseException, request_id: str | None = None) -> JSONResponse:
    """Convert any exception into the JSON error response."""
    status, body, headers = error_parts(exc, request_id)
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(errors: Any) -> str:
    """The first five pydantic or FastAPI validation errors as ``location: message; ...``."""
    parts = []
    for error in list(errors)[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register :func:`error_response` for every exception type FastAPI may see."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    app.add_exception_handler(MemeServeError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)
