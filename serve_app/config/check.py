"""Validate Serve config files against Ray Serve's schema and our strict models.

Each problem is reported as ``FILE: PATH: reason`` where PATH points inside the
YAML (``applications[0].args.engine.kind``), so an operator can go straight to it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.config.models import (
    VLM_POOL_AUTOSCALING_POLICY,
    AppArgs,
    ControllerUserConfig,
    IngressUserConfig,
    PoolAutoscalingArgs,
    StructurerUserConfig,
)
from serve_app.config.unknown_keys import unknown_keys

UserConfigT = TypeVar("UserConfigT", bound=BaseModel)

IMPORT_PATH = "deployments.app:build_app"

# Deployments of the graph and the model their user_config must satisfy (None: takes none).
DEPLOYMENT_USER_CONFIG: dict[str, type[BaseModel] | None] = {
    "Ingress": IngressUserConfig,
    "Preprocessor": None,
    "VLMPool": None,
    "Structurer": StructurerUserConfig,
    "FingerprintStore": None,
    "LoadController": ControllerUserConfig,
}


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a config file."""

    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '<root>'}: {self.reason}"


def _location(loc: Iterable[Any], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _problems(file: str, exc: ValidationError, prefix: str) -> list[ConfigProblem]:
    return [
        ConfigProblem(file, _location(error["loc"], prefix), error["msg"]) for error in exc.errors()
    ]


def load_yaml(path: Path) -> tuple[Any, list[ConfigProblem]]:
    """Parse YAML, reporting syntax errors with their line."""
    try:
        return yaml.safe_load(path.read_text("utf-8")), []
    except OSError as exc:
        return None, [ConfigProblem(str(path), "", f"cannot read: {exc.strerror or exc}")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        return None, [ConfigProblem(str(path), where, f"invalid YAML: {exc}")]


def check_serve_config(document: Any, file: str) -> list[ConfigProblem]:
    """Problems in one parsed Serve config document (empty list: valid)."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(document, Mapping):
        return [ConfigProblem(file, "", "expected a mapping with an 'applications' list")]
    # Ray's models ignore keys they do not know: a misspelt knob would leave its default.
    misspelt = [
        ConfigProblem(file, _location([unknown.key], unknown.path), unknown.reason)
        for unknown in unknown_keys(ServeDeploySchema, document)
    ]
    # Ray's schema imports a custom autoscaling policy while it validates (an import error
    # would escape as a traceback): those are checked first, each at its place.
    policies = [
        problem
        for prefix, deployment in _deployments(document)
        for problem in _check_autoscaling_policy(file, prefix, deployment)
    ]
    if policies:
        return [*misspelt, *policies]
    try:
        ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        return [*misspelt, *_problems(file, exc, "")]
    if misspelt:
        return misspelt
    problems = _check_tracing(file, document.get("tracing_config") or {})
    for index, application in enumerate(document.get("applications") or []):
        prefix = f"applications[{index}]"
        if application.get("import_path") != IMPORT_PATH:
            problems.append(
                ConfigProblem(
                    file, f"{prefix}.import_path", f"must be {IMPORT_PATH!r} for memeserve"
                )
            )
            continue
        try:
            AppArgs.model_validate(application.get("args") or {})
        except ValidationError as exc:
            problems.extend(_problems(file, exc, f"{prefix}.args"))
        for d_index, deployment in enumerate(application.get("deployments") or []):
            problems.extend(_check_deployment(file, f"{prefix}.deployments[{d_index}]", deployment))
    return problems


def _check_tracing(file: str, tracing: Mapping[str, Any]) -> list[ConfigProblem]:
    """Serve calls a custom exporter with no arguments in every replica; a wrong one
    makes every replica fail to start, so it is checked here first."""
    path = tracing.get("exporter_import_path")
    if not tracing.get("enabled") or not path:
        return []
    where = "tracing_config.exporter_import_path"
    module_name, _, attribute = str(path).replace(":", ".").rpartition(".")
    try:
        exporter = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        return [ConfigProblem(file, where, f"cannot import {path!r}: {exc}")]
    if not inspect.isfunction(exporter) or inspect.signature(exporter).parameters:
        reason = f"{path!r} must be a function without parameters (Serve calls it with none)"
        return [ConfigProblem(file, where, reason)]
    return []


def _check_deployment(file: str, prefix: str, deployment: Mapping[str, Any]) -> list[ConfigProblem]:
    name = deployment.get("name")
    if name not in DEPLOYMENT_USER_CONFIG:
        known = ", ".join(DEPLOYMENT_USER_CONFIG)
        return [
            ConfigProblem(file, f"{prefix}.name", f"unknown deployment {name!r}; known: {known}")
        ]
    problems: list[ConfigProblem] = []
    if name == "Ingress":
        problems.extend(_check_ingress_backpressure(file, prefix, deployment))
    model = DEPLOYMENT_USER_CONFIG[name]
    user_config = deployment.get("user_config")
    if user_config is None:
        return problems
    if model is None:
        reason = f"{name} takes no user_config"
        return [*problems, ConfigProblem(file, f"{prefix}.user_config", reason)]
    try:
        model.model_validate(user_config)
    except ValidationError as exc:
        problems.extend(_problems(file, exc, f"{prefix}.user_config"))
    return problems


def _check_ingress_backpressure(
    file: str, prefix: str, deployment: Mapping[str, Any]
) -> list[ConfigProblem]:
    """A bounded Ingress queue needs ``backpressure_config.retry_after_s``.

    Serve's proxy refuses what is over the Ingress's ``max_queued_requests`` itself,
    before our code runs; the only ``Retry-After`` its answer can carry is this one
    (Ray 2.60 sends ``backpressure_config.status_code`` with it).
    """
    if deployment.get("max_queued_requests", -1) in (None, -1):
        return []
    backpressure = deployment.get("backpressure_config")
    if isinstance(backpressure, Mapping) and backpressure.get("retry_after_s") is not None:
        return []
    reason = (
        "set it: Serve's proxy refuses what is over the Ingress's max_queued_requests "
        "itself, and sends Retry-After only with this"
    )
    return [ConfigProblem(file, f"{prefix}.backpressure_config.retry_after_s", reason)]


def _deployments(document: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(``applications[i].deployments[j]``, the entry) of every deployment entry."""
    applications = document.get("applications")
    for index, application in enumerate(applications if isinstance(applications, list) else []):
        entries = application.get("deployments") if isinstance(application, Mapping) else None
        for d_index, deployment in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(deployment, Mapping):
                yield f"applications[{index}].deployments[{d_index}]", deployment


def _check_autoscaling_policy(
    file: str, prefix: str, deployment: Mapping[str, Any]
) -> list[ConfigProblem]:
    """A custom ``autoscaling_config.policy``: Serve imports it in its controller when it
    deploys (a wrong path fails the deploy), and builds ours with ``policy_kwargs``."""
    autoscaling = deployment.get("autoscaling_config")
    policy = autoscaling.get("policy") if isinstance(autoscaling, Mapping) else None
    if not isinstance(policy, Mapping) or not policy.get("policy_function"):
        return []
    where = f"{prefix}.autoscaling_config.policy"
    path = str(policy["policy_function"])
    if path == VLM_POOL_AUTOSCALING_POLICY:
        if deployment.get("name") != "VLMPool":
            reason = f"{path!r} scales on the VLM pool replicas' figures: only VLMPool can use it"
            return [ConfigProblem(file, f"{where}.policy_function", reason)]
        try:
            PoolAutoscalingArgs.model_validate(policy.get("policy_kwargs") or {})
        except ValidationError as exc:
            return _problems(file, exc, f"{where}.policy_kwargs")
        return []
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    try:
        getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # whatever importing it raises, Serve's controller would too
        return [ConfigProblem(file, f"{where}.policy_function", f"cannot import {path!r}: {exc}")]
    return []


def user_config_of(
    application: Mapping[str, Any], deployment_name: str, model: type[UserConfigT]
) -> UserConfigT:
    """One deployment's ``user_config`` in an application entry, validated (defaults if unset)."""
    for deployment in application.get("deployments") or []:
        if deployment.get("name") == deployment_name and deployment.get("user_config"):
            return model.model_validate(deployment["user_config"])
    return model()


def controller_config(application: Mapping[str, Any]) -> ControllerUserConfig:
    """The LoadController ``user_config`` of one application entry (defaults if unset)."""
    return user_config_of(application, "LoadController", ControllerUserConfig)


def check_file(path: Path) -> list[ConfigProblem]:
    """Problems in one config file (empty list: valid): a Serve config or a RayService."""
    document, problems = load_yaml(path)
    if problems:
        return problems
    if isinstance(document, Mapping) and document.get("kind") == "RayService":
        return check_rayservice(document, str(path))
    return check_serve_config(document, str(path))


_EMBEDDED = "spec.serveConfigV2"


def check_rayservice(document: Mapping[str, Any], file: str) -> list[ConfigProblem]:
    """Problems in a KubeRay ``RayService``: its embedded Serve config, Ray version, GPUs."""
    import ray

    problems: list[ConfigProblem] = []
    if document.get("apiVersion") != "ray.io/v1":
        problems.append(ConfigProblem(file, "apiVersion", "must be 'ray.io/v1' (KubeRay)"))
    spec = document.get("spec") or {}
    text = spec.get("serveConfigV2")
    if not isinstance(text, str):
        reason = "must be the Serve config as a YAML string (a `|` block)"
        return [*problems, ConfigProblem(file, _EMBEDDED, reason)]
    try:
        embedded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [*problems, ConfigProblem(file, _EMBEDDED, f"invalid YAML: {exc}")]
    for problem in check_serve_config(embedded, file):
        path = f"{_EMBEDDED}.{problem.path}" if problem.path else _EMBEDDED
        problems.append(ConfigProblem(file, path, problem.reason))
    cluster = spec.get("rayClusterConfig") or {}
    version = str(cluster.get("rayVersion", ""))
    if version != ray.__version__:
        problems.append(
            ConfigProblem(
                file,
                "spec.rayClusterConfig.rayVersion",
                f"{version!r} differs from the Ray memeserve runs on ({ray.__version__})",
            )
        )
    problems.extend(_check_proxy_callback(file, cluster))
    if _asks_for_gpus(embedded) and not _offers_gpus(cluster):
        problems.append(
            ConfigProblem(
                file,
                "spec.rayClusterConfig.workerGroupSpecs",
                "a deployment asks for num_gpus but no worker group's containers have an "
                "nvidia.com/gpu limit: its replicas would never be scheduled",
            )
        )
    return problems


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve_app.http.edge:proxy_middlewares"
"""Installs :class:`serve_app.http.edge.EdgeMiddleware` in Serve's proxy (in every node's
environment: ``memeserve run`` sets it; a cluster's containers must)."""


REPLICA_LOOP_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""The Serve settings every shipped profile gives its replicas (the application's
``runtime_env.env_vars``): our code on the replica's own event loop and handle calls sent
from it, instead of two extra threads. The in-process test apps run under them too."""


def _check_proxy_callback(file: str, cluster: Mapping[str, Any]) -> list[ConfigProblem]:
    """Every Ray container must install serve_app.http.edge in the Serve proxy it runs."""
    groups = [("spec.rayClusterConfig.headGroupSpec", cluster.get("headGroupSpec") or {})]
    groups += [
        (f"spec.rayClusterConfig.workerGroupSpecs[{n}]", group)
        for n, group in enumerate(cluster.get("workerGroupSpecs") or [])
    ]
    problems = []
    for where, group in groups:
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        for index, container in enumerate(containers):
            env = {e.get("name"): e.get("value") for e in container.get("env") or []}
            if env.get(PROXY_CALLBACK_ENV) != PROXY_CALLBACK:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.template.spec.containers[{index}].env",
                        f"set {PROXY_CALLBACK_ENV}={PROXY_CALLBACK}: without it the Serve "
                        "proxy on this node answers timeouts, backpressure and malformed "
                        "requests in plain text instead of the JSON error body",
                    )
                )
    return problems


def _asks_for_gpus(document: Any) -> bool:
    if not isinstance(document, Mapping):
        return False
    return any(
        float((deployment.get("ray_actor_options") or {}).get("num_gpus") or 0) > 0
        for application in document.get("applications") or []
        for deployment in application.get("deployments") or []
    )


def _offers_gpus(cluster: Mapping[str, Any]) -> bool:
    return any(
        "nvidia.com/gpu" in ((container.get("resources") or {}).get("limits") or {})
        for group in cluster.get("workerGroupSpecs") or []
        for container in ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    )


def http_address(path: Path) -> tuple[str, int]:
    """(host, port) the config's HTTP proxy listens on (Serve's defaults if unset)."""
    document, _ = load_yaml(path)
    options = (document or {}).get("http_options") or {}
    return str(options.get("host", "127.0.0.1")), int(options.get("port", 8000))
