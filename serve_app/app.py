"""Application builder: the ``import_path`` of every Serve config (``serve_app.app:build_app``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.fingerprint_store import FingerprintStore
from deployments.preprocessor import Preprocessor
from deployments.structurer import Structurer
from deployments.vlm_pool import VLMPool
from serve_app.config import AppArgs
from serve_app.ingress import Ingress


def build_app(args: dict[str, Any] | AppArgs | None = None) -> Application:
    """Compose the graph of DESIGN.md §1 from validated ``args``.

    Raises ``ValueError`` naming the offending field when ``args`` is invalid.
    """
    try:
        parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    except ValidationError as exc:
        raise ValueError(f"invalid application args: {exc}") from exc
    plain = parsed.model_dump(mode="json")
    store = _deployment(FingerprintStore).bind(plain["cache"])
    preprocessor = _deployment(Preprocessor).bind(plain, store)
    vlm_pool = _deployment(VLMPool).bind(plain)
    structurer = _deployment(Structurer).bind(store)
    return _deployment(Ingress).bind(plain, preprocessor, vlm_pool, structurer, store)


def _deployment(decorated: object) -> Deployment:
    """``@serve.deployment`` turns a class into a Deployment; type checkers don't see it."""
    assert isinstance(decorated, Deployment), f"{decorated!r} is not a Serve deployment"
    return decorated
