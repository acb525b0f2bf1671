"""The Ingress deployment: Serve's wrapper around the FastAPI app of :mod:`serve_app.http.api`."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config.models import AppArgs, IngressUserConfig
from serve_app.http.api import app
from serve_app.http.current import bind_service
from serve_app.http.security_middleware import configure_security
from serve_app.http.service import IngressService
from serve_app.observability.logs import configure_logging
from serve_app.observability.replica import replica_tag


def _replica_summary() -> dict[str, Any]:
    """Per-deployment status and replica counts from Serve's controller."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name]
    except Exception as exc:  # the controller may be briefly unreachable
        return {"error": str(exc)[:200]}
    return {
        name: {
            "status": str(getattr(d.status, "value", d.status)),
            "replicas": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
        }
        for name, d in status.deployments.items()
    }


@serve.deployment(
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(app)
class Ingress:
    """HTTP front of the graph."""

    async def __init__(  # type: ignore[misc]
        self,
        args: dict[str, Any],
        preprocessor: DeploymentHandle,
        vlm_pool: DeploymentHandle,
        structurer: DeploymentHandle,
        store: DeploymentHandle,
        controller: DeploymentHandle,
    ) -> None:
        configure_logging()
        parsed = AppArgs.model_validate(args)
        configure_security(parsed.security)
        self._service = IngressService(
            parsed,
            preprocessor=preprocessor,
            vlm_pool=vlm_pool,
            structurer=structurer,
            store=store,
            controller=controller,
            source=replica_tag(),
            replicas=_replica_summary,
        )
        bind_service(self._service)
        # Jobs resume after a restart without waiting for a request to arrive.
        self._service.jobs.start()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the scene policies of ``user_config`` live (strict; no replica restart)."""
        self._service.scenes.reconfigure(IngressUserConfig.model_validate(user_config))

    async def __del__(self) -> None:
        await self._service.jobs.stop()
        await self._service.scenes.stop()
