"""What the served OpenAPI document says beyond the route signatures.

The analyze routes read their bodies themselves (multipart or JSON, within a byte
limit), so their request bodies, the error responses and the stream's events are
described here. Request-body schemas are self-contained (``$defs`` inlined): a
``$ref`` to ``#/$defs/…`` inside the OpenAPI document would point at its root.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from serve_app.http.headers import REQUEST_TIMEOUT_HEADER
from serve_app.http.wire import AnalyzeJSONRequest, BatchRequest, ErrorBody

_COMPONENTS = "#/components/schemas/"


def inline_defs(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with every ``#/$defs/…`` reference replaced by its target."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response (so the document lists no JSON for it)."""

    media_type = "text/event-stream"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Corrupt, truncated or undecodable input.",
        413: "Too many bytes, pixels or frames.",
        415: "Not an allowed image type (judged by content).",
        401: "An API key is required (Authorization: Bearer …).",
        403: "The API key is not valid, or has no admin scope (lists, reviews, decisions).",
        404: "No such decision, list entry or route.",
        422: "The request does not match the schema.",
        429: "Rate limit of the key passed, or shedding load; see Retry-After.",
        500: "Internal error (no details are exposed).",
        502: "The engine failed.",
        503: "Not ready, draining or shedding load; see Retry-After.",
        504: "The request deadline passed.",
    }.items()
}

# Serve's proxy answers this itself, in plain text, when the caller's
# x-request-timeout-seconds ends before the graph could (a deadline of milliseconds).
_TIMEOUT_PARAMETER = {
    "name": REQUEST_TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "number"},
    "description": "Seconds the caller will wait, at least 1 (less, or not a number: 400). "
    "The answer, or a 504, comes a little before; longer than the configured deadline "
    "changes nothing, and zero or less means no caller deadline.",
}

ANALYZE_BODY: dict[str, Any] = {
    "parameters": [_TIMEOUT_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "text": {"type": "string"},
                        "policy": {"type": "string", "maxLength": 64},
                    },
                }
            },
            "application/json": {"schema": inline_defs(AnalyzeJSONRequest)},
        },
    },
}

BATCH_BODY: dict[str, Any] = {
    "parameters": [_TIMEOUT_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_defs(BatchRequest)}},
    },
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads a JSON body of ``model`` itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_defs(model)}},
        }
    }


def image_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads an image as multipart (``image`` + the other
    fields of ``model`` as text) or as JSON (``model``, with ``image_base64``)."""
    schema = inline_defs(model)
    fields = {
        name: {"type": "string"} for name in schema.get("properties", {}) if name != "image_base64"
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {"image": {"type": "string", "format": "binary"}, **fields},
                    }
                },
                "application/json": {"schema": schema},
            },
        }
    }


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "properties": {
            "event": {"const": name},
            "data": {"contentMediaType": "application/json", "contentSchema": data},
        }
    }


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["accepted", "cache", "delta", "result", "error"]},
        "data": {"type": "string"},
    },
    "oneOf": [
        _event("accepted", _closed({"request_id": {"type": "string"}})),
        _event("cache", {"$ref": f"{_COMPONENTS}CacheInfo"}),
        _event("delta", _closed({"text": {"type": "string"}})),
        _event("result", {"$ref": f"{_COMPONENTS}Analysis"}),
        _event(
            "error",
            _closed(
                {"status": {"type": "integer"}, "error": {"$ref": f"{_COMPONENTS}ErrorDetail"}}
            ),
        ),
    ],
}

STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: accepted, cache, delta*, then result or error "
        "(each data line is JSON; an error event carries the status and the error body).",
        "content": {"text/event-stream": {"schema": STREAM_EVENT}},
    },
    # Errors before the stream is accepted are plain JSON (the route's own response
    # class would otherwise give them the event-stream type in the document).
    **{
        status: {
            "description": response["description"],
            "content": {"application/json": {"schema": {"$ref": f"{_COMPONENTS}ErrorBody"}}},
        }
        for status, response in ERROR_RESPONSES.items()
    },
}
