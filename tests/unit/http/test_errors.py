"""The error hierarchy and its one conversion to HTTP."""

from __future__ import annotations

import json
import pickle

import pytest
from ray import exceptions as ray_exceptions
from ray.serve.exceptions import BackPressureError

from serve_app.errors import (
    BadInput,
    ClientError,
    DeadlineExceeded,
    EngineError,
    MemeServeError,
    PayloadTooLarge,
    SchemaError,
    ServerError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from serve_app.http.errors import error_response


def _body(response) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(response.body)


@pytest.mark.parametrize(
    ("error", "status", "branch"),
    [
        (BadInput("x"), 400, ClientError),
        (PayloadTooLarge("x"), 413, ClientError),
        (UnsupportedMediaType("x"), 415, ClientError),
        (SchemaError("x"), 422, ClientError),
        (EngineError("x"), 502, ServerError),
        (ServiceUnavailable("x"), 503, ServerError),
        (DeadlineExceeded("x"), 504, ServerError),
    ],
)
def test_each_error_has_its_status_and_branch(
    error: MemeServeError, status: int, branch: type
) -> None:
    assert isinstance(error, branch) and error.status == status
    response = error_response(error, "rid-1")
    assert response.status_code == status
    assert _body(response) == {"error": {"code": error.code, "message": "x", "request_id": "rid-1"}}


def test_errors_survive_pickling_across_deployments() -> None:
    error = pickle.loads(pickle.dumps(ServiceUnavailable("busy", retry_after_s=3.2)))
    assert isinstance(error, ServiceUnavailable) and error.message == "busy"
    assert error_response(error, "r").headers["retry-after"] == "3"


def test_wrapped_errors_are_unwrapped() -> None:
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("wrapped")
            self.cause = cause

    response = error_response(Wrapper(UnsupportedMediaType("svg")), "r")
    assert response.status_code == 415 and _body(response)["error"]["message"] == "svg"


def test_unexpected_errors_are_a_generic_500_without_details() -> None:
    response = error_response(KeyError("/secret/path/in/traceback"), "r")
    body = _body(response)
    assert response.status_code == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in response.body.decode()


def test_ray_capacity_and_lost_replicas_are_503_with_retry_after() -> None:
    for error in (
        BackPressureError(num_queued_requests=5, max_queued_requests=5),
        ray_exceptions.ActorUnavailableError("gone", b"\x00" * 16),
    ):
        response = error_response(error, "r")
        assert response.status_code == 503 and "retry-after" in response.headers


def test_a_replica_lost_upstream_of_a_call_is_a_503_not_a_500() -> None:
    # What Serve raises in the Structurer call when the VLM replica whose response it
    # was given died: a RayServeException caused by the actor error.
    from ray.serve.exceptions import RayServeException

    error = RayServeException("Request to deployment 'Structurer' failed: upstream actor died")
    error.__cause__ = ray_exceptions.ActorDiedError()
    response = error_response(error, "r")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert json.loads(bytes(response.body))["error"]["code"] == "unavailable"


@pytest.mark.parametrize(
    "ours", [TooManyRequests("x"), SchemaError("x"), PayloadTooLarge("x"), Unauthorized("x")]
)
def test_a_status_has_one_code_whoever_raises_it(ours: MemeServeError) -> None:
    """Starlette's own HTTP errors get the code of our error with that status."""
    from starlette.exceptions import HTTPException

    theirs = _body(error_response(HTTPException(ours.status, "x"), "r"))["error"]["code"]
    assert theirs == _body(error_response(ours, "r"))["error"]["code"] == ours.code


def test_validation_messages_name_up_to_five_locations() -> None:
    from pydantic import BaseModel, ValidationError

    from serve_app.http.errors import validation_message

    class Body(BaseModel):
        a: int
        b: int

    with pytest.raises(ValidationError) as info:
        Body.model_validate({"a": "x"})
    assert validation_message(info.value.errors()).startswith("a: Input should be")
    assert "b: Field required" in validation_message(info.value.errors())
    many = [{"loc": ("body", f"f{n}"), "msg": "bad"} for n in range(8)]
    assert validation_message(many) == "; ".join(f"f{n}: bad" for n in range(5))
    assert validation_message([]) == "invalid request"
