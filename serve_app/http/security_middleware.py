"""The ingress's security layer as ASGI middleware: API keys, per-key rate limits, CORS.

The decisions are :mod:`serve_app.http.auth`'s (framework-free); this module turns
them into HTTP with the standard error body.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.config.models import SecurityArgs
from serve_app.errors import Forbidden, MemeServeError, TooManyRequests, Unauthorized
from serve_app.http.auth import Guard, Verdict
from serve_app.http.errors import error_response
from serve_app.http.headers import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, header
from serve_app.http.text_errors import JsonErrors, Replacement

_PREFLIGHT_REFUSED = {400: Replacement(400, "cors_refused")}


class _SecurityState:
    """One replica's security settings: the key guard and, when configured, CORS."""

    def __init__(self, args: SecurityArgs) -> None:
        self.guard = Guard.from_args(args)
        self.cors_origins = tuple(args.cors_allow_origins)


# Why a module-level holder: ``@serve.ingress(app)`` wraps the module-level FastAPI app
# when this module is imported, but the replica's ``AppArgs`` exist only once
# ``Ingress.__init__`` runs, and Starlette refuses ``add_middleware`` once its stack is
# built. So SecurityMiddleware is installed at import time and reads this holder, which
# ``Ingress.__init__`` sets. Each Serve replica is its own process holding exactly one
# Ingress, so the holder is that replica's configuration. Until it is set, requests pass.
_security: _SecurityState | None = None


def configure_security(args: SecurityArgs) -> None:
    """Install this process's API-key, rate-limit and CORS settings (``Ingress.__init__``)."""
    global _security
    _security = _SecurityState(args)


class SecurityMiddleware:
    """Pure ASGI middleware: API keys (401/403), per-key rate limits (429) and CORS.

    Runs inside :class:`RequestIdMiddleware`, so refusals carry the request id in the
    standard error body. CORS (Starlette's ``CORSMiddleware``, only with a non-empty
    allowlist) wraps the key check, so preflights need no key and refusals still carry
    the CORS headers an allowed origin needs to read them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors_for: _SecurityState | None = None
        self._cors: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = _security
        if scope["type"] != "http" or state is None:
            await self.app(scope, receive, send)
            return
        if not state.cors_origins:
            await self._guarded(scope, receive, send)
            return
        if self._cors_for is not state:
            self._cors = CORSMiddleware(
                self._guarded,
                allow_origins=list(state.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=list(CORS_ALLOW_HEADERS),
                expose_headers=list(CORS_EXPOSE_HEADERS),
            )
            self._cors_for = state
        assert self._cors is not None
        if scope.get("method") == "OPTIONS":
            # Starlette refuses a preflight with a text 400: send our JSON error instead.
            request_id = scope.get("state", {}).get("request_id", "-")
            send = JsonErrors(send, request_id, _PREFLIGHT_REFUSED)
        await self._cors(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = _security
        assert state is not None
        authorization = header(scope["headers"], b"authorization")
        verdict, wait_s, key = state.guard.authorize(scope["path"], authorization)
        if verdict is None:
            # Who asked, for the audit of admin writes (None: the API is open).
            state = scope.setdefault("state", {})
            state["api_key"] = key.name if key is not None else None
            state["api_key_admin"] = key is not None and "admin" in key.scopes
            await self.app(scope, receive, send)
            return
        error: MemeServeError
        if verdict == Verdict.MISSING:
            error = Unauthorized("send the API key as 'Authorization: Bearer <key>'")
        elif verdict == Verdict.UNKNOWN:
            error = Forbidden("the API key is not accepted")
        elif verdict == Verdict.NOT_ADMIN:
            error = Forbidden("this API key has no admin scope (lists, reviews, decisions)")
        else:
            error = TooManyRequests(
                "rate limit of this API key exceeded; retry later", retry_after_s=wait_s
            )
        request_id = scope.get("state", {}).get("request_id")
        await error_response(error, request_id)(scope, receive, send)
