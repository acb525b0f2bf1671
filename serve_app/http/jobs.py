"""Async jobs at the Ingress: submit, look up, cancel; the workers; signed callbacks.

A job is a queue over our own backends (:mod:`serve_app.jobs.store`), not Ray Serve's
async inference: its items go through the same :class:`IngressService.analyze` as a
request (admission control, deadlines, policies, lists, the library), so a job can
never starve or bypass the online path. Every Ingress replica runs ``jobs.workers``
workers that claim items with a lease; a replica that dies leaves its items to be
claimed again once the lease passes, and a restarted app resumes whatever was left.
When a job finishes, its result is POSTed to ``callback_url`` (hosts on the allowlist
only), signed with the submitting key's secret, retried with doubling backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from serve_app.config.models import AppArgs, JobsArgs
from serve_app.errors import (
    NotFound,
    SchemaError,
    ServiceUnavailable,
    TooManyRequests,
)
from serve_app.http.body import decode_base64_image
from serve_app.http.errors import error_parts
from serve_app.http.wire import JobRequest
from serve_app.jobs.callbacks import (
    backoff_s,
    check_callback_url,
    deliver,
    normalise_allowed_hosts,
)
from serve_app.jobs.store import Claimed, JobStore, NewItem, NewJob, open_job_store

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
"""The owner name of jobs submitted to a service without API keys."""


def callback_secrets(args: JobsArgs, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Key name → callback secret, from the variable named by ``jobs.callback_secrets_env``."""
    environ = os.environ if environ is None else environ
    if not args.callback_secrets_env:
        return {}
    secrets: dict[str, str] = {}
    for pair in environ.get(args.callback_secrets_env, "").split(","):
        name, sep, secret = pair.strip().partition("=")
        if sep and name.strip() and secret.strip():
            secrets[name.strip()] = secret.strip()
    return secrets


def open_store(args: AppArgs) -> JobStore:
    """The jobs store ``args`` configure (the library's backend unless ``jobs.backend``)."""
    jobs = args.jobs
    return open_job_store(
        jobs.backend or args.cache.backend,
        sqlite_path=jobs.sqlite_path,
        redis_url=args.cache.redis_url,
        redis_prefix=jobs.redis_prefix,
    )


