"""One exception hierarchy for the whole graph.

Every deliberate failure is a :class:`MemeServeError` carrying an HTTP status, a
stable machine-readable ``code`` and a message safe to show to a client. Two
branches: :class:`ClientError` (4xx, the request was wrong) and :class:`ServerError`
(5xx, we failed). The ingress converts them to the JSON error body in exactly one
place (``deployments.ingress``); anything else becomes a generic 500 with no details.

The classes keep their constructor arguments in ``args`` so that they survive
pickling across Ray Serve ``DeploymentHandle`` calls.
"""

from __future__ import annotations

from typing import ClassVar


class MemeServeError(Exception):
    """Base of every error this service raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: Extra response headers this error always carries (e.g. ``WWW-Authenticate``).
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.retry_after_s))

    def __str__(self) -> str:
        return self.message


def _rebuild(
    cls: type[MemeServeError], message: str, retry_after_s: float | None
) -> MemeServeError:
    return cls(message, retry_after_s=retry_after_s)


class ClientError(MemeServeError):
    """The request cannot be served as sent (4xx)."""

    status = 400
    code = "bad_request"


class BadInput(ClientError):
    """Malformed request: undecodable base64, corrupt or truncated image, empty body."""

    status = 400
    code = "bad_input"


class Unauthorized(ClientError):
    """No usable credentials: the ``Authorization: Bearer <key>`` header is missing or bad."""

    status = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ClientError):
    """Credentials were sent but are not accepted (unknown API key)."""

    status = 403
    code = "forbidden"


class NotFound(ClientError):
    """A named thing (a kept decision, a list entry) does not exist."""

    status = 404
    code = "not_found"


class PayloadTooLarge(ClientError):
    """Too many bytes, or too many pixels (decompression bombs land here)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ClientError):
    """The bytes are not an allowed image type (judged by content, not by name)."""

    status = 415
    code = "unsupported_media_type"


class SchemaError(ClientError):
    """Well-formed but the request does not match the documented schema."""

    status = 422
    code = "invalid_request"


class TooManyRequests(ClientError):
    """Load is being shed and the client should back off for ``retry_after_s``."""

    status = 429
    code = "too_many_requests"


class ServerError(MemeServeError):
    """We could not produce an answer (5xx)."""

    status = 500
    code = "internal_error"


class EngineError(ServerError):
    """The model engine failed while generating."""

    status = 502
    code = "engine_error"


class ServiceUnavailable(ServerError):
    """Not ready, overloaded or shedding load; retry after ``retry_after_s``."""

    status = 503
    code = "unavailable"


class DeadlineExceeded(ServerError):
    """The request's deadline passed before an answer was ready."""

    status = 504
    code = "deadline_exceeded"
