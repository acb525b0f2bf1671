"""Strict configuration models and `memeserve check-config`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config.check import REPLICA_LOOP_ENV, check_file
from serve_app.config.models import (
    VLM_POOL_AUTOSCALING_POLICY,
    AppArgs,
    ControllerUserConfig,
    StructurerUserConfig,
)
from serve_app.ops.cli import main
from tests.support.paths import ROOT

SHIPPED = sorted((ROOT / "autoscale_configs").glob("*.yaml"))


def test_defaults_are_valid_and_complete() -> None:
    controller = ControllerUserConfig()
    assert [controller.level(n).level for n in range(4)] == [0, 1, 2, 3]
    assert controller.level(0).max_visual_tokens == 1024
    assert controller.level(1).enter_load == 0.8  # the product promise: 80 % load
    assert AppArgs().engine.max_visual_tokens == 1024


def test_unknown_keys_are_errors_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate({"engine": {"kind": "lite", "modle_id": "x"}})
    (error,) = info.value.errors()
    assert error["loc"] == ("engine", "modle_id") and error["type"] == "extra_forbidden"


def test_levels_must_cover_zero_to_three() -> None:
    row = ControllerUserConfig().level(0).model_dump()
    with pytest.raises(ValidationError, match=r"0\.\.3"):
        ControllerUserConfig.model_validate({"levels": [row]})


def _levels(**changes: dict[str, object]) -> list[dict[str, object]]:
    rows = [row.model_dump() for row in ControllerUserConfig().levels]
    for key, change in changes.items():
        rows[int(key[1:])].update(change)
    return rows


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"l1": {"leave_load": 0.9}}, "must be below enter_load"),
        ({"l2": {"enter_load": 0.7, "leave_load": 0.5}}, "must be above level 1"),
        ({"l0": {"enter_load": 0.5}}, "level 0 is where the controller rests"),
        ({"l0": {"route": "reject"}}, "level 0 must route to the engine"),
        ({"l3": {"enter_load": None}}, "level 3 needs enter_load and leave_load"),
    ],
)
def test_level_thresholds_are_checked(changes: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ControllerUserConfig.model_validate({"levels": _levels(**changes)})


def test_signals_merge_with_their_defaults_and_names_are_closed() -> None:
    config = ControllerUserConfig.model_validate({"signals": {"cpu": {"enabled": True}}})
    assert config.signals["cpu"].enabled and config.signals["cpu"].full_at == 1.0
    assert config.signals["kv_cache"].enabled  # untouched defaults stay
    with pytest.raises(ValidationError, match="gpu_utilisation"):
        ControllerUserConfig.model_validate({"signals": {"gpu_utilisation": {}}})


def test_the_redis_backend_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        AppArgs.model_validate({"cache": {"backend": "redis"}})


def test_every_field_is_described() -> None:
    for model in (AppArgs, StructurerUserConfig, ControllerUserConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_profiles_are_valid(path: Path) -> None:
    assert check_file(path) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_profiles_run_replica_code_on_the_replicas_loop(path: Path) -> None:
    """Every shipped profile gives its replicas the Serve settings the tests run under."""
    document = yaml.safe_load(path.read_text("utf-8"))
    if document.get("kind") == "RayService":
        document = yaml.safe_load(document["spec"]["serveConfigV2"])
    for application in document["applications"]:
        env_vars = (application.get("runtime_env") or {}).get("env_vars") or {}
        assert REPLICA_LOOP_ENV.items() <= env_vars.items(), path.name


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return path


def _dev_cpu() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "autoscale_configs/dev-cpu.yaml").read_text("utf-8"))


@pytest.mark.parametrize(
    ("mutate", "expected_path"),
    [
        (
            lambda d: d["applications"][0]["args"]["engine"].update(kind="gpt"),
            "applications[0].args.engine.kind",
        ),
        (
            lambda d: d["applications"][0]["args"]["limits"].update(max_byts=1),
            "applications[0].args.limits.max_byts",
        ),
        (
            lambda d: d["applications"][0]["deployments"][3]["user_config"]["risk"].update(
                block=0.1
            ),
            "applications[0].deployments[3].user_config.risk",
        ),
        (
            lambda d: d["applications"][0]["deployments"][0].update(user_config={"a": 1}),
            "applications[0].deployments[0].user_config",
        ),
        (
            lambda d: d["applications"][0]["deployments"][1].update(name="Preprocesor"),
            "applications[0].deployments[1].name",
        ),
        (
            lambda d: d["applications"][0]["deployments"][5]["user_config"]["levels"][1].update(
                leave_load=0.99
            ),
            "applications[0].deployments[5].user_config.levels[1]",
        ),
        (
            lambda d: d["applications"][0]["deployments"][5]["user_config"].update(force=2),
            "applications[0].deployments[5].user_config.force",
        ),
        (
            lambda d: d["applications"][0].update(import_path="other.app:build"),
            "applications[0].import_path",
        ),
        (
            lambda d: d["applications"][0]["deployments"][5]["user_config"]["admission"].update(
                tolerance=0.5
            ),
            "applications[0].deployments[5].user_config.admission.tolerance",
        ),
        (
            # The proxy's refusal of a full Ingress queue would carry no Retry-After.
            lambda d: d["applications"][0]["deployments"][0].pop("backpressure_config"),
            "applications[0].deployments[0].backpressure_config.retry_after_s",
        ),
        (
            lambda d: d["applications"][0]["deployments"][2].update(num_replicas="many"),
            "applications[0].deployments[2]",
        ),
    ],
)
def test_problems_name_file_and_path(tmp_path: Path, mutate, expected_path: str) -> None:  # type: ignore[no-untyped-def]
    document = _dev_cpu()
    mutate(document)
    path = _write(tmp_path, document)
    problems = check_file(path)
    assert problems, "the broken config was accepted"
    rendered = [str(p) for p in problems]
    assert any(r.startswith(f"{path}: {expected_path}") for r in rendered), rendered


def _first_autoscaled(document: dict) -> dict:  # type: ignore[type-arg]
    deployments = document["applications"][0]["deployments"]
    return next(d for d in deployments if d.get("autoscaling_config"))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: _first_autoscaled(d)["autoscaling_config"].update(target_ongoing_requestz=4),
            ".autoscaling_config.target_ongoing_requestz: unknown key 'target_ongoing_requestz' "
            "(did you mean 'target_ongoing_requests'?)",
        ),
        (
            lambda d: d["applications"][0]["deployments"][0].update(max_ongoing_requestz=8),
            "applications[0].deployments[0].max_ongoing_requestz: unknown key "
            "'max_ongoing_requestz' (did you mean 'max_ongoing_requests'?)",
        ),
        (
            lambda d: d["applications"][0]["deployments"][0]["ray_actor_options"].update(
                num_cpu=0.1
            ),
            "applications[0].deployments[0].ray_actor_options.num_cpu: unknown key 'num_cpu' "
            "(did you mean 'num_cpus'?)",
        ),
        (
            lambda d: d["http_options"].update(prot=8000),
            "http_options.prot: unknown key 'prot' (did you mean 'port'?)",
        ),
        (
            lambda d: d["applications"][0].update(route_prefx="/"),
            "applications[0].route_prefx: unknown key 'route_prefx' (did you mean 'route_prefix'?)",
        ),
        (
            lambda d: d.update(zzz=1),
            "zzz: unknown key 'zzz'; known keys: ",
        ),
    ],
    ids=["autoscaling", "deployment", "actor-options", "http-options", "application", "top"],
)
def test_misspelt_ray_knobs_are_refused_with_the_closest_key(
    tmp_path: Path,
    mutate,  # type: ignore[no-untyped-def]
    expected: str,
) -> None:
    """Ray's own schema ignores unknown keys: a typo would silently keep Ray's default."""
    document = _dev_cpu()
    mutate(document)
    path = _write(tmp_path, document)
    rendered = [str(p) for p in check_file(path)]
    assert any(expected in r for r in rendered), rendered
    assert main(["check-config", str(path)]) != 0


def test_the_shipped_profiles_use_only_known_ray_keys() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config.unknown_keys import unknown_keys

    for path in SHIPPED:
        document = yaml.safe_load(path.read_text("utf-8"))
        if document.get("kind") == "RayService":
            document = yaml.safe_load(document["spec"]["serveConfigV2"])
        assert unknown_keys(ServeDeploySchema, document) == [], path


def _with_policy(document: dict, name: str, policy: dict) -> dict:  # type: ignore[type-arg]
    deployments = document["applications"][0]["deployments"]
    deployment = next(d for d in deployments if d["name"] == name)
    deployment.setdefault("autoscaling_config", {"min_replicas": 1, "max_replicas": 2})
    deployment["autoscaling_config"]["policy"] = policy
    return document


@pytest.mark.parametrize(
    ("name", "policy", "where", "reason"),
    [
        (
            "VLMPool",
            {
                "policy_function": VLM_POOL_AUTOSCALING_POLICY,
                "policy_kwargs": {"waiting_per_replicas": 1},
            },
            ".autoscaling_config.policy.policy_kwargs.waiting_per_replicas",
            "Extra inputs are not permitted",
        ),
        (
            "VLMPool",
            {"policy_function": VLM_POOL_AUTOSCALING_POLICY, "policy_kwargs": {"pressure_step": 0}},
            ".autoscaling_config.policy.policy_kwargs.pressure_step",
            "greater than or equal to 1",
        ),
        (
            "Preprocessor",
            {"policy_function": VLM_POOL_AUTOSCALING_POLICY},
            ".autoscaling_config.policy.policy_function",
            "only VLMPool can use it",
        ),
        (
            "VLMPool",
            {"policy_function": "serve_app.load.autoscaling:NoSuchPolicy"},
            ".autoscaling_config.policy.policy_function",
            "cannot import",
        ),
    ],
    ids=["misspelt-knob", "bad-value", "wrong-deployment", "unimportable"],
)
def test_a_custom_autoscaling_policy_is_checked(
    tmp_path: Path,
    name: str,
    policy: dict,
    where: str,
    reason: str,  # type: ignore[type-arg]
) -> None:
    document = _with_policy(_dev_cpu(), name, policy)
    problems = check_file(_write(tmp_path, document))
    assert any(p.path.endswith(where) and reason in p.reason for p in problems), problems
    # The shipped knobs pass.
    ours = {"policy_function": VLM_POOL_AUTOSCALING_POLICY, "policy_kwargs": {"scale_up_level": 3}}
    assert check_file(_write(tmp_path, _with_policy(_dev_cpu(), "VLMPool", ours))) == []


@pytest.mark.parametrize(
    ("exporter", "reason"),
    [
        ("serve_app.observability.tracing:no_such_exporter", "cannot import"),
        ("no_such_module:span_processors", "cannot import"),
        # Ray's own default exporter takes a file name: replicas would fail to start.
        ("ray.serve._private.tracing_utils:default_tracing_exporter", "without parameters"),
    ],
)
def test_a_tracing_exporter_serve_cannot_call_is_a_problem(
    tmp_path: Path, exporter: str, reason: str
) -> None:
    document = _dev_cpu()
    document["tracing_config"]["exporter_import_path"] = exporter
    (problem,) = check_file(_write(tmp_path, document))
    assert problem.path == "tracing_config.exporter_import_path"
    assert reason in problem.reason


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("applications:\n  - name: [unclosed\n", "utf-8")
    (problem,) = check_file(path)
    assert "line" in problem.path and "invalid YAML" in problem.reason


def test_check_config_command_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(ROOT / "autoscale_configs/dev-cpu.yaml")]) == 0
    document = _dev_cpu()
    document["applications"][0]["args"]["cache"]["ttl_s"] = -5
    bad = _write(tmp_path, document)
    assert main(["check-config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "applications[0].args.cache.ttl_s" in out and str(bad) in out


RAYSERVICE = ROOT / "autoscale_configs/kuberay-rayservice.yaml"


def test_the_rayservice_embeds_the_t4_profile_verbatim() -> None:
    manifest = yaml.safe_load(RAYSERVICE.read_text("utf-8"))
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    t4 = yaml.safe_load((ROOT / "autoscale_configs/t4.yaml").read_text("utf-8"))
    assert embedded == t4, "edit t4.yaml, then paste its Serve config into serveConfigV2"


@pytest.mark.parametrize(
    ("mutate", "expected_path"),
    [
        (
            lambda m: m["spec"].update(
                serveConfigV2=m["spec"]["serveConfigV2"].replace("kind: vllm", "kind: gpt")
            ),
            "spec.serveConfigV2.applications[0].args.engine.kind",
        ),
        (
            lambda m: m["spec"]["rayClusterConfig"].update(rayVersion="2.9.0"),
            "spec.rayClusterConfig.rayVersion",
        ),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"].pop(),
            "spec.rayClusterConfig.workerGroupSpecs",
        ),
        (lambda m: m["spec"].update(serveConfigV2={"applications": []}), "spec.serveConfigV2"),
        (lambda m: m.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
        (
            lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"][
                "containers"
            ][0].pop("env"),
            "spec.rayClusterConfig.workerGroupSpecs[1].template.spec.containers[0].env",
        ),
    ],
)
def test_rayservice_problems_name_the_path(tmp_path: Path, mutate, expected_path: str) -> None:  # type: ignore[no-untyped-def]
    manifest = yaml.safe_load(RAYSERVICE.read_text("utf-8"))
    mutate(manifest)
    path = _write(tmp_path, manifest)
    rendered = [str(p) for p in check_file(path)]
    assert any(r.startswith(f"{path}: {expected_path}") for r in rendered), rendered
