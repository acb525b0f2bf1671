"""Model engines behind one interface (:mod:`serve_app.engines.base`).

Engines with heavy optional dependencies are imported only when selected, so
``import serve_app`` works on a machine without them.
"""

from __future__ import annotations

from serve_app.config import EngineArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats

__all__ = ["Engine", "EngineOutput", "EngineRequest", "EngineStats", "create_engine"]


def create_engine(args: EngineArgs, max_visual_tokens: int = 1024) -> Engine:
    """Construct (cheaply, without starting) the engine that ``args.kind`` names.

    ``max_visual_tokens`` is the largest image budget of any level; engines that
    reserve memory up front (vLLM) size their image cap with it.
    """
    if args.kind == "lite":
        from serve_app.engines.lite import LiteEngine

        return LiteEngine(args)
    if args.kind == "transformers":
        from serve_app.engines.transformers_engine import TransformersEngine

        return TransformersEngine(args)
    if args.kind == "vllm":
        from serve_app.engines.vllm_engine import VllmEngine

        return VllmEngine(args, max_visual_tokens)
    raise ValueError(f"unknown engine kind {args.kind!r}")
