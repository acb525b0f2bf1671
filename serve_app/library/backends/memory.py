"""The memory backend: records in a dict of this process (backend ``memory``, tests)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from serve_app.library.backends.base import (
    LibraryBackend,
    LibraryRecord,
    LibraryUnavailable,
    check_cursor,
    record_from_fields,
    record_to_fields,
)

logger = logging.getLogger(__name__)


class MemoryBackend(LibraryBackend):
    """Records in a dict of this process (lost on exit); guarded by a lock.

    Records are stored encoded (as the persistent backends do), so callers mutating an
    ``analysis`` dict after ``put`` or after reading it never change what is stored.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # entry_id -> (sequence, encoded fields); insertion order == sequence order.
        self._entries: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._sequence = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LibraryUnavailable("memory library backend is closed")

    def put(self, record: LibraryRecord) -> int:
        encoded = record_to_fields(record)
        with self._lock:
            self._check_open()
            self._sequence += 1
            self._entries.pop(record.entry_id, None)
            self._entries[record.entry_id] = (self._sequence, encoded)
            return self._sequence

    def delete(self, entry_ids: Iterable[str]) -> int:
        with self._lock:
            self._check_open()
            return sum(self._entries.pop(entry_id, None) is not None for entry_id in entry_ids)

    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        check_cursor(cursor, limit)
        with self._lock:
            self._check_open()
            newer: list[tuple[int, dict[str, Any]]] = []
            for sequence, encoded in reversed(self._entries.values()):
                if sequence <= cursor:
                    break
                newer.append((sequence, encoded))
        page = newer[::-1][:limit]
        if not page:
            return [], cursor
        return [record_from_fields(encoded) for _, encoded in page], page[-1][0]

    def get(self, entry_id: str) -> LibraryRecord | None:
        with self._lock:
            self._check_open()
            found = self._entries.get(entry_id)
        return None if found is None else record_from_fields(found[1])

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._entries)

    def purge_older_than(self, stored_before: float) -> int:
        with self._lock:
            self._check_open()
            old = [
                key for key, (_, enc) in self._entries.items() if enc["stored_at"] < stored_before
            ]
            for key in old:
                del self._entries[key]
            return len(old)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            size = sum(
                len(enc["fingerprint"]) + len(enc["analysis"].encode("utf-8"))
                for _, enc in self._entries.values()
            )
            return {
                "kind": self.kind,
                "location": "process memory",
                "count": len(self._entries),
                "sequence": self._sequence,
                "approx_bytes": size,
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._entries.clear()
