"""Preprocessor: validate, decode and fingerprint uploads; answer repeats from the library.

The degradation level comes from a local :class:`~serve_app.load.degradation.LevelFollower`
refreshed in the background, never from a call per request. A stored answer is
looked up before any resizing; on a miss the upload is resized to the level's budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config.models import AppArgs
from serve_app.errors import ClientError
from serve_app.load.degradation import LevelFollower, LevelState
from serve_app.media.fingerprint import Fingerprinter
from serve_app.media.imaging import thumbnail_jpeg
from serve_app.observability.logs import configure_logging, set_request_id
from serve_app.observability.tracing import mark_error, stage
from serve_app.pipeline.prepare import (
    CacheHit,
    Fingerprinted,
    Keyed,
    Prepared,
    Refused,
    build_request,
    key_upload,
)
from serve_app.scenes.lookup import Looked

logger = logging.getLogger(__name__)


@serve.deployment(
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.25},
)
class Preprocessor:
    """Serve wrapper around :mod:`serve_app.pipeline.prepare`."""

    async def __init__(  # type: ignore[misc]
        self, args: dict[str, Any], store: DeploymentHandle, controller: DeploymentHandle
    ) -> None:
        configure_logging()
        self._args = AppArgs.model_validate(args)
        self._store = store
        self._controller = controller
        self._fingerprinter = Fingerprinter()
        self._busy = 0  # prepare calls in progress: an idle replica reads the level less often
        self._levels = LevelFollower(self._fetch_level, idle=lambda: self._busy == 0)
        try:  # know the configured table before the first request, if the controller is up
            await asyncio.wait_for(self._levels.refresh(), 10.0)
        except TimeoutError:
            logger.warning("load controller did not answer; starting at the default level 0")
        self._levels.start()

    async def _fetch_level(self) -> LevelState:
        state: LevelState = await self._controller.state.remote()
        return state

    async def prepare(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        deadline: float | None,
        upload: str | None = None,
    ) -> Prepared | CacheHit | Refused:
        """Decode and key the upload; a stored analysis short-circuits the engine.

        ``upload`` is the ingress's :func:`~serve_app.library.store.upload_key`;
        a hit remembers it, so the same bytes sent again skip this step.
        """
        self._busy += 1
        try:
            return await self._prepare(data, text, request_id, deadline, upload)
        finally:
            self._busy -= 1

    async def _prepare(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        deadline: float | None,
        upload: str | None,
    ) -> Prepared | CacheHit | Refused:
        set_request_id(request_id)
        with stage("preprocess", {"request_id": request_id, "memeserve.bytes": len(data)}) as span:
            # Decoding and hashing are CPU work (Pillow and numpy release the GIL): keep
            # the event loop free.
            try:
                keyed, thumbnail = await asyncio.to_thread(self._key, data, text, upload)
            except ClientError as exc:
                logger.info("refused %d %s: %s", exc.status, exc.code, exc.message)
                span.set_attribute("memeserve.error.code", exc.code)
                mark_error(span, exc)
                return Refused(exc)
            decoded = keyed.decoded
            row = self._levels.state.row
            span.set_attributes(
                {
                    "memeserve.image.format": decoded.format,
                    "memeserve.image.width": decoded.width,
                    "memeserve.image.height": decoded.height,
                    "memeserve.image.frames": decoded.frames,
                    "memeserve.level": row.level,
                }
            )
            looked = Looked(None)
            if self._args.cache.enabled or self._args.scenes.enabled:
                looked = await self._store.lookup.remote(
                    keyed.key, row.level, request_id, thumbnail
                )
                hit = looked.hit
                span.set_attribute("memeserve.cache.match", hit.match if hit else "miss")
                if hit is not None:
                    logger.info("%s cache hit (distance %d)", hit.match, hit.distance)
                    return CacheHit(
                        analysis=hit.analysis,
                        level=hit.level,
                        preprocess_ms=(time.perf_counter() - keyed.started) * 1000.0,
                        match=hit.match,
                        distance=hit.distance,
                        marks=looked.marks,
                        fingerprint=keyed.key.fingerprint,
                        epoch=looked.epoch,
                    )
            prepared = await asyncio.to_thread(
                build_request,
                keyed,
                request_id=request_id,
                args=self._args,
                row=row,
                deadline=deadline,
            )
            span.set_attributes(
                {
                    "memeserve.image.analysed_width": prepared.image.analysed_width or 0,
                    "memeserve.image.analysed_height": prepared.image.analysed_height or 0,
                }
            )
            return dataclasses.replace(prepared, marks=looked.marks, epoch=looked.epoch)

    def _key(self, data: bytes, text: str | None, upload: str | None) -> tuple[Keyed, bytes | None]:
        """The keyed upload and, when scenes are on, its thumbnail (worker thread)."""
        keyed = key_upload(
            data, text, args=self._args, fingerprinter=self._fingerprinter, upload=upload
        )
        thumbnail = thumbnail_jpeg(keyed.decoded.image) if self._args.scenes.enabled else None
        return keyed, thumbnail

    async def fingerprint(self, data: bytes) -> Fingerprinted | Refused:
        """Validate, decode and fingerprint an image for a list entry or a review."""
        try:
            keyed, thumbnail = await asyncio.to_thread(self._key, data, None, None)
        except ClientError as exc:
            logger.info("refused %d %s: %s", exc.status, exc.code, exc.message)
            return Refused(exc)
        return Fingerprinted(keyed.key.fingerprint.to_bytes(), thumbnail)
