"""The memory event log: events in a list of this process (log ``memory``, tests)."""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Any

from serve_app.library.backends import LibraryUnavailable
from serve_app.scenes.log.base import PAGE, Event, EventLog, check_since, decode_event, encode_body

logger = logging.getLogger(__name__)


class MemoryEventLog(EventLog):
    """Events in a list of this process (lost on exit); guarded by a lock.

    Bodies are kept encoded, as the persistent logs keep them, so mutating a body after
    ``append`` or after reading it never changes what is stored.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[int, str, str, float]] = []
        self._closed = False

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        encoded = encode_body(kind, body)
        with self._lock:
            if self._closed:
                raise LibraryUnavailable("memory event log is closed")
            seq = len(self._events) + 1
            self._events.append((seq, kind, encoded, float(at)))
            return seq

    def since(self, seq: int, limit: int = PAGE) -> list[Event]:
        check_since(seq, limit)
        with self._lock:
            if self._closed:
                raise LibraryUnavailable("memory event log is closed")
            start = bisect.bisect_right(self._events, seq, key=lambda row: row[0])
            rows = self._events[start : start + limit]
        return [decode_event(*row) for row in rows]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "location": "process memory", "events": len(self._events)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._events.clear()
