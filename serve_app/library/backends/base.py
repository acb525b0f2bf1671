"""The library backend interface and its record: what every backend stores and promises.

See :mod:`serve_app.library.backends` for the backends and their guarantees.
"""

from __future__ import annotations

import json
import logging
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

logger = logging.getLogger(__name__)

MAX_ENTRY_ID_CHARS = 512
SOURCES = ("service", "import")
CHUNK = 500
"""Ids per statement or pipeline when a backend deletes or scans many records."""


class LibraryUnavailable(RuntimeError):
    """The library store cannot be reached or used now; callers run without the library."""


class LibrarySchemaError(RuntimeError):
    """The store was written by a newer (or incompatible) memeserve; refuse to touch it."""


@dataclass(frozen=True)
class LibraryRecord:
    """One stored analysis of one meme image in one scope."""

    entry_id: str
    """Unique key of the stored analysis (built by callers; opaque, at most 512 chars)."""
    exact_key: str
    """Hash of the decoded pixels (hex)."""
    scope: str
    """Opaque: normalised-context digest + model + prompt version."""
    fingerprint: bytes
    """Opaque serialised perceptual fingerprint (a few KB at most)."""
    analysis: dict[str, Any]
    """The JSON-serialisable analysis."""
    level: int
    """Degradation level the analysis was produced at (0 is best)."""
    stored_at: float
    """Wall-clock time it was stored (``time.time()``)."""
    source: str = "service"
    """``"service"`` (analysed here) or ``"import"`` (loaded from an export)."""


# --------------------------------------------------------------------------- codec
# The one place that knows how a record maps to primitive fields. Column and hash-field
# names come from the dataclass itself; ``analysis`` travels as JSON text.

FIELD_TYPES: dict[str, type] = {}
for _name, _hint in typing.get_type_hints(LibraryRecord).items():
    FIELD_TYPES[_name] = str if _name == "analysis" else _hint
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LibraryRecord))
assert set(FIELD_NAMES) == set(FIELD_TYPES)
assert all(kind in (str, bytes, int, float) for kind in FIELD_TYPES.values())


def validate_record(record: LibraryRecord) -> None:
    """Raise ``ValueError`` when ``record`` cannot be stored."""
    if not isinstance(record.entry_id, str) or not record.entry_id:
        raise ValueError("entry_id must be a non-empty str")
    if len(record.entry_id) > MAX_ENTRY_ID_CHARS:
        raise ValueError(f"entry_id longer than {MAX_ENTRY_ID_CHARS} chars")
    if not isinstance(record.fingerprint, bytes | bytearray):
        raise ValueError("fingerprint must be bytes")
    if not isinstance(record.analysis, dict):
        raise ValueError("analysis must be a dict")
    if isinstance(record.level, bool) or not isinstance(record.level, int) or record.level < 0:
        raise ValueError("level must be an int >= 0")
    if record.source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {record.source!r}")


def record_to_fields(record: LibraryRecord) -> dict[str, str | bytes | int | float]:
    """Encode ``record`` as primitive fields (str, bytes, int, float), validating it."""
    validate_record(record)
    out: dict[str, str | bytes | int | float] = {}
    for name in FIELD_NAMES:
        value = getattr(record, name)
        if name == "analysis":
            value = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)
        out[name] = FIELD_TYPES[name](value)
    return out


def record_from_fields(data: Mapping[str, Any]) -> LibraryRecord:
    """Decode fields written by :func:`record_to_fields`.

    Values may be native (SQLite) or ``bytes`` (redis); each is coerced to its field's type.
    """
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = data[name]
        kind = FIELD_TYPES[name]
        if kind is bytes:
            value: Any = bytes(raw)
        elif kind is str:
            value = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
        else:
            value = kind(raw.decode("ascii") if isinstance(raw, bytes | bytearray) else raw)
        values[name] = value
    values["analysis"] = json.loads(values["analysis"])
    return LibraryRecord(**values)


# --------------------------------------------------------------------------- interface


class LibraryBackend(ABC):
    """Where the fingerprint library is kept. Implementations are thread-safe."""

    kind: str = "abstract"

    @abstractmethod
    def put(self, record: LibraryRecord) -> int:
        """Insert or replace the record with ``record.entry_id``.

        Returns the record's new sequence number: strictly greater than every sequence
        number handed out before by any backend object sharing this store.
        """

    @abstractmethod
    def delete(self, entry_ids: Iterable[str]) -> int:
        """Delete these entries; return how many of them existed."""

    @abstractmethod
    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        """Records whose sequence number is greater than ``cursor``, oldest first.

        At most ``limit`` records; returns them with the new cursor (the highest sequence
        number returned, or ``cursor`` when none). Cursor 0 loads everything.
        """

    @abstractmethod
    def get(self, entry_id: str) -> LibraryRecord | None:
        """The record stored under ``entry_id``, or ``None``."""

    @abstractmethod
    def count(self) -> int:
        """How many records are stored."""

    @abstractmethod
    def purge_older_than(self, stored_before: float) -> int:
        """Delete records with ``stored_at < stored_before``; return how many."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Figures for status pages: ``kind``, ``location`` (no secrets), ``count`` …"""

    @abstractmethod
    def close(self) -> None:
        """Release resources; idempotent. Later calls raise :class:`LibraryUnavailable`."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_cursor(cursor: int, limit: int) -> None:
    if cursor < 0:
        raise ValueError("cursor must be >= 0")
    if limit < 1:
        raise ValueError("limit must be >= 1")
