"""Routes of the scenes: term and image lists, reviews, decisions, policies.

Every route under ``/v1/lists``, ``/v1/reviews`` and ``/v1/decisions`` needs a key with
the ``admin`` scope when keys are configured (:func:`serve_app.http.auth.needs_admin`);
the key's name is the audit's "who" unless the body names a reviewer.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve_app.errors import SchemaError
from serve_app.http.body import parse_image_input, parse_json_input
from serve_app.http.current import current
from serve_app.http.errors import OurErrorsRoute
from serve_app.http.openapi import ERROR_RESPONSES, image_body, json_body
from serve_app.http.wire import (
    AcceptRequest,
    ImageRemove,
    ImageReview,
    ImageWrite,
    ReviewLabels,
    ReviewRequest,
    TermsRemove,
    TermsWrite,
)
from serve_app.scenes.events import LIST_NAME_PATTERN

router = APIRouter(route_class=OurErrorsRoute)

_JSON_LIMIT = 4 * 1024 * 1024
"""Bytes of a JSON admin body (10^4 terms of up to 100 characters fit)."""
_LIST_NAME = re.compile(LIST_NAME_PATTERN)


_REVIEW_BODY = image_body(ImageReview)
_REVIEW_BODY["requestBody"]["content"]["application/json"] = json_body(ReviewRequest)[
    "requestBody"
]["content"]["application/json"]


def _who(request: Request) -> str:
    """The API key's name, or ``anonymous`` on an open service."""
    return getattr(request.state, "api_key", None) or "anonymous"


def _key(request: Request) -> str | None:
    return getattr(request.state, "api_key", None)


def _list_name(name: str) -> str:
    if not _LIST_NAME.match(name):
        raise SchemaError(f"list name {name!r} must match {LIST_NAME_PATTERN}")
    return name


def _limit(value: int, most: int = 500) -> int:
    if not 1 <= value <= most:
        raise SchemaError(f"limit must be between 1 and {most}")
    return value


@router.get("/v1/policies", summary="The scene policies a request may pick")
async def policies() -> dict[str, Any]:
    """Each policy's actions, thresholds, rules and lists (the Ingress's user_config)."""
    return current().scenes.describe()


@router.get("/v1/lists", summary="Term and image lists: names and sizes", responses=ERROR_RESPONSES)
async def lists() -> dict[str, Any]:
    """Every list with its terms and images counted by action (admin)."""
    return {"lists": await current().scenes.read("lists")}


@router.get("/v1/lists/{name}/terms", summary="A term list", responses=ERROR_RESPONSES)
async def list_terms(name: str) -> dict[str, Any]:
    """The list's terms and their actions (admin)."""
    terms = await current().scenes.read("terms")
    return {"list": _list_name(name), "terms": terms.get(name, {})}


@router.post(
    "/v1/lists/{name}/terms",
    summary="Add terms to a list",
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(TermsWrite),
)
async def add_terms(name: str, request: Request) -> dict[str, Any]:
    """JSON ``{"action": "block|review|pass", "terms": [...]}`` (admin)."""
    body = await parse_json_input(request, _JSON_LIMIT, TermsWrite)
    event = {"list": _list_name(name), "action": body.action, "terms": body.terms}
    return await current().scenes.write("terms.add", {**event, "by": _who(request)})


@router.post(
    "/v1/lists/{name}/terms/remove",
    summary="Remove terms from a list",
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(TermsRemove),
)
async def remove_terms(name: str, request: Request) -> dict[str, Any]:
    """JSON ``{"terms": [...]}`` (admin)."""
    body = await parse_json_input(request, _JSON_LIMIT, TermsRemove)
    event = {"list": _list_name(name), "terms": body.terms, "by": _who(request)}
    return await current().scenes.write("terms.remove", event)


@router.get("/v1/lists/{name}/images", summary="An image list", responses=ERROR_RESPONSES)
async def list_images(name: str) -> dict[str, Any]:
    """The list's entries (id, action, label, who, when) (admin)."""
    images = await current().scenes.read("images")
    return {"list": _list_name(name), "images": images.get(name, [])}


