"""The SQLite backend: an embedded file in WAL mode, shared by processes on one host."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from serve_app.library.backends.base import (
    CHUNK,
    FIELD_NAMES,
    FIELD_TYPES,
    LibraryBackend,
    LibraryRecord,
    check_cursor,
    record_from_fields,
    record_to_fields,
)
from serve_app.library.backends.plumbing import (
    SqliteConnection,
    check_columns,
    check_schema_version,
)

logger = logging.getLogger(__name__)


SQLITE_SCHEMA_VERSION = 1
_SQL_TYPES = {str: "TEXT", bytes: "BLOB", int: "INTEGER", float: "REAL"}


class SqliteBackend(LibraryBackend):
    """An embedded SQLite file (WAL mode), shared safely by processes on one host.

    One connection per backend object, guarded by a lock, so threads may share it.
    Writers wait up to ``busy_timeout_s`` for each other. Each ``put`` takes the next
    value of a persistent counter inside the same write transaction as the row, so
    sequence numbers become visible in increasing order and are never reused (not even
    after deletes). The schema version lives in ``PRAGMA user_version``; a file written
    by a newer schema is refused with :class:`LibrarySchemaError`.
    """

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._db = SqliteConnection(
            self.path, "library file", self._setup, busy_timeout_s=busy_timeout_s, logger=logger
        )

    def _setup(self, conn: sqlite3.Connection) -> None:
        columns = ", ".join(
            f"{name} {_SQL_TYPES[FIELD_TYPES[name]]} NOT NULL" for name in FIELD_NAMES
        )
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        check_schema_version(
            version,
            SQLITE_SCHEMA_VERSION,
            f"library file {self.path}",
            "; upgrade memeserve or point it at another library file",
        )
        if version == 0:
            conn.execute(
                f"CREATE TABLE records (seq INTEGER NOT NULL, {columns}, PRIMARY KEY (entry_id))"
            )
            conn.execute("CREATE UNIQUE INDEX records_seq ON records (seq)")
            conn.execute("CREATE INDEX records_stored_at ON records (stored_at)")
            conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER)")
            conn.execute("INSERT INTO counter (id, value) VALUES (1, 0)")
            conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
            logger.info("created library file %s", self.path)
        check_columns(
            conn, "records", {"seq", *FIELD_NAMES}, f"library file {self.path} (schema {version})"
        )

    def put(self, record: LibraryRecord) -> int:
        encoded = record_to_fields(record)
        names = ", ".join(FIELD_NAMES)
        marks = ", ".join(f":{name}" for name in FIELD_NAMES)
        updates = ", ".join(f"{name} = excluded.{name}" for name in ("seq", *FIELD_NAMES))
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value"
            ).fetchone()
            sequence = int(row[0])
            conn.execute(
                f"INSERT INTO records (seq, {names}) VALUES (:seq, {marks}) "
                f"ON CONFLICT (entry_id) DO UPDATE SET {updates}",
                {"seq": sequence, **encoded},
            )
        return sequence

    def delete(self, entry_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(entry_ids))
        removed = 0
        with self._db.transaction() as conn:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                removed += conn.execute(
                    f"DELETE FROM records WHERE entry_id IN ({marks})", chunk
                ).rowcount
        return removed

    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        check_cursor(cursor, limit)
        names = ", ".join(FIELD_NAMES)
        with self._db.locked() as conn:
            rows = conn.execute(
                f"SELECT seq, {names} FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, limit),
            ).fetchall()
        if not rows:
            return [], cursor
        records = [record_from_fields(dict(zip(FIELD_NAMES, row[1:], strict=True))) for row in rows]
        return records, int(rows[-1][0])

    def get(self, entry_id: str) -> LibraryRecord | None:
        names = ", ".join(FIELD_NAMES)
        with self._db.locked() as conn:
            row = conn.execute(
                f"SELECT {names} FROM records WHERE entry_id = ?", (entry_id,)
            ).fetchone()
        return None if row is None else record_from_fields(dict(zip(FIELD_NAMES, row, strict=True)))

    def count(self) -> int:
        with self._db.locked() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def purge_older_than(self, stored_before: float) -> int:
        with self._db.transaction() as conn:
            return conn.execute(
                "DELETE FROM records WHERE stored_at < ?", (stored_before,)
            ).rowcount

    def stats(self) -> dict[str, Any]:
        with self._db.locked() as conn:
            count = int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
            sequence = int(conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        wal = self.path.with_name(self.path.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        return {
            "kind": self.kind,
            "location": str(self.path),
            "count": count,
            "sequence": sequence,
            "schema_version": SQLITE_SCHEMA_VERSION,
            "file_bytes": pages * page_size,
            "wal_bytes": wal_bytes,
        }

    def close(self) -> None:
        self._db.close()
