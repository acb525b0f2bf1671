"""The one interface every model engine implements.

Lifecycle
    ``__init__`` is cheap: it stores configuration and touches no model, file or
    device. ``await start()`` loads whatever the engine needs and may take long;
    ``check_health()`` raises :class:`~serve_app.errors.ServiceUnavailable` while the
    engine is not started or no longer usable; ``await shutdown()`` releases it and
    is safe to call twice.

Generation
    ``await generate(request)`` returns the complete model text for one request.
    ``stream(request)`` yields text deltas as they are produced; their
    concatenation is exactly the text ``generate`` would have returned for the same
    request. An engine that cannot produce text incrementally yields it as one delta
    (that is what the default implementation does). The text is *model-style*
    output: the Structurer parses and repairs it, so an engine never validates it.

Errors
    A problem caused by the request raises a :class:`~serve_app.errors.ClientError`
    subclass. Every engine failure raises :class:`~serve_app.errors.EngineError`
    (or :class:`~serve_app.errors.ServiceUnavailable` when not started), never a
    bare library exception. A passed ``request.deadline`` raises
    :class:`~serve_app.errors.DeadlineExceeded`. Cancelling the awaiting task
    (client gone, deadline) must abort the underlying work and let
    :class:`asyncio.CancelledError` propagate.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from serve_app.errors import DeadlineExceeded


@dataclass(frozen=True)
class EngineRequest:
    """Everything an engine needs for one meme; built by the Preprocessor."""

    request_id: str
    image: np.ndarray = field(repr=False)
    """RGB uint8 array (H, W, 3), already resized to the level's image budget."""
    context: str | None
    """Request context text, already truncated to the level's budget."""
    max_output_tokens: int
    max_visual_tokens: int = 1024
    """The level's image budget; GLM engines pass it on to their processor."""
    explanation_max_chars: int = 300
    """The level's explanation cap; constrained decoding bounds the field with it."""
    level: int = 0
    route: str = "engine"
    """The level's route: ``engine`` (the configured one) or ``lite`` (the fallback)."""
    deadline: float | None = None
    """Absolute ``time.time()`` after which the answer is useless."""
    image_key: str | None = None
    """Content key of ``image`` (pixel hash and size), or None; an engine with a
    multimodal cache may use it instead of hashing the pixels again."""

    def check_deadline(self) -> None:
        """Raise :class:`DeadlineExceeded` if the deadline has passed."""
        if self.deadline is not None and time.time() > self.deadline:
            raise DeadlineExceeded("the request deadline passed before the engine finished")


@dataclass(frozen=True)
class EngineOutput:
    """Model text plus what the engine knows about how it was produced."""

    text: str
    engine: str
    model: str
    elapsed_ms: float
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    level: int | None = None
    """The degradation level the VLM pool served the request at (None: as prepared)."""
    explanation_max_chars: int | None = None
    """That level's explanation cap (None: as prepared)."""
    analysed_size: tuple[int, int] | None = None
    """(width, height) of the image the engine was given (None: as prepared)."""


@dataclass(frozen=True)
class EngineStats:
    """Load figures for the controller; ``None`` where an engine has no such notion."""

    in_flight: int
    waiting: int | None = None
    kv_cache_usage: float | None = None
    aborted: int = 0
    """Requests whose work was stopped early because their caller left or timed out."""
    details: dict[str, Any] = field(default_factory=dict)
    """Engine-specific figures for /v1/status (vLLM: running, prefix and multimodal
    cache hits, raw JSON validity); not read by the load controller."""


class Engine(abc.ABC):
    """Abstract model engine; see the module docstring for the contract."""

    name: ClassVar[str]
    supports_batching: ClassVar[bool] = False
    """True when :meth:`generate_batch` runs several requests in one model call."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model or tools; idempotent."""

    @abc.abstractmethod
    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Return the complete model text for ``request``."""

    async def generate_batch(
        self, requests: list[EngineRequest]
    ) -> list[EngineOutput | BaseException]:
        """One result per request, in order; a failed item is its exception, not a raise.

        The default runs :meth:`generate` concurrently; batching engines override it.
        """
        results = await asyncio.gather(
            *(self.generate(request) for request in requests), return_exceptions=True
        )
        return list(results)

    async def stream(self, request: EngineRequest) -> AsyncIterator[str]:
        """Yield text deltas; default: the whole ``generate`` text as one delta."""
        output = await self.generate(request)
        yield output.text

    @abc.abstractmethod
    def check_health(self) -> None:
        """Raise ``ServiceUnavailable`` unless the engine can serve requests."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the model and any threads; safe to call more than once."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Current load figures for the load controller."""

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """Model id and version, as reported in responses."""
