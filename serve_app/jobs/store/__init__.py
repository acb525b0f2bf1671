"""The durable store of asynchronous jobs (framework-free, no Ray), one backend per file.

A web tier submits many memes as one job (:meth:`JobStore.create`) and gets its id. Workers
on every replica :meth:`~JobStore.claim` items with a *lease*, analyse them and
:meth:`~JobStore.complete` them; an item whose lease runs out (its worker died, the app
restarted) is claimed again, and a worker whose lease ran out is refused when it completes.
When a job's last item completes, the job is ``done`` and its callback (if any) becomes
due; replicas take turns delivering it with :meth:`~JobStore.claim_callback` and record
each attempt with :meth:`~JobStore.record_callback`.

Backends, chosen like the fingerprint library's (:func:`open_job_store`):

* :class:`MemoryJobStore` — dicts in this process; for ``memory`` and tests.
* :class:`SqliteJobStore` — two tables in an embedded file (WAL); survives restarts and is
  shared safely by processes on one host (claims are ``BEGIN IMMEDIATE`` transactions).
* :class:`RedisJobStore` — a redis server shared by several hosts (claims are Lua scripts).

Errors meaning "the store cannot be reached or used now" raise the library's
:class:`~serve_app.library.backends.LibraryUnavailable`; bad arguments raise ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from serve_app.jobs.store.base import (
    CallbackState,
    CallbackView,
    Claimed,
    JobState,
    JobStore,
    JobView,
    NewItem,
    NewJob,
)
from serve_app.jobs.store.memory import MemoryJobStore
from serve_app.jobs.store.redis import RedisJobStore
from serve_app.jobs.store.sqlite import SqliteJobStore

__all__ = [
    "CallbackState",
    "CallbackView",
    "Claimed",
    "JobState",
    "JobStore",
    "JobView",
    "MemoryJobStore",
    "NewItem",
    "NewJob",
    "RedisJobStore",
    "SqliteJobStore",
    "open_job_store",
]


def open_job_store(
    kind: Literal["memory", "sqlite", "redis"],
    *,
    sqlite_path: Path | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "memeserve:",
) -> JobStore:
    """Open the job store ``kind`` (``sqlite_path`` / ``redis_url`` as it needs).

    The redis store keeps its keys under ``redis_prefix + "jobs:"``, so it may share a
    prefix with the fingerprint library and the scenes log; the SQLite store may share a
    file with them too (tables ``jobs``, ``job_items``, ``jobs_schema``).
    """
    if kind == "memory":
        return MemoryJobStore()
    if kind == "sqlite":
        if sqlite_path is None:
            raise ValueError("the sqlite job store needs sqlite_path")
        return SqliteJobStore(sqlite_path)
    if kind == "redis":
        if not redis_url:
            raise ValueError("the redis job store needs redis_url")
        return RedisJobStore(redis_url, redis_prefix)
    raise ValueError(f"unknown job store {kind!r} (memory, sqlite or redis)")
