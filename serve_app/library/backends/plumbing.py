"""The SQLite and redis plumbing shared by the library backends, scenes log and job store.

Each store names itself with a *label* (``"library file"``, ``"scenes log"``, ...) that
goes into its error messages; the plumbing turns failures into
:class:`LibraryUnavailable` and too-new schemas into :class:`LibrarySchemaError`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from serve_app.library.backends.base import LibrarySchemaError, LibraryUnavailable

_T = TypeVar("_T")


class SqliteConnection:
    """One connection to a SQLite file in WAL mode, guarded by a lock (threads may share it).

    Opening creates the parent folder, switches the file to WAL (retried until
    ``busy_timeout_s`` while another process is creating the same file: SQLite may then
    answer "locked" without waiting) and runs ``setup`` in one write transaction; the
    connection is closed again if any of that fails. Writers wait up to ``busy_timeout_s``
    for each other.
    """

    def __init__(
        self,
        path: Path,
        label: str,
        setup: Callable[[sqlite3.Connection], None],
        *,
        busy_timeout_s: float,
        logger: logging.Logger,
    ) -> None:
        self.path = path
        self._label = label
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
            raise LibraryUnavailable(f"cannot open {label} {self.path}: {exc}") from exc
        try:
            self._use_wal(busy_timeout_s, logger)
            with self.transaction() as conn:
                setup(conn)
        except BaseException:
            self.close()
            raise

    def _use_wal(self, busy_timeout_s: float, logger: logging.Logger) -> None:
        # WAL: readers never block the writer; the mode is stored in the file.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                with self.locked() as conn:
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
            logger.warning("%s %s is in journal mode %s, not WAL", self._label, self.path, mode)

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; database errors become ``LibraryUnavailable``."""
        with self._lock:
            if self._conn is None:
                raise LibraryUnavailable(f"{self._label} {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise LibraryUnavailable(f"{self._label} {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: takes the write lock up front)."""
        with self.locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection; idempotent. Later use raises ``LibraryUnavailable``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def check_schema_version(version: int, supported: int, where: str, advice: str = "") -> None:
    """Refuse (:class:`LibrarySchemaError`) a schema ``version`` newer than ``supported``."""
    if version > supported:
        raise LibrarySchemaError(
            f"{where} has schema version {version}, newer than {supported} which this "
            f"memeserve understands{advice}"
        )


def table_schema_version(conn: sqlite3.Connection, table: str) -> int:
    """The version in table ``<table>_schema`` (created when missing; 0 when empty)."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table}_schema (version INTEGER NOT NULL)")
    row = conn.execute(f"SELECT MAX(version) FROM {table}_schema").fetchone()
    return 0 if row[0] is None else int(row[0])


def check_columns(
    conn: sqlite3.Connection, table: str, expected: Collection[str], where: str
) -> None:
    """Refuse (:class:`LibrarySchemaError`) a ``table`` whose columns are not ``expected``."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if present != set(expected):
        raise LibrarySchemaError(
            f"{where} has columns {sorted(present)}, expected {sorted(expected)}"
        )


def redact_url(url: str) -> str:
    """``url`` without its password (userinfo or ``?password=``), for logs and status."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = urlencode(
        [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def import_redis(label: str) -> ModuleType:
    """The redis client module, or :class:`LibraryUnavailable` naming ``label``."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - redis is a declared dependency
        raise LibraryUnavailable(f"the {label} needs the redis client: pip install redis") from exc
    return redis


class RedisConnection:
    """A redis client (``redis`` from :func:`import_redis`) with socket timeouts, a few
    retries and a health check.

    The client is thread-safe (a connection pool) and connects on first use, not here.
    :meth:`call` turns client errors into :class:`LibraryUnavailable` naming
    ``failure_label`` (``label`` unless given) and the URL without its password.
    """

    def __init__(
        self,
        redis: ModuleType,
        url: str,
        label: str,
        *,
        socket_timeout_s: float,
        connect_timeout_s: float,
        failure_label: str | None = None,
    ) -> None:
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.redis = redis
        self.location = redact_url(url)
        self._label = label
        self._failure_label = label if failure_label is None else failure_label
        self._closed = False
        try:
            # Any: redis-py's return types are unions over its sync and async clients.
            self.client: Any = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ValueError(f"bad redis URL {self.location}: {exc}") from None

    def call(self, what: str, action: Callable[[], _T]) -> _T:
        """Run ``action``; turn client errors into :class:`LibraryUnavailable`."""
        if self._closed:
            raise LibraryUnavailable(f"{self._label} {self.location} is closed")
        try:
            return action()
        except self.redis.RedisError as exc:
            raise LibraryUnavailable(
                f"{self._failure_label} {self.location} failed to {what}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the client; idempotent. Later calls raise ``LibraryUnavailable``."""
        if not self._closed:
            self._closed = True
            self.client.close()
