"""The redis fingerprint-library backend against a real redis-server.

One server per module (``running_redis``); every test works under its own key prefix, so
tests never see each other's records.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from serve_app.library.backends import (
    LibraryBackend,
    LibraryUnavailable,
    RedisBackend,
    open_backend,
)
from tests.support.library_contract import (
    LibraryBackendContract,
    OpenOnStore,
    SharedStoreContract,
    ids,
    load_all,
    make_record,
)
from tests.support.redis_server import running_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def open_on_store(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisBackend]]:
    """Open RedisBackend objects on this test's prefix; all closed afterwards."""
    opened: list[RedisBackend] = []

    def open_one(ttl_s: float | None = None) -> RedisBackend:
        opened.append(RedisBackend(redis_url, prefix, ttl_s))
        return opened[-1]

    yield open_one
    for backend in opened:
        backend.close()


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it is true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        time.sleep(0.02)


class TestRedisContract(LibraryBackendContract, SharedStoreContract):
    """The same contract as the memory and SQLite backends, plus the shared-store one."""

    @pytest.fixture
    def backend(self, open_on_store: OpenOnStore) -> LibraryBackend:
        return open_on_store()


def test_keys_follow_the_documented_layout(
    open_on_store: Callable[..., RedisBackend], prefix: str, raw: redis.Redis
) -> None:
    backend = open_on_store()
    sequence = backend.put(make_record("m1"))
    assert raw.hget(f"{prefix}r:m1", "exact_key") == b"exact-m1"
    assert raw.zscore(f"{prefix}seq", "m1") == sequence
    assert int(raw.get(f"{prefix}counter") or 0) == sequence
    assert raw.ttl(f"{prefix}r:m1") == -1  # no ttl configured: no expiry


def test_records_expire_after_ttl(
    open_on_store: Callable[..., RedisBackend], prefix: str, raw: redis.Redis
) -> None:
    short = open_on_store(ttl_s=1.0)
    short.put(make_record("soon-gone"))
    assert 0 < raw.pttl(f"{prefix}r:soon-gone") <= 1000
    wait_until(lambda: short.get("soon-gone") is None)
    assert load_all(short) == []
    assert short.count() == 0
    # The sorted sets are cleaned of what expired.
    assert raw.zcard(f"{prefix}seq") == 0
    assert raw.zcard(f"{prefix}stored") == 0


def test_expired_members_are_skipped_while_paging(
    open_on_store: Callable[..., RedisBackend], prefix: str, raw: redis.Redis
) -> None:
    short, lasting = open_on_store(ttl_s=0.2), open_on_store()
    for i in range(5):
        short.put(make_record(f"gone{i}"))
    wait_until(lambda: raw.exists(*[f"{prefix}r:gone{i}" for i in range(5)]) == 0)
    kept = [lasting.put(make_record(f"kept{i}")) for i in range(3)]
    # The page is filled from past the expired members; the cursor is the last returned.
    page, cursor = lasting.load_since(0, limit=2)
    assert (ids(page), cursor) == (["kept0", "kept1"], kept[1])
    assert lasting.load_since(cursor, limit=2) == ([make_record("kept2")], kept[2])
    assert raw.zcard(f"{prefix}seq") == 3
    assert lasting.count() == 3
    assert lasting.purge_older_than(float("inf")) == 3
    assert raw.zcard(f"{prefix}stored") == 0


def test_put_refreshes_the_ttl(
    open_on_store: Callable[..., RedisBackend], prefix: str, raw: redis.Redis
) -> None:
    backend = open_on_store(ttl_s=30.0)
    backend.put(make_record("m"))
    raw.pexpire(f"{prefix}r:m", 5_000)
    backend.put(make_record("m"))
    assert raw.pttl(f"{prefix}r:m") > 5_000


def test_open_backend_redis_and_stats(redis_url: str, prefix: str) -> None:
    with open_backend("redis", redis_url=redis_url, redis_prefix=prefix, ttl_s=60) as backend:
        assert isinstance(backend, RedisBackend)
        backend.put(make_record("m"))
        stats = backend.stats()
    assert stats["kind"] == "redis"
    assert stats["location"] == redis_url
    assert stats["count"] == 1
    assert stats["ttl_s"] == 60
    assert stats["server_used_memory_bytes"] > 0


def test_unavailable_when_the_server_is_down(tmp_path: Path) -> None:
    with running_redis(tmp_path) as url:
        backend = RedisBackend(url, "down:", None)
        backend.put(make_record("m"))
        assert backend.count() == 1
    started = time.monotonic()
    calls: list[Callable[[], Any]] = [
        lambda: backend.put(make_record("n")),
        lambda: backend.get("m"),
        lambda: backend.load_since(0),
        lambda: backend.count(),
        lambda: backend.delete(["m"]),
        lambda: backend.purge_older_than(time.time()),
        lambda: backend.stats(),
    ]
    for call in calls:
        with pytest.raises(LibraryUnavailable, match=re.escape(f"redis library {url}")):
            call()
    assert time.monotonic() - started < 30  # bounded by socket timeouts, never hangs
    backend.close()
