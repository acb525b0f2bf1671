"""Persistence backends for the fingerprint library (framework-free, no Ray).

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

import json
import logging
import random
import sqlite3
import threading
import time
import typing
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

MAX_ENTRY_ID_CHARS = 512
SOURCES = ("service", "import")

_T = TypeVar("_T")


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

_PRIMITIVES: dict[str, type] = {}
for _name, _hint in typing.get_type_hints(LibraryRecord).items():
    _PRIMITIVES[_name] = str if _name == "analysis" else _hint
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LibraryRecord))
assert set(FIELD_NAMES) == set(_PRIMITIVES)
assert all(kind in (str, bytes, int, float) for kind in _PRIMITIVES.values())


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
        out[name] = _PRIMITIVES[name](value)
    return out


def record_from_fields(data: Mapping[str, Any]) -> LibraryRecord:
    """Decode fields written by :func:`record_to_fields`.

    Values may be native (SQLite) or ``bytes`` (redis); each is coerced to its field's type.
    """
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = data[name]
        kind = _PRIMITIVES[name]
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


def _check_cursor(cursor: int, limit: int) -> None:
    if cursor < 0:
        raise ValueError("cursor must be >= 0")
    if limit < 1:
        raise ValueError("limit must be >= 1")


# --------------------------------------------------------------------------- memory


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
        _check_cursor(cursor, limit)
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


# --------------------------------------------------------------------------- sqlite

SQLITE_SCHEMA_VERSION = 1
_SQL_TYPES = {str: "TEXT", bytes: "BLOB", int: "INTEGER", float: "REAL"}
_CHUNK = 500


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
            f"{name} {_SQL_TYPES[_PRIMITIVES[name]]} NOT NULL" for name in FIELD_NAMES
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
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                removed += conn.execute(
                    f"DELETE FROM records WHERE entry_id IN ({marks})", chunk
                ).rowcount
        return removed

    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        _check_cursor(cursor, limit)
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


# --------------------------------------------------------------------------- redis


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


_SEQ_FIELD = "_seq"  # extra hash field: the sequence number the hash was written with


class RedisBackend(LibraryBackend):
    """Records in a redis server, shared by every process using the same URL and prefix.

    Keys (``P`` is ``prefix``):

    * ``P r:<entry_id>`` — one hash per record (the encoded fields plus ``_seq``), with a
      time-to-live of ``ttl_s`` when given;
    * ``P seq`` — sorted set of entry ids scored by sequence number (drives ``load_since``);
    * ``P stored`` — sorted set of entry ids scored by ``stored_at`` (drives purges);
    * ``P counter`` — the sequence counter (``INCR``).

    ``put`` runs ``INCR`` and every write in one ``MULTI``/``EXEC`` transaction under
    ``WATCH`` of the counter (retried when another writer got there first), so sequence
    numbers become visible in increasing order: a poller never skips a record written
    concurrently. Members whose hash has expired are skipped by ``load_since`` and
    removed from the sorted sets as they are found.

    The redis client is thread-safe (a connection pool); the constructor does not
    contact the server. Connection problems and server errors raise
    :class:`LibraryUnavailable` within the socket timeouts.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "memeserve:library:",
        ttl_s: float | None = None,
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        put_attempts: int = 200,
    ) -> None:
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - redis is a declared dependency
            raise LibraryUnavailable(
                "the redis library backend needs the redis client: pip install redis"
            ) from exc
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 or None")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._redis = redis
        self.url = url
        self.location = redact_url(url)
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self._put_attempts = put_attempts
        self._seq_key = f"{prefix}seq"
        self._stored_key = f"{prefix}stored"
        self._counter_key = f"{prefix}counter"
        self._closed = False
        try:
            # Any: redis-py's return types are unions over its sync and async clients.
            self._client: Any = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ValueError(f"bad redis URL {self.location}: {exc}") from None

    def _hash_key(self, entry_id: str) -> str:
        return f"{self.prefix}r:{entry_id}"

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        """Run ``action``; turn client errors into :class:`LibraryUnavailable`."""
        if self._closed:
            raise LibraryUnavailable(f"redis library backend {self.location} is closed")
        try:
            return action()
        except self._redis.RedisError as exc:
            raise LibraryUnavailable(
                f"redis library {self.location} failed to {what}: {type(exc).__name__}: {exc}"
            ) from exc

    def put(self, record: LibraryRecord) -> int:
        encoded = record_to_fields(record)
        return self._call("put", lambda: self._put(record.entry_id, encoded))

    def _put(self, entry_id: str, encoded: dict[str, str | bytes | int | float]) -> int:
        key = self._hash_key(entry_id)
        for attempt in range(self._put_attempts):
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._counter_key)
                    expected = int(pipe.get(self._counter_key) or 0) + 1
                    pipe.multi()
                    pipe.incr(self._counter_key)
                    pipe.delete(key)
                    pipe.hset(key, mapping={**encoded, _SEQ_FIELD: expected})
                    if self.ttl_ms is not None:
                        pipe.pexpire(key, self.ttl_ms)
                    pipe.zadd(self._seq_key, {entry_id: expected})
                    pipe.zadd(self._stored_key, {entry_id: encoded["stored_at"]})
                    sequence = int(pipe.execute()[0])
                except self._redis.WatchError:
                    # Another writer took the next number first: retry, with a little jitter.
                    time.sleep(random.uniform(0, min(0.05, 0.001 * (attempt + 1))))
                    continue
            if sequence != expected:  # cannot happen under WATCH; guard the invariant
                raise LibraryUnavailable(f"redis counter moved unexpectedly ({sequence})")
            return sequence
        raise LibraryUnavailable(
            f"redis library {self.location}: put gave up after {self._put_attempts} "
            "conflicting attempts"
        )

    def delete(self, entry_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(entry_ids))
        return self._call("delete", lambda: self._delete(ids))

    def _delete(self, ids: list[str]) -> int:
        removed = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            with self._client.pipeline(transaction=True) as pipe:
                for entry_id in chunk:
                    pipe.delete(self._hash_key(entry_id))
                pipe.zrem(self._seq_key, *chunk)
                pipe.zrem(self._stored_key, *chunk)
                results = pipe.execute()
            removed += sum(int(n) for n in results[: len(chunk)])
        return removed

    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        _check_cursor(cursor, limit)
        return self._call("load records", lambda: self._load_since(cursor, limit))

    def _load_since(self, cursor: int, limit: int) -> tuple[list[LibraryRecord], int]:
        records: list[LibraryRecord] = []
        new_cursor = cursor
        scan_from = cursor
        while len(records) < limit:
            want = limit - len(records)
            members = self._client.zrangebyscore(
                self._seq_key, f"({scan_from}", "+inf", start=0, num=want, withscores=True
            )
            if not members:
                break
            with self._client.pipeline(transaction=False) as pipe:
                for member, _ in members:
                    pipe.hgetall(self._hash_key(member.decode("utf-8")))
                hashes = pipe.execute()
            expired: list[str] = []
            for (member, score), data in zip(members, hashes, strict=True):
                entry_id = member.decode("utf-8")
                sequence = int(score)
                if not data:
                    expired.append(entry_id)
                    continue
                fields_ = {key.decode("utf-8"): value for key, value in data.items()}
                if int(fields_.pop(_SEQ_FIELD)) != sequence:
                    continue  # replaced meanwhile: it comes again at its new sequence
                records.append(record_from_fields(fields_))
                new_cursor = sequence
            scan_from = int(members[-1][1])
            if expired:
                self._forget_expired(expired)
            if len(members) < want:
                break
        return records, new_cursor

    def _forget_expired(self, entry_ids: list[str]) -> int:
        """Drop sorted-set members whose hash expired (best effort); return how many."""
        keys = [self._hash_key(entry_id) for entry_id in entry_ids]
        with self._client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*keys)  # a concurrent re-put of one of them aborts this
                gone = [
                    eid for eid, key in zip(entry_ids, keys, strict=True) if not pipe.exists(key)
                ]
                if not gone:
                    return 0
                pipe.multi()
                pipe.zrem(self._seq_key, *gone)
                pipe.zrem(self._stored_key, *gone)
                pipe.execute()
            except self._redis.WatchError:
                return 0
        logger.debug("forgot %d expired library entries", len(gone))
        return len(gone)

    def get(self, entry_id: str) -> LibraryRecord | None:
        data = self._call("get a record", lambda: self._client.hgetall(self._hash_key(entry_id)))
        if not data:
            return None
        fields_ = {key.decode("utf-8"): value for key, value in data.items()}
        fields_.pop(_SEQ_FIELD, None)
        return record_from_fields(fields_)

    def count(self) -> int:
        """Live records (expired ones are removed while counting: O(n) in the library)."""
        return self._call("count records", self._count)

    def _count(self) -> int:
        live = 0
        start = 0
        while True:
            members = self._client.zrange(self._seq_key, start, start + _CHUNK - 1)
            if not members:
                return live
            ids = [member.decode("utf-8") for member in members]
            with self._client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.exists(self._hash_key(entry_id))
                present = pipe.execute()
            expired = [eid for eid, here in zip(ids, present, strict=True) if not here]
            live += len(ids) - len(expired)
            forgotten = self._forget_expired(expired) if expired else 0
            start += len(ids) - forgotten
            if len(members) < _CHUNK:
                return live

    def purge_older_than(self, stored_before: float) -> int:
        return self._call("purge records", lambda: self._purge(stored_before))

    def _purge(self, stored_before: float) -> int:
        removed = 0
        conflicts = 0
        while True:
            old = self._client.zrangebyscore(
                self._stored_key, "-inf", f"({stored_before!r}", start=0, num=_CHUNK
            )
            if not old:
                return removed
            ids = [member.decode("utf-8") for member in old]
            keys = [self._hash_key(entry_id) for entry_id in ids]
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*keys)  # a concurrent re-put of one of them aborts this
                    stamps = [pipe.hget(key, "stored_at") for key in keys]
                    pipe.multi()
                    live = 0
                    for entry_id, key, stamp in zip(ids, keys, stamps, strict=True):
                        if stamp is not None and float(stamp) >= stored_before:
                            continue  # put again meanwhile, with a newer time: keep it
                        if stamp is not None:
                            pipe.delete(key)
                            live += 1
                        pipe.zrem(self._seq_key, entry_id)
                        pipe.zrem(self._stored_key, entry_id)
                    pipe.execute()
                except self._redis.WatchError:
                    conflicts += 1
                    if conflicts > self._put_attempts:
                        raise LibraryUnavailable(
                            f"redis library {self.location}: purge gave up after "
                            f"{conflicts} conflicting attempts"
                        ) from None
                    continue
            removed += live

    def stats(self) -> dict[str, Any]:
        count = self.count()
        info = self._call("read server info", lambda: self._client.info("memory"))
        return {
            "kind": self.kind,
            "location": self.location,
            "prefix": self.prefix,
            "ttl_s": None if self.ttl_ms is None else self.ttl_ms / 1000,
            "count": count,
            "server_used_memory_bytes": info.get("used_memory"),
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


# --------------------------------------------------------------------------- factory


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
