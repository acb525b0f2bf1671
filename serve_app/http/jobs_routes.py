"""Routes of the async jobs: submit (202 + Location), look up with paged results, cancel.

A job belongs to the API key that submitted it: another key gets 404 (an admin key
sees every job).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.errors import SchemaError
from serve_app.http.body import parse_json_input
from serve_app.http.current import current
from serve_app.http.errors import OurErrorsRoute
from serve_app.http.openapi import ERROR_RESPONSES, json_body
from serve_app.http.wire import JobRequest

router = APIRouter(route_class=OurErrorsRoute)

_RESULTS_PAGE = 1000


def _owner(request: Request) -> tuple[str | None, bool]:
    """The submitting key's name (None on an open service) and whether it is an admin."""
    state = request.state
    return getattr(state, "api_key", None), bool(getattr(state, "api_key_admin", False))


@router.post(
    "/v1/jobs",
    summary="Queue memes as a job; 202 with its id and Location",
    status_code=202,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(JobRequest),
)
async def submit(request: Request) -> JSONResponse:
    """JSON ``{"items": [{"id", "image_base64", "text", "policy"}], "policy",
    "callback_url"}``; poll ``GET /v1/jobs/{id}`` or wait for the signed callback."""
    service = current()
    limit = service.body_limit * min(service.args.jobs.max_items, 64)
    body = await parse_json_input(request, limit, JobRequest)
    owner, _ = _owner(request)
    view = await service.jobs.submit(body, owner)
    return JSONResponse(view, status_code=202, headers={"location": view["location"]})


@router.get(
    "/v1/jobs/{job_id}", summary="A job: state, progress, results", responses=ERROR_RESPONSES
)
async def get_job(
    job_id: str, request: Request, offset: int = 0, limit: int = 100
) -> dict[str, Any]:
    """State (queued, running, done, cancelled), counts, the callback's state, and the
    results of items ``offset`` … ``offset + limit`` in item order."""
    if offset < 0 or not 0 <= limit <= _RESULTS_PAGE:
        raise SchemaError(f"offset must be ≥ 0 and limit between 0 and {_RESULTS_PAGE}")
    owner, admin = _owner(request)
    return await current().jobs.view(job_id, owner, offset=offset, limit=limit, admin=admin)


@router.post(
    "/v1/jobs/{job_id}/cancel", summary="Cancel a job's remaining items", responses=ERROR_RESPONSES
)
async def cancel(job_id: str, request: Request) -> dict[str, Any]:
    """Items already analysed keep their results; the rest are not analysed."""
    owner, admin = _owner(request)
    return await current().jobs.cancel(job_id, owner, admin=admin)