class Jobs:
    """One Ingress replica's side of the jobs: the routes' logic, workers, callbacks."""

    def __init__(self, args: AppArgs, service: Any, store: JobStore | None = None) -> None:
        self.args = args
        self.config = args.jobs
        self._service = service
        self._store = store
        self._secrets = callback_secrets(self.config)
        # A malformed allowlist entry stops the replica with a clear error, not every callback.
        normalise_allowed_hosts(self.config.callback_hosts)
        self._worker = f"ingress-{uuid.uuid4().hex[:12]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._inside = 0

    @property
    def store(self) -> JobStore:
        self._require_enabled()
        if self._store is None:
            self._store = open_store(self.args)
        return self._store

    def _require_enabled(self) -> None:
        if self._store is None and not self.config.enabled:
            raise NotFound("async jobs are disabled on this service (args.jobs.enabled)")

    # -- the routes -----------------------------------------------------------------------

    async def submit(self, request: JobRequest, owner: str | None) -> dict[str, Any]:
        """Queue a job (422 for a bad body, 429 past the open-jobs limit); its view.

        The store is called in a worker thread (SQLite or Redis: a 1,000-item insert must
        not hold the replica's event loop), as everywhere in this class.
        """
        self._require_enabled()  # 404 before any check of the body, as before
        limit = self.config.max_items
        if len(request.items) > limit:
            raise SchemaError(f"a job holds at most {limit} items, got {len(request.items)}")
        ids = [item.id for item in request.items]
        if len(set(ids)) != len(ids):
            raise SchemaError("item ids must be unique within a job")
        for item in request.items:  # an unknown policy refuses the job before any work
            self._service.scenes.policy(item.policy or request.policy)
        name = owner or ANONYMOUS
        callback = None
        if request.callback_url is not None:
            try:
                callback = check_callback_url(request.callback_url, self.config.callback_hosts)
            except ValueError as exc:
                raise SchemaError(f"callback_url refused: {exc}") from None
            if name not in self._secrets:
                raise SchemaError(
                    f"no callback secret is configured for key {name!r} "
                    f"(jobs.callback_secrets_env), so callbacks cannot be signed"
                )
        job_id = await asyncio.to_thread(self._create, name, request, callback)
        self.start()
        return await self.view(job_id, owner, offset=0, limit=0)

    def _create(self, name: str, request: JobRequest, callback: str | None) -> str:
        """The open-jobs check and the insert (worker thread)."""
        store = self.store
        if store.open_jobs(name) >= self.config.max_open_jobs:
            raise TooManyRequests(
                f"key {name!r} has {self.config.max_open_jobs} unfinished jobs; retry when "
                "one has finished",
                retry_after_s=5,
            )
        return store.create(
            NewJob(
                owner=name,
                policy=request.policy,
                callback_url=callback,
                total=len(request.items),
            ),
            [
                # The image stays base64 text until a worker decodes it, so a bad one is
                # that item's 400, as in a batch, not the whole job's.
                NewItem(
                    item_id=item.id,
                    image=item.image_base64.encode("ascii", "replace"),
                    text=item.text,
                    policy=item.policy,
                )
                for item in request.items
            ],
            time.time(),
        )

    async def view(
        self, job_id: str, owner: str | None, *, offset: int, limit: int, admin: bool = False
    ) -> dict[str, Any]:
        """A job's state, progress, callback and a page of results (404 for another key's)."""
        return await asyncio.to_thread(self._view, job_id, owner, offset, limit, admin)

    def _view(
        self, job_id: str, owner: str | None, offset: int, limit: int, admin: bool
    ) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job is None or (not admin and job.owner != (owner or ANONYMOUS)):
            raise NotFound(f"no job {job_id!r}")
        view = job.as_dict()
        results = self.store.results(job_id, offset, limit) if limit else []
        return {**view, "location": f"/v1/jobs/{job_id}", "offset": offset, "results": results}

    async def cancel(self, job_id: str, owner: str | None, admin: bool = False) -> dict[str, Any]:
        """Cancel a job's items not yet analysed."""
        await self.view(job_id, owner, offset=0, limit=0, admin=admin)  # 404 for another key's
        await asyncio.to_thread(self.store.cancel, job_id, time.time())
        return await self.view(job_id, owner, offset=0, limit=0, admin=admin)

    # -- workers --------------------------------------------------------------------------

    def start(self) -> None:
        """Start this replica's workers and callback sender, once (from its event loop)."""
        if self._tasks or not self.config.enabled:
            return
        loop = asyncio.get_running_loop()
        if self.config.workers > 0:
            self._tasks.append(loop.create_task(self._work_forever()))
        self._tasks.append(loop.create_task(self._callbacks_forever()))

    async def stop(self) -> None:
        """Stop the workers (replica shutdown); leased items return when their lease ends."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _work_forever(self) -> None:
        running: set[asyncio.Task[None]] = set()
        while True:
            free = self.config.workers - len(running)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(
                        self.store.claim, self._worker, free, self.args.jobs_lease_s, time.time()
                    )
                except Exception as exc:  # the backend down: try again later
                    logger.warning("job claim failed: %s", str(exc)[:200])
            for item in claimed:
                task = asyncio.get_running_loop().create_task(self._run(item))
                running.add(task)
                task.add_done_callback(running.discard)
            if not claimed:
                await asyncio.sleep(self.config.poll_s)
            elif len(running) >= self.config.workers:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    async def _run(self, item: Claimed) -> None:
        request_id = f"{item.job_id}:{item.index}"
        started = time.perf_counter()
        outcome: dict[str, Any]
        try:
            data = _decode(item.image)
            result = await self._service.analyze(
                data, item.text, request_id, started, self.args.request_timeout_s, item.policy
            )
            outcome = {"status": 200, "result": result}
        except (ServiceUnavailable, TooManyRequests) as exc:
            # The service is shedding load: the item waits and goes through admission again.
            wait = exc.retry_after_s or 1.0
            await asyncio.to_thread(
                self.store.release, item.job_id, item.index, self._worker, time.time() + wait
            )
            return
        except Exception as exc:
            status, body, _ = error_parts(exc, request_id)
            outcome = {"status": status, "error": body["error"]}
        done = await asyncio.to_thread(
            self.store.complete, item.job_id, item.index, self._worker, outcome, time.time()
        )
        if not done:
            logger.warning("job item %s finished after its lease passed; not recorded", request_id)

    # -- callbacks ------------------------------------------------------------------------

    async def _callbacks_forever(self) -> None:
        while True:
            try:
                due = await asyncio.to_thread(self.store.callbacks_due, time.time(), 8)
                for job in due:
                    await self._deliver(job.id)
            except Exception:
                logger.exception("job callbacks failed")
            await asyncio.sleep(self.config.poll_s)

    async def _deliver(self, job_id: str) -> None:
        store = self.store
        claimed = await asyncio.to_thread(
            store.claim_callback,
            job_id,
            self._worker,
            self.config.callback_timeout_s * 2,
            time.time(),
        )
        job = await asyncio.to_thread(store.get, job_id) if claimed else None
        if job is None or job.callback.url is None:
            return
        secret = self._secrets.get(job.owner or ANONYMOUS)
        results = await asyncio.to_thread(store.results, job_id, 0, job.total)
        body = json.dumps(
            {"job": job.as_dict(), "results": results}, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        if secret is None:
            error: str | None = f"no callback secret for key {job.owner!r} any more"
            next_at: float | None = None
        else:
            error = await asyncio.to_thread(
                deliver, job.callback.url, body, secret, self.config.callback_timeout_s
            )
            attempts = job.callback.attempts + 1
            next_at = None
            if error is not None and attempts < self.config.callback_attempts:
                next_at = time.time() + backoff_s(attempts, self.config.callback_backoff_s, 3600)
        await asyncio.to_thread(
            store.record_callback, job_id, error is None, error, next_at, time.time()
        )
        if error is not None:
            logger.warning("job %s callback failed: %s", job_id, error)


def _decode(image: bytes) -> bytes:
    """An item's stored image (its base64 text) as bytes; 400 when it is not base64."""
    return decode_base64_image(image.decode("ascii", "replace"))
