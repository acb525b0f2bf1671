"""Serve's refusals between deployments reach the client as our JSON error with Retry-After.

Serve registers its own handler for ``BackPressureError`` (and
``DeploymentUnavailableError``) on the Ingress's FastAPI app when the replica starts —
a plain-text 503, with ``Retry-After`` only if the full deployment configured one —
and Starlette prefers the handler of the most specific class. These tests register
the same kind of handler after ours, as the replica does, and check it never answers.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.errors import ServiceUnavailable, TooManyRequests
from serve_app.http.errors import OurErrorsRoute, error_response, install_error_handlers, ray_error


def _full(status: int = 503, retry_after_s: float | None = None) -> BackPressureError:
    return BackPressureError(
        num_queued_requests=33,
        max_queued_requests=32,
        status_code=status,
        retry_after_s=retry_after_s,
    )


def _as_if_raised_in_a_replica(error: Exception) -> Exception:
    """What a caller gets when ``error`` is raised inside another deployment's replica."""
    wrapped: Exception = RayTaskError(
        "Structurer.structure", "Traceback ...", error
    ).as_instanceof_cause()
    return wrapped


@pytest.mark.parametrize(
    ("error", "kind", "status", "retry_after"),
    [
        (_full(), ServiceUnavailable, 503, "1"),
        (_full(retry_after_s=4), ServiceUnavailable, 503, "4"),
        (_full(429, 2.5), TooManyRequests, 429, "2"),
        (_as_if_raised_in_a_replica(_full()), ServiceUnavailable, 503, "1"),
        (
            DeploymentUnavailableError(DeploymentID("VLMPool", "memeserve")),
            ServiceUnavailable,
            503,
            "2",
        ),
    ],
)
def test_serve_refusals_map_to_our_errors(
    error: Exception, kind: type, status: int, retry_after: str
) -> None:
    mapped = ray_error(error)
    assert isinstance(mapped, kind)
    response = error_response(error, "rid")
    assert response.status_code == status
    assert response.headers["retry-after"] == retry_after
    assert response.headers["content-type"] == "application/json"


def _app_as_serve_starts_it(raise_: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(route_class=OurErrorsRoute)

    @app.get("/direct")
    async def direct() -> dict[str, Any]:
        raise raise_

    @router.get("/included")
    async def included() -> dict[str, Any]:
        raise raise_

    app.include_router(router)

    # What ray.serve's replica does to an ingress app before it takes traffic.
    def serve_handler(_: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), status_code=503)

    app.add_exception_handler(BackPressureError, serve_handler)
    app.add_exception_handler(DeploymentUnavailableError, serve_handler)
    return app


@pytest.mark.parametrize(
    "error",
    [
        _full(),
        _as_if_raised_in_a_replica(_full()),
        DeploymentUnavailableError(DeploymentID("P", "a")),
    ],
)
@pytest.mark.parametrize("path", ["/direct", "/included"])
def test_a_refusal_raised_in_a_route_is_our_json_not_serves_text(
    error: Exception, path: str
) -> None:
    with TestClient(_app_as_serve_starts_it(error)) as client:
        response = client.get(path)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "unavailable"


def test_every_route_of_the_service_maps_ray_refusals() -> None:
    from serve_app.http.api import app

    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert routes and all(isinstance(route, OurErrorsRoute) for route in routes), [
        route.path for route in routes if not isinstance(route, OurErrorsRoute)
    ]
