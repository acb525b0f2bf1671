"""The drain before a stop: the config change it applies (the waiting is tested over HTTP)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from serve_app.config.models import ControllerUserConfig
from serve_app.ops.drain import drained_document
from tests.support.paths import ROOT


def _profile(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "autoscale_configs" / name).read_text())
    return document


def _controller(document: dict[str, Any]) -> dict[str, Any]:
    (app,) = document["applications"]
    entry: dict[str, Any] = next(d for d in app["deployments"] if d["name"] == "LoadController")
    return entry


@pytest.mark.parametrize("name", ["dev-cpu.yaml", "t4.yaml", "h100.yaml"])
def test_draining_changes_only_the_controllers_flag(name: str) -> None:
    profile = _profile(name)
    original = copy.deepcopy(profile)
    drained = drained_document(profile)
    assert profile == original, "the input document was modified"
    config = ControllerUserConfig.model_validate(_controller(drained)["user_config"])
    assert config.draining is True
    # Everything else is as it was, so serve deploy only reconfigures the LoadController.
    _controller(drained)["user_config"]["draining"] = False
    assert drained == original
    assert drained_document(drained, draining=False) == original


def test_a_profile_without_a_controller_entry_gets_one() -> None:
    document = {"applications": [{"name": "m", "import_path": "deployments.app:build_app"}]}
    drained = drained_document(document)
    assert _controller(drained) == {"name": "LoadController", "user_config": {"draining": True}}


def test_a_config_without_memeserve_is_refused() -> None:
    with pytest.raises(ValueError, match=r"deployments\.app:build_app"):
        drained_document({"applications": [{"name": "x", "import_path": "other:app"}]})


def test_a_drain_waits_the_apps_deadline_and_a_margin_by_default() -> None:
    from serve_app.ops.drain import drain_timeout_s

    assert drain_timeout_s(_profile("dev-cpu.yaml")) == 65.0  # request_timeout_s: 60
    assert drain_timeout_s(_profile("cpu-tiny-glm4v.yaml")) == 95.0  # 90


def test_a_drain_reads_empty_long_enough_for_an_idle_ingress_to_hear_the_flag() -> None:
    """An idle Ingress reads the level every idle_report_s: the empty graph must hold for
    two of them (and a second) before the drain calls the app safe to delete."""
    from serve_app.ops.drain import drain_settle_s

    assert drain_settle_s(_profile("dev-cpu.yaml")) == 3.0  # idle_report_s: 1
    slow = _profile("dev-cpu.yaml")
    _controller(slow)["user_config"]["idle_report_s"] = 2.0
    assert drain_settle_s(slow) == 5.0
    bare = {"applications": [{"name": "m", "import_path": "deployments.app:build_app"}]}
    assert drain_settle_s(bare) == 3.0  # the default idle_report_s
