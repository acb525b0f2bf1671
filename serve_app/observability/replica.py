"""This process's place in Ray Serve: its replica context, or nothing outside a replica."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.serve.context import ReplicaContext

LOCAL = "local"
"""The replica tag reported outside Serve (a class constructed in a unit test)."""


def current_replica() -> ReplicaContext | None:
    """The running replica's context (app, deployment, replica tag); None outside Serve."""
    try:
        from ray import serve

        return serve.get_replica_context()
    except Exception:  # Serve raises when there is no replica in this process
        return None


def replica_tag() -> str:
    """The running replica's tag, or ``"local"`` outside Serve."""
    context = current_replica()
    return LOCAL if context is None else context.replica_tag
