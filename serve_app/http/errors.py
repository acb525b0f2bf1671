"""The one place where exceptions become HTTP error responses.

Body shape everywhere: ``{"error": {"code", "message", "request_id"}}``. A
:class:`~serve_app.errors.MemeServeError` keeps its status and message; validation
errors become 422; anything unexpected becomes a generic 500 whose details go to the
log, never to the client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
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


BACKPRESSURE_RETRY_AFTER_S = 1
"""Retry-After of a deployment's full queue when its ``backpressure_config`` sets none."""


def ray_error(exc: BaseException | None) -> MemeServeError | None:
    """Ray's own failures between deployments, as the errors a client should see; None
    when ``exc`` is not one of them.

    * ``BackPressureError``: a deployment's queue is full (its ``max_queued_requests``,
      at the caller's handle, anywhere in the graph): 503 ``unavailable`` (or 429
      ``too_many_requests`` when that deployment's ``backpressure_config`` says 429)
      with its ``retry_after_s``, else ``Retry-After: 1``;
    * ``DeploymentUnavailableError``: a deployment has no replica to take it: 503, 2 s;
    * a replica lost mid-request (``RayActorError``, ``ActorUnavailableError``): 503, 2 s.

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
            retry_after = getattr(exc, "retry_after_s", None) or BACKPRESSURE_RETRY_AFTER_S
            message = "the service is at capacity; retry shortly"
            if getattr(exc, "status_code", 503) == 429:
                return TooManyRequests(message, retry_after_s=retry_after)
            return ServiceUnavailable(message, retry_after_s=retry_after)
        if isinstance(exc, serve_exceptions.DeploymentUnavailableError):
            return ServiceUnavailable(
                "a part of the graph is unavailable; retry shortly", retry_after_s=2
            )
        if isinstance(exc, ray_exceptions.RayActorError | ray_exceptions.ActorUnavailableError):
            return ServiceUnavailable(
                "a replica of the graph was lost while serving this request; retry",
                retry_after_s=2,
            )
        exc = exc.__cause__
    return None


@contextlib.contextmanager
def ray_errors_as_ours() -> Iterator[None]:
    """Re-raise Ray's failures between deployments (:func:`ray_error`) as our errors.

    The request flow wraps its handle calls in it, so that callers inside the Ingress
    (batch items, job workers) see a :class:`ServiceUnavailable` they can retry, and
    every route runs in it (:class:`OurErrorsRoute`).
    """
    try:
        yield
    except MemeServeError:
        raise
    except Exception as exc:
        mapped = ray_error(unwrap(exc))
        if mapped is None:
            raise
        raise mapped from exc


class OurErrorsRoute(APIRoute):
    """A FastAPI route whose Ray failures leave it as our errors, answered by our handler.

    Serve registers its own handlers for ``BackPressureError`` and
    ``DeploymentUnavailableError`` on the Ingress's FastAPI app when the replica starts
    (a plain-text 503, with a ``Retry-After`` only if the full deployment's
    ``backpressure_config`` sets one), and Starlette picks the handler registered for
    the most specific class: without this, those two would never reach
    :func:`error_response`. Every route of the app is of this class.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, run inside :func:`ray_errors_as_ours`."""
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            with ray_errors_as_ours():
                return await handler(request)

        return handle


def error_parts(
    exc: BaseException, request_id: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception: the one conversion every route uses.

    Plain responses, batch items and stream ``error`` events all carry this body.
    """
    request_id = request_id or current_request_id()
    exc = unwrap(exc)
    exc = ray_error(exc) or exc
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
    """Register :func:`error_response` for every exception type FastAPI may see, and make
    the routes added after this :class:`OurErrorsRoute` (an included ``APIRouter``
    keeps its own ``route_class``: give it this one too)."""
    app.router.route_class = OurErrorsRoute

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    app.add_exception_handler(MemeServeError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)
