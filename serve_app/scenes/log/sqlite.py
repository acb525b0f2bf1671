"""The SQLite event log: one table in an embedded file (WAL), shared by processes on a host."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from serve_app.library.backends import LibrarySchemaError, LibraryUnavailable
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
            raise LibraryUnavailable(f"cannot open scenes log {self.path}: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        # SQLite may answer "locked" at once while another process creates the same file,
        # so switching to WAL is retried until the busy timeout.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                with self._locked() as conn:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    conn.execute("PRAGMA synchronous=NORMAL")
                break
            except LibraryUnavailable as exc:
                cause = exc.__cause__
                locked = isinstance(cause, sqlite3.OperationalError) and (
                    "locked" in str(cause) or "busy" in str(cause)
                )
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        if str(mode).lower() != "wal":
            logger.warning("scenes log %s is in journal mode %s, not WAL", self.path, mode)
        with self._transaction() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "kind TEXT NOT NULL, body TEXT NOT NULL, at REAL NOT NULL)"
            )
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE}_schema (version INTEGER NOT NULL)")
            row = conn.execute(f"SELECT MAX(version) FROM {_TABLE}_schema").fetchone()
            version = 0 if row[0] is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise LibrarySchemaError(
                    f"scenes log {self.path} has schema version {version}, newer than "
                    f"{SCHEMA_VERSION} which this memeserve understands"
                )
            if version == 0:
                conn.execute(f"INSERT INTO {_TABLE}_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                logger.info("created scenes log in %s", self.path)
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
            if present != _COLUMNS:
                raise LibrarySchemaError(
                    f"scenes log {self.path} has columns {sorted(present)}, "
                    f"expected {sorted(_COLUMNS)}"
                )

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise LibraryUnavailable(f"scenes log {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise LibraryUnavailable(f"scenes log {self.path}: {exc}") from exc

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

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        encoded = encode_body(kind, body)
        with self._transaction() as conn:
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
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT seq, kind, body, at FROM {_TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [decode_event(*row) for row in rows]

    def describe(self) -> dict[str, Any]:
        with self._locked() as conn:
            last = conn.execute(f"SELECT MAX(seq) FROM {_TABLE}").fetchone()[0]
        return {"kind": self.kind, "location": str(self.path), "last_seq": int(last or 0)}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
