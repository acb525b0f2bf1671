"""The SQLite event log: one table in an embedded file (WAL), shared by processes on a host."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, Final

from serve_app.library.backends import LibraryUnavailable
from serve_app.library.backends.plumbing import (
    SqliteConnection,
    check_columns,
    check_schema_version,
    table_schema_version,
)
from serve_app.scenes.log.base import PAGE, Event, EventLog, check_since, decode_event, encode_body

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final[int] = 1
_TABLE: Final[str] = "scene_events"
_COLUMNS: Final[frozenset[str]] = frozenset({"seq", "kind", "body", "at"})


class SqliteEventLog(EventLog):
    """Events in the ``scene_events`` table of a SQLite file in WAL mode.

    One connection per log object, guarded by a lock, so threads may share it; processes
    on one host may share the file (writers wait up to ``busy_timeout_s`` for each other).
    ``seq`` is an ``AUTOINCREMENT`` key assigned inside a ``BEGIN IMMEDIATE`` transaction,
    so numbers are never reused and become visible in increasing order. The table and its
    version row (table ``scene_events_schema``) leave ``PRAGMA user_version`` alone, so the
    file may also hold a fingerprint library; a newer version is refused with
    :class:`~serve_app.library.backends.LibrarySchemaError`.
    """

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._db = SqliteConnection(
            self.path, "scenes log", self._setup, busy_timeout_s=busy_timeout_s, logger=logger
        )

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "kind TEXT NOT NULL, body TEXT NOT NULL, at REAL NOT NULL)"
        )
        version = table_schema_version(conn, _TABLE)
        check_schema_version(version, SCHEMA_VERSION, f"scenes log {self.path}")
        if version == 0:
            conn.execute(f"INSERT INTO {_TABLE}_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            logger.info("created scenes log in %s", self.path)
        check_columns(conn, _TABLE, _COLUMNS, f"scenes log {self.path}")

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        encoded = encode_body(kind, body)
        with self._db.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO {_TABLE} (kind, body, at) VALUES (?, ?, ?)",
                (kind, encoded, float(at)),
            )
            seq = cursor.lastrowid
        if seq is None:  # pragma: no cover - an INSERT always sets it
            raise LibraryUnavailable(f"scenes log {self.path}: no sequence number assigned")
        return int(seq)

    def since(self, seq: int, limit: int = PAGE) -> list[Event]:
        check_since(seq, limit)
        with self._db.locked() as conn:
            rows = conn.execute(
                f"SELECT seq, kind, body, at FROM {_TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [decode_event(*row) for row in rows]

    def describe(self) -> dict[str, Any]:
        with self._db.locked() as conn:
            last = conn.execute(f"SELECT MAX(seq) FROM {_TABLE}").fetchone()[0]
        return {"kind": self.kind, "location": str(self.path), "last_seq": int(last or 0)}

    def close(self) -> None:
        self._db.close()
