"""The scenes event log: append-only, one sequence for every writer, three backends.

Every change to the scenes (term lists, image lists, reviews) is an :class:`Event`
appended to one log; the state is rebuilt by replaying it (:mod:`serve_app.scenes.store`).
Each append gets a sequence number strictly greater than every earlier one on the same
store (one SQLite file, or one redis server and prefix), and events become visible in that
order, so a reader that keeps the last number it saw and polls :meth:`EventLog.since`
never misses one.

Backends, chosen like the fingerprint library's (:func:`open_log`):

* :class:`MemoryEventLog` — a list in this process; for ``memory`` and tests.
* :class:`SqliteEventLog` — a table in an embedded file (WAL); survives restarts and is
  shared safely by processes on one host.
* :class:`RedisEventLog` — a sorted set on a redis server shared by several hosts.

Errors meaning "the log cannot be reached or used now" raise the library's
:class:`~serve_app.library.backends.LibraryUnavailable` so that callers can degrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from serve_app.scenes.log.base import PAGE, Event, EventLog
from serve_app.scenes.log.memory import MemoryEventLog
from serve_app.scenes.log.redis import RedisEventLog
from serve_app.scenes.log.sqlite import SqliteEventLog

__all__ = [
    "PAGE",
    "Event",
    "EventLog",
    "MemoryEventLog",
    "RedisEventLog",
    "SqliteEventLog",
    "open_log",
]


def open_log(
    kind: Literal["memory", "sqlite", "redis"],
    *,
    sqlite_path: Path | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "memeserve:",
) -> EventLog:
    """Open the scenes event log ``kind`` (``sqlite_path`` / ``redis_url`` as it needs).

    The redis log keeps its keys under ``redis_prefix + "scenes:"``, so it may share a
    prefix with the fingerprint library.
    """
    if kind == "memory":
        return MemoryEventLog()
    if kind == "sqlite":
        if sqlite_path is None:
            raise ValueError("the sqlite scenes log needs sqlite_path")
        return SqliteEventLog(sqlite_path)
    if kind == "redis":
        if not redis_url:
            raise ValueError("the redis scenes log needs redis_url")
        return RedisEventLog(redis_url, redis_prefix)
    raise ValueError(f"unknown scenes log {kind!r} (memory, sqlite or redis)")
