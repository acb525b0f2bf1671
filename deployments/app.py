"""The application builder: ``deployments.app:build_app``, every Serve config's ``import_path``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.fingerprint_store import FingerprintStore
from deployments.ingress import Ingress
from deployments.load_controller import LoadController
from deployments.preprocessor import Preprocessor
from deployments.structurer import Structurer
from deployments.vlm_pool import VLMPool
from serve_app.config.models import AppArgs, ControllerUserConfig, IngressUserConfig


def build_app(args: dict[str, Any] | AppArgs | None = None) -> Application:
    """Compose the graph of DESIGN.md §1 from validated ``args`` (Serve's app builder).

    Serve calls a builder with exactly one argument; the LoadController's
    ``user_config`` comes from the config file's ``deployments`` section.
    Raises ``ValueError`` naming the offending field when ``args`` is invalid.
    """
    return build_graph(args)


def build_graph(
    args: dict[str, Any] | AppArgs | None = None,
    controller_config: dict[str, Any] | ControllerUserConfig | None = None,
    ingress_config: dict[str, Any] | None = None,
) -> Application:
    """:func:`build_app` with the LoadController's and the Ingress's (scene policies)
    initial ``user_config`` (``serve.run``)."""
    try:
        parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    except ValidationError as exc:
        raise ValueError(f"invalid application args: {exc}") from exc
    controller_deployment = _deployment(LoadController)
    if controller_config is not None:
        try:
            checked = ControllerUserConfig.model_validate(
                controller_config.model_dump()
                if isinstance(controller_config, ControllerUserConfig)
                else controller_config
            )
        except ValidationError as exc:
            raise ValueError(f"invalid LoadController user_config: {exc}") from exc
        controller_deployment = controller_deployment.options(
            user_config=checked.model_dump(mode="json")
        )
    plain = parsed.model_dump(mode="json")
    controller = controller_deployment.bind()
    store = _deployment(FingerprintStore).bind(plain["cache"], plain["scenes"])
    preprocessor = _deployment(Preprocessor).bind(plain, store, controller)
    vlm_pool = _deployment(VLMPool).bind(plain, controller)
    structurer = _deployment(Structurer).bind(store)
    ingress = _deployment(Ingress)
    if ingress_config is not None:
        try:
            policies = IngressUserConfig.model_validate(ingress_config)
        except ValidationError as exc:
            raise ValueError(f"invalid Ingress user_config: {exc}") from exc
        ingress = ingress.options(user_config=policies.model_dump(mode="json"))
    return ingress.bind(plain, preprocessor, vlm_pool, structurer, store, controller)


def _deployment(decorated: object) -> Deployment:
    """``@serve.deployment`` turns a class into a Deployment; type checkers don't see it."""
    assert isinstance(decorated, Deployment), f"{decorated!r} is not a Serve deployment"
    return decorated
