"""Shared test set-up: markers by directory, meme fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

_MARKERS = ("unit", "integration", "e2e", "gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by the directory it lives in (tests/unit → ``unit`` …)."""
    root = Path(__file__).parent
    for item in items:
        try:
            part = Path(str(item.fspath)).relative_to(root).parts[0]
        except ValueError:
            continue
        if part in _MARKERS:
            item.add_marker(getattr(pytest.mark, part))


@pytest.fixture(scope="session")
def tiny_glm4v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GLM-4.xV checkpoint, written offline once per test session."""
    from serve_app.ops.tiny_glm4v import build_tiny_glm4v

    return build_tiny_glm4v(tmp_path_factory.mktemp("tiny-glm4v"))
