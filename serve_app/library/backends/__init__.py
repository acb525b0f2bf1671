"""Persistence backends for the fingerprint library (framework-free, no Ray), one file each.

The library keeps every analysed meme (its exact pixel key, perceptual fingerprint and
analysis) so that repeats are answered without the GPU. A backend stores
:class:`LibraryRecord` objects keyed by ``entry_id`` and gives each write a *sequence
number* that is strictly increasing across all writers sharing the same store (one SQLite
file, or one redis server and prefix). Readers keep a cursor and call
:meth:`LibraryBackend.load_since` to load the whole library at start-up (cursor 0) and,
by polling, to pick up what other processes wrote since.

Three backends:

* :class:`MemoryBackend` — a dict in this process; for backend ``"memory"`` and tests.
* :class:`SqliteBackend` — an embedded file in WAL mode; survives restarts and is safe
  for several processes on one host.
* :class:`RedisBackend` — a redis server shared by several hosts, with an optional
  per-record time-to-live.

All three are safe to call from several threads. Errors that mean "the store cannot be
reached or used right now" are raised as :class:`LibraryUnavailable`, so that callers can
degrade to running without the library.

Deletions are not reported by :meth:`LibraryBackend.load_since`: a poller learns only of
new or replaced records. A replaced record (same ``entry_id`` put again) is delivered
again with its new sequence number, so callers must upsert by ``entry_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from serve_app.library.backends.base import (
    MAX_ENTRY_ID_CHARS,
    SOURCES,
    LibraryBackend,
    LibraryRecord,
    LibrarySchemaError,
    LibraryUnavailable,
    record_from_fields,
    record_to_fields,
    validate_record,
)
from serve_app.library.backends.memory import MemoryBackend
from serve_app.library.backends.plumbing import redact_url
from serve_app.library.backends.redis import RedisBackend
from serve_app.library.backends.sqlite import SQLITE_SCHEMA_VERSION, SqliteBackend

__all__ = [
    "MAX_ENTRY_ID_CHARS",
    "SOURCES",
    "SQLITE_SCHEMA_VERSION",
    "LibraryBackend",
    "LibraryRecord",
    "LibrarySchemaError",
    "LibraryUnavailable",
    "MemoryBackend",
    "RedisBackend",
    "SqliteBackend",
    "open_backend",
    "record_from_fields",
    "record_to_fields",
    "redact_url",
    "validate_record",
]


def open_backend(
    kind: Literal["memory", "sqlite", "redis"],
    *,
    sqlite_path: Path | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "memeserve:library:",
    ttl_s: float | None = None,
) -> LibraryBackend:
    """Open the library backend ``kind``.

    ``ttl_s`` is enforced by redis itself (key expiry); the memory and SQLite backends
    keep records until :meth:`LibraryBackend.purge_older_than` is called.
    """
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError("ttl_s must be > 0 or None")
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        if sqlite_path is None:
            raise ValueError("the sqlite library backend needs sqlite_path")
        return SqliteBackend(sqlite_path)
    if kind == "redis":
        if not redis_url:
            raise ValueError("the redis library backend needs redis_url")
        return RedisBackend(redis_url, redis_prefix, ttl_s)
    raise ValueError(f"unknown library backend {kind!r} (memory, sqlite or redis)")
