"""Degradation tables for tests that start the app with their own budgets."""

from __future__ import annotations

from typing import Any

from serve_app.config.models import ControllerUserConfig


def level_table(**fields: Any) -> list[dict[str, Any]]:
    """The default levels table with ``fields`` set on every row."""
    return [{**level.model_dump(), **fields} for level in ControllerUserConfig().levels]
