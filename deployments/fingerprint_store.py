"""FingerprintStore: the fingerprint library shared by every Preprocessor and Structurer.

One replica owns the in-memory index, so a repeat is a hit whichever replica sees it;
the backend (SQLite by default, Redis across nodes) keeps the library across restarts
and is polled for what other processes added (:mod:`serve_app.library.store`).

The same replica owns the scenes (:mod:`serve_app.scenes`): the term and image lists
and the reviews, written only through it to their append-only log, and the recent
decisions. A lookup answers the stored analysis *and* the image's marks in one hop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections import OrderedDict
from typing import Any

from ray import serve

from serve_app.config.models import CacheArgs, ScenesArgs
from serve_app.library.backends import LibraryUnavailable
from serve_app.library.store import FingerprintLibrary, LibraryHit, StoreKey, library_from
from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.observability.logs import configure_logging
from serve_app.observability.metrics import count_cache_lookup
from serve_app.observability.tracing import annotate, stage
from serve_app.scenes.decide import LABEL_FIELDS, labels_of
from serve_app.scenes.decisions import Decision, DecisionTable
from serve_app.scenes.events import encode_b64
from serve_app.scenes.log import open_log
from serve_app.scenes.lookup import Looked
from serve_app.scenes.state import Marks
from serve_app.scenes.store import ScenesStore

logger = logging.getLogger(__name__)


def _observed(kind: str, hit: LibraryHit | None) -> LibraryHit | None:
    """Count one lookup by kind and result, and note the result on its span."""
    result = hit.match if hit is not None else "miss"
    annotate(
        {"memeserve.cache.match": result, "memeserve.cache.distance": hit.distance if hit else None}
    )
    count_cache_lookup(kind, result)
    return hit


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0.05},
)
class FingerprintStore:
    """Serve wrapper around :class:`serve_app.library.store.FingerprintLibrary`."""

    async def __init__(  # type: ignore[misc]
        self, cache_args: dict[str, Any], scenes_args: dict[str, Any] | None = None
    ) -> None:
        configure_logging()
        self._args = CacheArgs.model_validate(cache_args)
        self._scenes_args = ScenesArgs.model_validate(scenes_args or {"enabled": False})
        self._library: FingerprintLibrary | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._scenes_task: asyncio.Task[None] | None = None
        self._scenes: ScenesStore | None = None
        self._decisions = DecisionTable(self._scenes_args.decisions_kept)
        # Thumbnails by exact image hash, for requests answered from resent bytes.
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()
        # Names this replica's life in its epoch: a restarted store is a new epoch.
        self._instance = uuid.uuid4().hex[:12]
        if self._scenes_args.enabled:
            await self._open_scenes()
        if not self._args.enabled:
            return
        self._library = library_from(self._args)
        try:
            loaded = await asyncio.to_thread(self._library.sync)
            logger.info("fingerprint library loaded %d entries (%s)", loaded, self._args.backend)
        except LibraryUnavailable as exc:
            logger.error("fingerprint library backend unavailable at start: %s", exc)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _open_scenes(self) -> None:
        scenes = self._scenes_args
        backend = scenes.backend or self._args.backend
        log = open_log(
            backend,
            sqlite_path=scenes.sqlite_path,
            redis_url=self._args.redis_url,
            redis_prefix=scenes.redis_prefix,
        )
        self._scenes = ScenesStore(log, Fingerprinter())
        try:
            loaded = await asyncio.to_thread(self._scenes.load)
            logger.info("scenes log replayed: %d events (%s)", loaded, backend)
        except LibraryUnavailable as exc:
            logger.error("scenes log unavailable at start: %s", exc)
        self._scenes_task = asyncio.get_running_loop().create_task(self._sync_scenes_forever())

    async def _sync_scenes_forever(self) -> None:
        assert self._scenes is not None
        while True:
            await asyncio.sleep(self._scenes_args.sync_period_s)
            try:
                taken = await asyncio.to_thread(self._scenes.sync)
                if taken:
                    logger.info("scenes took %d events other writers appended", taken)
            except LibraryUnavailable as exc:
                logger.warning("scenes log sync failed: %s", exc)
            except Exception:
                logger.exception("scenes log sync failed")

    async def _sync_forever(self) -> None:
        assert self._library is not None
        rounds = 0
        while True:
            await asyncio.sleep(self._args.sync_period_s)
            rounds += 1
            try:
                taken = await asyncio.to_thread(self._library.sync)
                if taken:
                    logger.info("fingerprint library took %d new entries from the backend", taken)
                if rounds % 720 == 0:  # hourly at the default period
                    await asyncio.to_thread(self._library.purge_expired)
            except LibraryUnavailable as exc:
                logger.warning("fingerprint library sync failed: %s", exc)
            except Exception:
                logger.exception("fingerprint library sync failed")

    def lookup_upload(self, upload: str, max_level: int, request_id: str | None = None) -> Looked:
        """The stored analysis for bytes already seen in this scope (no decoding), and the
        marks of its image; ``hit`` None on a miss."""
        if self._library is None:
            return Looked(None)
        with stage("cache_lookup", {"memeserve.cache.kind": "upload"}):
            epoch = self.epoch()
            hit = _observed("upload", self._library.lookup_upload(upload, max_level))
            if hit is None or hit.fingerprint is None:
                return Looked(hit, epoch=epoch)
            thumbnail = self._thumbnails.get(hit.fingerprint.exact)
            return Looked(hit, self._marks(hit.fingerprint, request_id, thumbnail), epoch)

    def epoch(self, answered: dict[str, int] | None = None) -> str:
        """What the marks of any image depend on: this replica's life and the last scenes
        event applied. The Ingress keeps answers for resent bytes only while it holds;
        ``answered``: its hot answers since it last asked, by match (counted as hits)."""
        if answered and self._library is not None:
            self._library.count_resent(answered)
        return f"{self._instance}:{self._scenes.last_seq if self._scenes is not None else 0}"

    def lookup(
        self,
        key: StoreKey,
        max_level: int,
        request_id: str | None = None,
        thumbnail: bytes | None = None,
    ) -> Looked:
        """The stored analysis for ``key`` produced at ``max_level`` or better (``hit`` None
        on a miss), and the image's list entries and review; ``request_id`` and
        ``thumbnail`` are kept for the request's decision."""
        hit = None
        epoch = self.epoch()
        if self._library is not None:
            with stage("cache_lookup", {"memeserve.cache.kind": "fingerprint"}):
                hit = _observed("fingerprint", self._library.lookup(key, max_level))
        if thumbnail is not None:
            self._thumbnails[key.fingerprint.exact] = thumbnail
            self._thumbnails.move_to_end(key.fingerprint.exact)
            while len(self._thumbnails) > self._scenes_args.decisions_kept:
                self._thumbnails.popitem(last=False)
        return Looked(hit, self._marks(key.fingerprint, request_id, thumbnail), epoch)

    def _marks(
        self, fingerprint: Fingerprint, request_id: str | None, thumbnail: bytes | None
    ) -> Marks:
        if self._scenes is None:
            return Marks()
        if request_id is not None:
            self._decisions.seen(request_id, fingerprint.to_bytes(), thumbnail)
        return self._scenes.state.marks_for(fingerprint)

    def store(self, key: StoreKey, analysis: dict[str, Any], level: int) -> bool:
        """Store a fresh analysis; returns whether it was stored."""
        if self._library is None:
            return False
        return self._library.store(key, analysis, level)

    def stats(self, answered: dict[str, int] | None = None) -> dict[str, Any]:
        """Entries, hits (exact/near), misses and hit ratio for /v1/status (``answered``:
        as for :meth:`epoch`, so the asking Ingress's own hits are in the figures)."""
        if self._library is None:
            return {"enabled": False}
        if answered:
            self._library.count_resent(answered)
        figures = self._library.stats().as_dict()
        try:
            backend = self._library.backend.stats()
        except LibraryUnavailable as exc:
            backend = {"kind": self._args.backend, "error": str(exc)[:200]}
        return {"enabled": True, "near": self._args.near, **figures, "backend": backend}

    # -- scenes ---------------------------------------------------------------------------

    def scenes_write(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, log and apply one scenes event; ``{"error": …}`` when the body is invalid."""
        scenes = self._require_scenes()
        try:
            event = scenes.write(kind, body)
        except ValueError as exc:
            return {"error": str(exc)[:500]}
        return {"seq": event.seq, "kind": event.kind, "at": event.at}

    def terms_snapshot(self, version: int) -> tuple[int, list[tuple[str, str, str]]] | None:
        """``(version, [(term, list, action)])`` when the term lists changed after
        ``version``, else None (the Ingress refetches only on a change)."""
        if self._scenes is None:
            return None
        state = self._scenes.state
        if state.terms_version == version:
            return None
        return state.terms_version, state.term_entries()

    def scenes_read(self, what: str, limit: int = 100, seq: int | None = None) -> Any:
        """Read-only views: ``lists``, ``terms``, ``images``, ``audit`` (newest first, below
        ``seq``), ``reviews`` (the latest review per image, oldest first, above ``seq``)."""
        state = self._require_scenes().state
        if what == "lists":
            return state.list_stats()
        if what == "terms":
            return state.term_lists()
        if what == "images":
            return state.image_lists()
        if what == "audit":
            return state.audit(limit=limit, before_seq=seq)
        if what == "reviews":
            after = seq or 0
            return [row for row in state.reviews() if row["seq"] > after][:limit]
        raise ValueError(f"unknown scenes view {what!r}")

    def record_decisions(self, decisions: list[tuple[str, dict[str, Any], bytes | None]]) -> int:
        """What the Ingress's policy decided, ``(request_id, summary, seen)`` in order (for
        /v1/decisions); ``seen``: the image's fingerprint when no lookup here saw the
        request (the Ingress answered it from its hot copy). Returns how many were kept."""
        kept = 0
        for request_id, summary, seen in decisions:
            if seen is not None:
                fingerprint = Fingerprint.from_bytes(seen)
                self._decisions.seen(request_id, seen, self._thumbnails.get(fingerprint.exact))
            kept += bool(self._decisions.record(request_id, summary))
        return kept

    def decisions(self, limit: int, actions: list[str] | None = None) -> list[dict[str, Any]]:
        """Recent decisions, newest first (default: those not at their policy's mildest)."""
        wanted = frozenset(actions) if actions else None
        return [_decision_view(d) for d in self._decisions.recent(limit, wanted)]

    def review(
        self,
        *,
        labels: dict[str, Any],
        reviewer: str,
        key: str | None,
        note: str | None = None,
        request_id: str | None = None,
        fingerprint: bytes | None = None,
        thumbnail: bytes | None = None,
    ) -> dict[str, Any]:
        """Record a reviewer's labels for a decided request's image, or for an image.

        ``labels`` None-valued fields are taken from the decision (an accept). Answers
        ``{"review": …}``, or ``{"error": …, "status": 404|422}``.
        """
        scenes = self._require_scenes()
        before: dict[str, Any] | None = None
        if request_id is not None:
            decision = self._decisions.get(request_id)
            if decision is None or decision.summary is None:
                return {"status": 404, "error": f"no decision kept for request {request_id!r}"}
            before = labels_of(decision.summary)
            fingerprint, thumbnail = decision.fingerprint, decision.thumbnail
        assert fingerprint is not None, "a review needs a request_id or an image"
        if before is None:
            current = scenes.state.marks_for(Fingerprint.from_bytes(fingerprint)).review
            before = dict(current.labels) if current is not None else None
        merged = {name: labels.get(name) for name in LABEL_FIELDS}
        if before is not None:
            merged = {name: before[name] if v is None else v for name, v in merged.items()}
        body = {
            "review_id": uuid.uuid4().hex,
            "fingerprint": encode_b64(fingerprint),
            "request_id": request_id,
            "labels": merged,
            "before": before,
            "reviewer": reviewer,
            "key": key,
            "note": note,
            "thumbnail": encode_b64(thumbnail) if thumbnail else None,
        }
        try:
            event = scenes.write("review", body)
        except ValueError as exc:
            return {"status": 422, "error": str(exc)[:500]}
        review = {
            "review_id": body["review_id"],
            "request_id": request_id,
            "at": event.at,
            "reviewer": reviewer,
            "key": key,
            "before": before,
            "after": merged,
            "note": note,
        }
        if request_id is not None:
            self._decisions.reviewed(request_id, review)
        return {"review": review}

    def _require_scenes(self) -> ScenesStore:
        if self._scenes is None:
            raise RuntimeError("scenes are disabled (args.scenes.enabled: false)")
        return self._scenes

    async def __del__(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        if self._scenes_task is not None:
            self._scenes_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scenes_task
        if self._library is not None:
            self._library.backend.close()
        if self._scenes is not None:
            self._scenes.log.close()


def _decision_view(decision: Decision) -> dict[str, Any]:
    """A kept decision as /v1/decisions shows it (thumbnail as a data URL)."""
    assert decision.summary is not None
    thumbnail = None
    if decision.thumbnail:
        thumbnail = "data:image/jpeg;base64," + base64.b64encode(decision.thumbnail).decode()
    summary = {k: v for k, v in decision.summary.items() if k != "mildest_action"}
    return {
        "request_id": decision.request_id,
        "at": decision.at,
        **summary,
        "thumbnail": thumbnail,
        "review": decision.review,
    }
