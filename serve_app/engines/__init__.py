"""Model engines behind one interface (:mod:`serve_app.engines.base`).

Engines with heavy optional dependencies are imported only when selected, so
``import serve_app`` works on a machine without them.
"""

from __future__ import annotations

from serve_app.config.models import EngineArgs
from serve_app.engines.base import Engine, EngineOutput, EngineRequest, EngineStats

__all__ = ["Engine", "EngineOutput", "EngineRequest", "EngineStats", "create_engine"]


def create_engine(args: EngineArgs) -> Engine:
    """Construct (cheaply, without starting) the engine that ``args.kind`` names.

    Engines that reserve memory up front (vLLM) size their image cap with
    ``args.max_visual_tokens``, the largest budget any degradation level may ask for.
    With ``args.faults`` set (drills only) the engine is wrapped in a
    :class:`~serve_app.engines.faults.FaultInjectingEngine`.
    """
    engine = _create_plain_engine(args)
    if args.faults is None:
        return engine
    from serve_app.engines.faults import FaultInjectingEngine

    return FaultInjectingEngine.wrap(engine, args.faults)


def _create_plain_engine(args: EngineArgs) -> Engine:
    if args.kind == "lite":
        from serve_app.engines.lite import LiteEngine

        return LiteEngine(args)
    if args.kind == "transformers":
        from serve_app.engines.transformers_engine import TransformersEngine

        return TransformersEngine(args)
    if args.kind == "vllm":
        from serve_app.engines.vllm_engine import VllmEngine

        return VllmEngine(args)
    raise ValueError(f"unknown engine kind {args.kind!r}")
