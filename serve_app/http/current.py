"""The replica's :class:`IngressService`, bound by the Ingress deployment when it starts.

One Ingress replica runs per process, so one service per process is all there is; the
routes of :mod:`serve_app.http.api` and :mod:`serve_app.http.scenes_routes` ask here.
"""

from __future__ import annotations

from serve_app.errors import ServiceUnavailable
from serve_app.http.service import IngressService

_service: IngressService | None = None


def bind_service(service: IngressService) -> None:
    """Make ``service`` the one the routes of this process use."""
    global _service
    _service = service


def current() -> IngressService:
    """This process's service (503 while the Ingress is still starting)."""
    if _service is None:  # a route reached before the Ingress finished starting
        raise ServiceUnavailable("the ingress is starting", retry_after_s=1)
    return _service
