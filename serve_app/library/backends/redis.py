"""The redis backend: one server shared by several hosts, with an optional time-to-live."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from typing import Any

from serve_app.library.backends.base import (
    CHUNK,
    LibraryBackend,
    LibraryRecord,
    LibraryUnavailable,
    check_cursor,
    record_from_fields,
    record_to_fields,
)
from serve_app.library.backends.plumbing import RedisConnection, import_redis

logger = logging.getLogger(__name__)


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
        redis = import_redis("redis library backend")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 or None")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.url = url
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self._put_attempts = put_attempts
        self._seq_key = f"{prefix}seq"
        self._stored_key = f"{prefix}stored"
        self._counter_key = f"{prefix}counter"
        self._conn = RedisConnection(
            redis,
            url,
            "redis library backend",
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            failure_label="redis library",
        )
        self._client: Any = self._conn.client
        self._redis = redis
        self.location = self._conn.location

    def _hash_key(self, entry_id: str) -> str:
        return f"{self.prefix}r:{entry_id}"

    def put(self, record: LibraryRecord) -> int:
        encoded = record_to_fields(record)
        return self._conn.call("put", lambda: self._put(record.entry_id, encoded))

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
        return self._conn.call("delete", lambda: self._delete(ids))

    def _delete(self, ids: list[str]) -> int:
        removed = 0
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            with self._client.pipeline(transaction=True) as pipe:
                for entry_id in chunk:
                    pipe.delete(self._hash_key(entry_id))
                pipe.zrem(self._seq_key, *chunk)
                pipe.zrem(self._stored_key, *chunk)
                results = pipe.execute()
            removed += sum(int(n) for n in results[: len(chunk)])
        return removed

    def load_since(self, cursor: int, limit: int = 1000) -> tuple[list[LibraryRecord], int]:
        check_cursor(cursor, limit)
        return self._conn.call("load records", lambda: self._load_since(cursor, limit))

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
        data = self._conn.call(
            "get a record", lambda: self._client.hgetall(self._hash_key(entry_id))
        )
        if not data:
            return None
        fields_ = {key.decode("utf-8"): value for key, value in data.items()}
        fields_.pop(_SEQ_FIELD, None)
        return record_from_fields(fields_)

    def count(self) -> int:
        """Live records (expired ones are removed while counting: O(n) in the library)."""
        return self._conn.call("count records", self._count)

    def _count(self) -> int:
        live = 0
        start = 0
        while True:
            members = self._client.zrange(self._seq_key, start, start + CHUNK - 1)
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
            if len(members) < CHUNK:
                return live

    def purge_older_than(self, stored_before: float) -> int:
        return self._conn.call("purge records", lambda: self._purge(stored_before))

    def _purge(self, stored_before: float) -> int:
        removed = 0
        conflicts = 0
        while True:
            old = self._client.zrangebyscore(
                self._stored_key, "-inf", f"({stored_before!r}", start=0, num=CHUNK
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
        info = self._conn.call("read server info", lambda: self._client.info("memory"))
        return {
            "kind": self.kind,
            "location": self.location,
            "prefix": self.prefix,
            "ttl_s": None if self.ttl_ms is None else self.ttl_ms / 1000,
            "count": count,
            "server_used_memory_bytes": info.get("used_memory"),
        }

    def close(self) -> None:
        self._conn.close()
