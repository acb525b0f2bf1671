"""Applying a degradation level to a request, and following the controller's level.

The LoadController decides the level (:mod:`serve_app.load.policy`); every other
replica keeps the latest :class:`LevelState` in a :class:`LevelFollower`, refreshed in
the background, so the hot path reads a local value and never calls the controller.
The Preprocessor and the VLM pool each apply the level they see; a request is served
at the higher of the two (:func:`tighten`), so a level change takes effect at once in
whichever stage sees it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve_app.config.models import AdmissionArgs, ControllerUserConfig, LevelArgs
from serve_app.engines.base import EngineRequest
from serve_app.errors import MemeServeError, ServiceUnavailable, TooManyRequests
from serve_app.media.imaging import resize_to_budget
from serve_app.understanding.context_text import truncate_context

logger = logging.getLogger(__name__)

# While draining, new requests are told to come back after this (or go to another node).
DRAIN_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class LevelState:
    """The controller's current level and its row of the table, as replicas see it."""

    level: int
    row: LevelArgs
    period_s: float
    changed_at: float | None = None
    """``time.time()`` when the level was entered (None: since start)."""
    admit: int | None = None
    """Requests one ingress replica lets into the engine path at once: its share of the
    pool's capacity. At a ``route: reject`` level the rest are refused; at any level it
    caps the admission limit. None: capacity unknown."""
    draining: bool = False
    """The app is about to stop: no new request enters the engine path."""
    admission: AdmissionArgs | None = None
    """Admission by predicted wait in the ingresses (:mod:`serve_app.load.admission`);
    None: off (the controller is off, or its ``admission.enabled`` is false)."""
    refused: float = 0.0
    """Requests the ingresses refused at a shedding level in their latest reports (about
    one ``period_s``): demand the pool did not take in (the VLM pool's autoscaling reads it)."""
    idle_report_s: float | None = None
    """Seconds between the refreshes of a replica with nothing in flight (None: every
    ``period_s``)."""

    @classmethod
    def initial(cls, config: ControllerUserConfig | None = None) -> LevelState:
        """Level 0 of ``config`` (defaults if None): what a replica assumes before it hears."""
        config = config or ControllerUserConfig()
        return cls(
            level=0,
            row=config.level(0),
            period_s=config.period_s,
            idle_report_s=config.idle_report_s,
        )


def image_budget(row: LevelArgs, engine_cap: int) -> int:
    """The level's image budget, never above the engine's cap."""
    return min(row.max_visual_tokens, engine_cap)


def shed_error(row: LevelArgs) -> MemeServeError:
    """The refusal a ``route: reject`` level answers with (429 or 503, with Retry-After)."""
    message = f"shedding load at degradation level {row.level} ({row.name}); retry later"
    if row.reject_status == 429:
        return TooManyRequests(message, retry_after_s=row.retry_after_s)
    return ServiceUnavailable(message, retry_after_s=row.retry_after_s)


def tighten(request: EngineRequest, row: LevelArgs, engine_cap: int) -> EngineRequest:
    """``request`` served at ``row``'s level if that is higher than the one it was built at.

    Budgets only ever shrink: the image is resized down (never up), the context cut,
    the output and explanation caps lowered.
    """
    if row.level <= request.level:
        return request
    budget = min(image_budget(row, engine_cap), request.max_visual_tokens)
    image = request.image
    height, width = image.shape[:2]
    resized = resize_to_budget(Image.fromarray(image), budget)
    if resized.size != (width, height):
        image = np.asarray(resized)
    context = request.context
    if context:
        context = truncate_context(context, row.max_context_chars) or None
    return dataclasses.replace(
        request,
        image=image,
        context=context,
        max_output_tokens=min(request.max_output_tokens, row.max_output_tokens),
        max_visual_tokens=budget,
        explanation_max_chars=min(request.explanation_max_chars, row.explanation_max_chars),
        level=row.level,
        route=row.route,
    )


class LevelFollower:
    """The latest :class:`LevelState`, refreshed by a background task.

    ``fetch`` is an async callable returning the controller's current state (for the
    VLM pool it also carries the replica's report). A failed fetch keeps the last
    state: a controller restart must not take the graph down with it.

    ``idle`` says whether the replica has nothing in flight: while it does, the
    background task refreshes every ``idle_report_s`` of the state instead of every
    ``period_s``, so an idle graph does not keep the controller (and the cores) busy. Work
    arriving shows at the next ``period_s`` tick.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[LevelState]],
        initial: LevelState | None = None,
        *,
        idle: Callable[[], bool] | None = None,
    ) -> None:
        self._fetch = fetch
        self._state = initial or LevelState.initial()
        self._task: asyncio.Task[None] | None = None
        self._last_ok: float | None = None
        self.failures = 0
        """Failed refreshes since this follower started."""
        self._failing = 0  # failures in a row: the log throttle starts again after a success
        self._idle = idle
        self._tried: float | None = None  # monotonic time of the last refresh tried
        self._tried_idle = False  # whether the replica was idle then (its report said so)

    @property
    def state(self) -> LevelState:
        """The most recent state (a local read)."""
        return self._state

    @property
    def age_s(self) -> float | None:
        """Seconds since the last successful refresh (None: never)."""
        return None if self._last_ok is None else time.monotonic() - self._last_ok

    def due(self, now: float) -> bool:
        """Whether the background task refreshes at this tick: always with work in flight
        or just after it (the report that says it is gone), else once ``idle_report_s``
        has passed since the last try."""
        every = self._state.idle_report_s
        if self._idle is None or every is None or self._tried is None:
            return True
        if not (self._idle() and self._tried_idle):
            return True
        return now - self._tried >= every - 0.5 * self._state.period_s

    async def refresh(self) -> LevelState:
        """Fetch once now; on failure keep (and return) the previous state."""
        self._tried = time.monotonic()
        self._tried_idle = self._idle is not None and self._idle()
        try:
            state = await self._fetch()
        except Exception as exc:
            self.failures += 1
            self._failing += 1
            if self._failing in (1, 10) or self._failing % 100 == 0:
                logger.warning("level refresh failed (%d times in a row): %s", self._failing, exc)
            return self._state
        if self._failing:
            logger.info("level refresh works again after %d failures", self._failing)
            self._failing = 0
        if state.level != self._state.level:
            logger.info("degradation level %d -> %d", self._state.level, state.level)
        self._state = state
        self._last_ok = time.monotonic()
        return state

    def start(self) -> None:
        """Refresh every ``state.period_s`` until :meth:`stop` (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            if self.due(time.monotonic()):
                await self.refresh()
            await asyncio.sleep(self._state.period_s)

    async def stop(self) -> None:
        """Cancel the refresh task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
