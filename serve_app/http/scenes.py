"""The Ingress's side of the scenes: policies, its copy of the term lists, the decision.

One :class:`Scenes` per Ingress replica. Policies come from the Ingress's ``user_config``
(live through ``serve deploy``); the term lists live in the FingerprintStore's scenes log,
and this replica keeps an Aho–Corasick matcher over them, refetched only when their
version changes (polled every ``scenes.sync_period_s``, and at once after this replica
wrote). Every answer — fresh, cached, or answered without the engine — passes through
:meth:`Scenes.judge`, which applies :func:`serve_app.scenes.decide.decide` and records the
decision with the FingerprintStore for the moderators' page — gathered in a
:class:`DecisionOutbox` and sent every ``scenes.decisions_flush_s`` in one call, not one
call per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from serve_app.config.models import DEFAULT_POLICY, IngressUserConfig, PolicyArgs, ScenesArgs
from serve_app.errors import NotFound, SchemaError
from serve_app.http.wire import ReviewLabels, ReviewRequest
from serve_app.pipeline.prepare import Refused
from serve_app.scenes.decide import answer_without_engine, decide, labels_of
from serve_app.scenes.events import encode_b64
from serve_app.scenes.state import Marks
from serve_app.understanding.normalize import normalize
from serve_app.understanding.terms import TermEntry, TermMatcher

logger = logging.getLogger(__name__)

OUTBOX_FULL = 512
"""Decisions gathered before the outbox sends at once rather than at its next period."""
OUTBOX_HELD = 8192
"""Decisions held while the store does not take them; older ones are dropped (counted)."""
FINAL_FLUSH_S = 5.0
OUTBOX_BACKOFF_MAX_S = 5.0
"""While the store refuses batches, the outbox retries after twice the last wait, up to this."""
OUTBOX_WARN_EVERY_S = 30.0
"""While the store refuses batches, one warning per this many seconds (the rest counted)."""

Decision = tuple[str, dict[str, Any], bytes | None]
"""``(request_id, summary, seen)`` as :meth:`FingerprintStore.record_decisions` takes them."""


class DecisionOutbox:
    """The decisions of one Ingress replica on their way to the FingerprintStore.

    :meth:`add` never waits. A task on the replica's loop sends what has gathered every
    ``period_s`` (at once when :data:`OUTBOX_FULL` have gathered) in one
    ``record_decisions`` call; :meth:`flush` sends now (reads that must see this
    replica's decisions call it first). When the store does not take a batch, it is
    kept for the next try; beyond :data:`OUTBOX_HELD` the oldest are dropped and counted
    (the decisions table is for moderators, never on an answer's path). While the store
    refuses, the tries back off (doubling to :data:`OUTBOX_BACKOFF_MAX_S`, a full outbox
    no longer sends at once) and the warning is logged once per
    :data:`OUTBOX_WARN_EVERY_S`; the first batch taken again is logged once.
    """

    def __init__(self, store: Any, period_s: float) -> None:
        self._store = store
        self.period_s = period_s
        self._pending: list[Decision] = []
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._full: asyncio.Event | None = None
        self.sent = 0
        self.batches = 0
        self.dropped = 0
        self.failed_tries = 0
        self._warned_at: float | None = None

    def add(self, decision: Decision) -> None:
        """Queue one decision (on the replica's loop); starts the sending task once."""
        self._pending.append(decision)
        if self._task is None:
            self._full = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) >= OUTBOX_FULL and self._full is not None:
            self._full.set()

    async def _run(self) -> None:
        assert self._full is not None
        wait_s = self.period_s
        while True:
            if self.failed_tries:
                await asyncio.sleep(wait_s)  # backing off: a full outbox does not hurry it
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.period_s)
            self._full.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # kept for the next try (see flush)
                self.failed_tries += 1
                wait_s = min(OUTBOX_BACKOFF_MAX_S, max(wait_s, self.period_s) * 2)
                self._warn(exc)
            else:
                if self.failed_tries:
                    logger.info("decisions recorded again after %d failed tries", self.failed_tries)
                self.failed_tries, wait_s, self._warned_at = 0, self.period_s, None

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= OUTBOX_WARN_EVERY_S:
            self._warned_at = now
            logger.warning(
                "%d decisions not recorded yet (%d failed tries, retrying within %.0f s): %s",
                len(self._pending),
                self.failed_tries,
                OUTBOX_BACKOFF_MAX_S,
                str(exc)[:200],
            )

    async def flush(self) -> None:
        """Send what has gathered, in order; raises (keeping the batch) if the store fails."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self._store.record_decisions.remote(batch)
            except BaseException:
                self._pending[:0] = batch
                excess = len(self._pending) - OUTBOX_HELD
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped += excess
                raise
            self.sent += len(batch)
            self.batches += 1

    async def stop(self) -> None:
        """Stop the task and send what is left (replica shutdown; best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.wait_for(self.flush(), FINAL_FLUSH_S)
        except Exception as exc:
            logger.warning("%d decisions lost at shutdown: %s", len(self._pending), exc)

    def figures(self) -> dict[str, int]:
        """For /v1/status: decisions waiting, sent, in how many calls, dropped."""
        return {
            "pending": len(self._pending),
            "sent": self.sent,
            "batches": self.batches,
            "dropped": self.dropped,
        }


class Scenes:
    """Policies and term lists of one Ingress replica."""

    def __init__(
        self,
        args: ScenesArgs,
        store: Any,
        preprocessor: Any,
        on_write: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_write`` runs after every list or review write made through this replica
        (the Ingress empties its hot answers: its next request sees the write)."""
        self.args = args
        self._store = store
        self._preprocessor = preprocessor
        self._on_write = on_write
        self.config = IngressUserConfig()
        self._matcher = TermMatcher(())
        self._terms_version = 0
        self._follow_task: asyncio.Task[None] | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self.outbox = DecisionOutbox(store, args.decisions_flush_s)

    # -- policies -------------------------------------------------------------------------

    def reconfigure(self, config: IngressUserConfig) -> None:
        """Apply a new ``user_config`` (policies) to the next requests."""
        self.config = config
        logger.info("scene policies applied: %s", ", ".join(sorted(config.policies)))

    def policy(self, name: str | None) -> tuple[str, PolicyArgs]:
        """The policy a request picked (``default`` when it picked none); 422 if unknown."""
        self.start()
        chosen = name or DEFAULT_POLICY
        policies = self.config.policies if self.args.enabled else {}
        found = policies.get(chosen)
        if found is None:
            if chosen == DEFAULT_POLICY:
                return chosen, PolicyArgs()
            known = sorted(policies) or [DEFAULT_POLICY]
            raise SchemaError(f"unknown policy {chosen!r}; known policies: {', '.join(known)}")
        return chosen, found

    def describe(self) -> dict[str, Any]:
        """The policies as /v1/policies shows them."""
        return {
            "policies": {
                name: policy.model_dump(mode="json")
                for name, policy in self.config.policies.items()
            },
            "term_lists_version": self._terms_version,
            "terms": len(self._matcher),
        }

    # -- term lists -----------------------------------------------------------------------

    def start(self) -> None:
        """Start following the term lists, once (called from the replica's event loop)."""
        if self.args.enabled and self._follow_task is None:
            self._follow_task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh_terms()
            except Exception as exc:  # the store restarting: keep the copy we have
                logger.warning("term lists not refreshed: %s", str(exc)[:200])
            await asyncio.sleep(self.args.sync_period_s)

    async def refresh_terms(self) -> None:
        """Refetch the term lists if they changed since this replica's copy."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            snapshot = await self._store.terms_snapshot.remote(self._terms_version)
            if snapshot is None:
                return
            version, entries = snapshot
            # Building the automaton over 10^5 terms takes a second or two: off the loop.
            # A term that normalises to nothing can never match (writes refuse it; an
            # older log may hold one): skipped rather than failing every refresh.
            self._matcher = await asyncio.to_thread(
                TermMatcher,
                (TermEntry(t, name, action) for t, name, action in entries if normalize(t)),
            )
            self._terms_version = version
            logger.info("term lists at version %d: %d terms", version, len(entries))

    async def stop(self) -> None:
        """Stop following, and send the decisions gathered (replica shutdown)."""
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        await self.outbox.stop()

    # -- the decision ---------------------------------------------------------------------

    def without_engine(
        self,
        policy: tuple[str, PolicyArgs],
        marks: Marks,
        *,
        request_id: str,
        image: dict[str, Any],
        level: int,
        preprocess_ms: float,
    ) -> dict[str, Any] | None:
        """An answer for a reviewed or block-listed image, with no engine call; or None."""
        if marks.empty:
            return None
        return answer_without_engine(
            marks,
            policy[1],
            request_id=request_id,
            image=image,
            level=level,
            preprocess_ms=preprocess_ms,
        )

    def judge(
        self,
        result: dict[str, Any],
        policy: tuple[str, PolicyArgs],
        text: str | None,
        marks: Marks,
        request_id: str,
        *,
        seen: bytes | None = None,
    ) -> dict[str, Any]:
        """``result`` decided by ``policy``, and the decision recorded for reviewers
        (``seen``: the image's fingerprint, when the store did not see this request)."""
        name, args = policy
        terms = self._matcher.find(
            {"ocr": result.get("evidence", {}).get("ocr_text", []), "context": [text or ""]}
        )
        judged = decide(result, name, args, term_hits=terms, marks=marks)
        if self.args.enabled:
            self._record(judged, args, text, request_id, seen)
        return judged

    def _record(
        self,
        judged: dict[str, Any],
        policy: PolicyArgs,
        text: str | None,
        request_id: str,
        seen: bytes | None,
    ) -> None:
        risk = judged["risk"]
        summary = {
            "policy": risk["policy"],
            "action": risk["action"],
            "mildest_action": policy.actions[0],
            "risk_level": risk["level"],
            "decided_by": risk["decided_by"],
            **labels_of(judged),
            "confidence": judged["confidence"],
            "explanation": judged["explanation"],
            "ocr_text": judged["evidence"]["ocr_text"],
            "text": text,
        }
        # The answer does not wait for the moderators' table.
        self.outbox.add((request_id, summary, seen))

    # -- the admin routes -----------------------------------------------------------------

    def _require(self) -> None:
        if not self.args.enabled:
            raise NotFound("scenes are disabled on this service (args.scenes.enabled: false)")

    async def write(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Log one scenes event through the FingerprintStore (422 when the body is invalid)."""
        self._require()
        try:
            answer: dict[str, Any] = await self._store.scenes_write.remote(kind, body)
        finally:
            self._on_write()
        if "error" in answer:
            raise SchemaError(answer["error"])
        if kind.startswith("terms."):
            try:
                await self.refresh_terms()  # this replica reads its own write at once
            except Exception as exc:  # written all the same: the follower retries
                logger.warning("term lists not refreshed after a write: %s", str(exc)[:200])
        return answer

    async def add_image(
        self, name: str, data: bytes, action: str, label: str | None, who: str
    ) -> dict[str, Any]:
        """Put an image (and so its near copies) on list ``name``; its entry id is returned."""
        self._require()
        found = await self._preprocessor.fingerprint.remote(data)
        if isinstance(found, Refused):
            raise found.error
        entry_id = hashlib.blake2b(found.fingerprint, digest_size=8).hexdigest()
        body = {
            "list": name,
            "action": action,
            "entry_id": entry_id,
            "fingerprint": encode_b64(found.fingerprint),
            "label": label,
            "by": who,
            "thumbnail": encode_b64(found.thumbnail) if found.thumbnail else None,
        }
        return {"entry_id": entry_id, **await self.write("images.add", body)}

    async def review(self, request: ReviewRequest, who: str, key: str | None) -> dict[str, Any]:
        """A reviewer's correction of a kept decision (by its request id)."""
        return await self._review(
            request.labels,
            request.reviewer or who,
            key,
            request.note,
            request_id=request.request_id,
        )

    async def review_image(
        self,
        data: bytes,
        labels: ReviewLabels,
        reviewer: str,
        key: str | None,
        note: str | None,
    ) -> dict[str, Any]:
        """A reviewer's labels for an uploaded image (and its near copies)."""
        self._require()
        found = await self._preprocessor.fingerprint.remote(data)
        if isinstance(found, Refused):
            raise found.error
        return await self._review(
            labels, reviewer, key, note, fingerprint=found.fingerprint, thumbnail=found.thumbnail
        )

    async def accept(self, request_id: str, reviewer: str, key: str | None) -> dict[str, Any]:
        """The decision's labels confirmed by a reviewer."""
        return await self._review(ReviewLabels(), reviewer, key, None, request_id=request_id)

    async def _review(
        self,
        labels: ReviewLabels,
        reviewer: str,
        key: str | None,
        note: str | None,
        **target: Any,
    ) -> dict[str, Any]:
        self._require()
        await self.outbox.flush()  # a decision this replica made is there to review
        try:
            review = {"labels": labels.model_dump(), "reviewer": reviewer, "key": key, "note": note}
            answer: dict[str, Any] = await self._store.review.remote(**review, **target)
            if answer.get("status") == 404 and target.get("request_id") is not None:
                # Decided by another Ingress replica: its outbox sends within its period.
                await asyncio.sleep(2 * self.outbox.period_s)
                answer = await self._store.review.remote(**review, **target)
        finally:
            self._on_write()
        if answer.get("status") == 404:
            raise NotFound(answer["error"])
        if "error" in answer:
            raise SchemaError(answer["error"])
        return answer

    async def read(self, what: str, limit: int = 100, seq: int | None = None) -> Any:
        """A read-only view of the scenes (lists, terms, images, audit, reviews)."""
        self._require()
        return await self._store.scenes_read.remote(what, limit, seq)

    async def decisions(self, limit: int, actions: list[str] | None) -> list[dict[str, Any]]:
        """Recent decisions for the moderators, newest first."""
        self._require()
        await self.outbox.flush()
        found: list[dict[str, Any]] = await self._store.decisions.remote(limit, actions)
        return found