@router.post(
    "/v1/lists/{name}/images",
    summary="Put an image (and its near copies) on a list",
    responses=ERROR_RESPONSES,
    openapi_extra=image_body(ImageWrite),
)
async def add_image(name: str, request: Request) -> dict[str, Any]:
    """Multipart (``image`` file, ``action``, optional ``label``) or JSON (``image_base64``,
    ``action``, ``label``) (admin). The same template with another caption is not covered."""
    service = current()
    data, fields = await parse_image_input(request, service.body_limit, ImageWrite)
    return await service.scenes.add_image(
        _list_name(name), data, fields["action"], fields.get("label"), _who(request)
    )


@router.post(
    "/v1/lists/{name}/images/remove",
    summary="Take an image off a list",
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(ImageRemove),
)
async def remove_image(name: str, request: Request) -> dict[str, Any]:
    """JSON ``{"entry_id": ...}`` (admin)."""
    body = await parse_json_input(request, _JSON_LIMIT, ImageRemove)
    event = {"list": _list_name(name), "entry_id": body.entry_id, "by": _who(request)}
    return await current().scenes.write("images.remove", event)


@router.post(
    "/v1/reviews",
    summary="A reviewer's correction: authoritative for the image and its near copies",
    status_code=201,
    responses=ERROR_RESPONSES,
    openapi_extra=_REVIEW_BODY,
)
async def post_review(request: Request) -> JSONResponse:
    """JSON ``{"request_id", "labels", "reviewer", "note"}`` for a kept decision, or
    multipart (``image`` file, ``emotion``, ``intent``, ``sarcastic``, ``offensiveness``,
    ``reviewer``, ``note``) for any image (admin)."""
    service = current()
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        answer = await _review_image(request)
    else:
        body = await parse_json_input(request, _JSON_LIMIT, ReviewRequest)
        answer = await service.scenes.review(body, _who(request), _key(request))
    return JSONResponse(answer, status_code=201)


async def _review_image(request: Request) -> dict[str, Any]:
    service = current()
    data, fields = await parse_image_input(request, service.body_limit, ImageReview)
    labels = ReviewLabels.model_validate(
        {name: fields[name] for name in ReviewLabels.model_fields if fields.get(name) is not None}
    )
    reviewer = fields.get("reviewer") or _who(request)
    return await service.scenes.review_image(
        data, labels, reviewer, _key(request), fields.get("note")
    )


@router.get("/v1/reviews", summary="The review audit, newest first", responses=ERROR_RESPONSES)
async def review_audit(limit: int = 100, before_seq: int | None = None) -> dict[str, Any]:
    """Who reviewed what, when, the labels before and after (admin; append-only). Page
    back with ``before_seq`` = the last row's ``seq``."""
    return {"reviews": await current().scenes.read("audit", _limit(limit), before_seq)}


@router.get(
    "/v1/reviews/latest",
    summary="The reviewed set: the latest review of each image, oldest first",
    responses=ERROR_RESPONSES,
)
async def reviewed_set(limit: int = 100, after_seq: int = 0) -> dict[str, Any]:
    """Per reviewed image (near copies counted once): the reviewer's labels, the model's
    before, who, when, a thumbnail (base64 JPEG) — the next model's training or evaluation
    data (admin). Page on with ``after_seq`` = the last row's ``seq``."""
    return {"reviews": await current().scenes.read("reviews", _limit(limit), after_seq)}


@router.get(
    "/v1/decisions", summary="Recent decisions for the moderators", responses=ERROR_RESPONSES
)
async def decisions(limit: int = 50, actions: str | None = None) -> dict[str, Any]:
    """Newest first; by default those not at their policy's mildest action; ``actions``:
    a comma-separated list, or ``all`` (admin)."""
    wanted = [a.strip() for a in actions.split(",") if a.strip()] if actions else None
    return {"decisions": await current().scenes.decisions(_limit(limit), wanted)}


@router.post(
    "/v1/decisions/{request_id}/accept",
    summary="Confirm a decision's labels as a review",
    status_code=201,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": {**json_body(AcceptRequest)["requestBody"], "required": False}},
)
async def accept(request_id: str, request: Request) -> JSONResponse:
    """JSON ``{"reviewer": ...}`` or an empty body (admin)."""
    reviewer = None
    if request.headers.get("content-length", "0") != "0":
        reviewer = (await parse_json_input(request, _JSON_LIMIT, AcceptRequest)).reviewer
    answer = await current().scenes.accept(request_id, reviewer or _who(request), _key(request))
    return JSONResponse(answer, status_code=201)
