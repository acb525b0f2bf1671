"""The SQLite backend: an embedded file in WAL mode, shared by processes on one host."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.library.backends.base import (
    CHUNK,
    FIELD_NAMES,
    FIELD_TYPES,
    LibraryBackend,
    LibraryRecord,
    LibrarySchemaError,
    LibraryUnavailable,
    check_cursor,
    record_from_fields,
    record_to_fields,
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
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # guarded by self._lock instead
            )
        except (OSError, sqlite3.Error) as exc:
            raise LibraryUnavailable(f"cannot open library file {self.path}: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _setup(self) -> None:
        columns = ", ".join(
            f"{name} {_SQL_TYPES[FIELD_TYPES[name]]} NOT NULL" for name in FIELD_NAMES
        )
        # WAL: readers never block the writer; the mode is stored in the file. SQLite may
        # answer "locked" without waiting while another process creates the same file, so
        # the switch is retried here until the busy timeout.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                with self._locked() as conn:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    conn.execute("PRAGMA synchronous=NORMAL")
                break
            except LibraryUnavailable as exc:
                locked = isinstance(exc.__cause__, sqlite3.OperationalError) and (
                    "locked" in str(exc.__cause__) or "busy" in str(exc.__cause__)
                )
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        if str(mode).lower() != "wal":
            logger.warning("library file %s is in journal mode %s, not WAL", self.path, mode)
        with self._transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SQLITE_SCHEMA_VERSION:
                raise LibrarySchemaError(
                    f"library file {self.path} has schema version {version}, newer than "
                    f"{SQLITE_SCHEMA_VERSION} which this memeserve understands; upgrade "
                    "memeserve or point it at another library file"
                )
            if version == 0:
                conn.execute(
                    f"CREATE TABLE records (seq INTEGER NOT NULL, {columns}, "
                    "PRIMARY KEY (entry_id))"
                )
                conn.execute("CREATE UNIQUE INDEX records_seq ON records (seq)")
                conn.execute("CREATE INDEX records_stored_at ON records (stored_at)")
                conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER)")
                conn.execute("INSERT INTO counter (id, value) VALUES (1, 0)")
                conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
                logger.info("created library file %s", self.path)
            present = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
            if present != {"seq", *FIELD_NAMES}:
                raise LibrarySchemaError(
                    f"library file {self.path} (schema {version}) has columns "
                    f"{sorted(present)}, expected {sorted({'seq', *FIELD_NAMES})}"
                )

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise LibraryUnavailable(f"library file {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise LibraryUnavailable(f"library file {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: takes the write lock up front)."""
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def put(self, record: LibraryRecord) -> int:
        encoded = record_to_fields(record)
        names = ", ".join(FIELD_NAMES)
        marks = ", ".join(f":{name}" for name in FIELD_NAMES)
        updates = ", ".join(f"{name} = excluded.{name}" for name in ("seq", *FIELD_NAMES))
        with self._transaction() as conn:
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
        with self._transaction() as conn:
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
        with self._locked() as conn:
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
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {names} FROM records WHERE entry_id = ?", (entry_id,)
            ).fetchone()
        return None if row is None else record_from_fields(dict(zip(FIELD_NAMES, row, strict=True)))

    def count(self) -> int:
        with self._locked() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def purge_older_than(self, stored_before: float) -> int:
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM records WHERE stored_at < ?", (stored_before,)
            ).rowcount

    def stats(self) -> dict[str, Any]:
        with self._locked() as conn:
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
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
