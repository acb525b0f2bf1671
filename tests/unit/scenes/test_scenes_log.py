"""The scenes event log: one contract for the memory, SQLite and redis backends."""

from __future__ import annotations

import itertools
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serve_app.library.backends import LibrarySchemaError, LibraryUnavailable, SqliteBackend
from serve_app.scenes.log import (
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    SqliteEventLog,
    open_log,
)
from tests.support.redis_server import running_redis

OpenLog = Callable[[], EventLog]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One throw-away redis-server for the module (skips, or fails under
    MEMESERVE_REQUIRE_REDIS=1, without the binary)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _opener(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Open logs of ``kind`` on one store (one file, one redis prefix); all closed after."""
    opened: list[EventLog] = []
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{uuid.uuid4().hex}:"

        def open_one() -> EventLog:
            opened.append(open_log("redis", redis_url=url, redis_prefix=prefix))
            return opened[-1]
    elif kind == "sqlite":

        def open_one() -> EventLog:
            opened.append(open_log("sqlite", sqlite_path=tmp_path / "nested" / "scenes.db"))
            return opened[-1]
    else:
        shared = MemoryEventLog()

        def open_one() -> EventLog:
            return shared

        opened.append(shared)
    yield open_one
    for log in opened:
        log.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def open_on_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    yield from _opener(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def open_shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Backends that several processes share: each call opens a new client on the store."""
    yield from _opener(request.param, request, tmp_path)


# --------------------------------------------------------------------------- the contract


def test_sequence_numbers_start_at_one_and_increase(open_on_store: OpenLog) -> None:
    log = open_on_store()
    seqs = [log.append("terms.add", {"n": n}, 1000.0 + n) for n in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_since_returns_events_after_seq_in_order(open_on_store: OpenLog) -> None:
    log = open_on_store()
    body = {"terms": ["破防了", "🐸"], "nested": {"a": [1, 2.5, None, True]}, "s": "a\nb c"}
    log.append("kind.a", body, 1000.25)
    log.append("kind.b", {}, 1001.5)
    log.append("kind c", {"x": 1}, 1002.0)
    events = log.since(0)
    assert [(e.seq, e.kind, e.at) for e in events] == [
        (1, "kind.a", 1000.25),
        (2, "kind.b", 1001.5),
        (3, "kind c", 1002.0),
    ]
    assert events[0].body == body
    assert [e.seq for e in log.since(1)] == [2, 3]
    assert log.since(3) == []
    assert log.since(99) == []


def test_since_pages(open_on_store: OpenLog) -> None:
    log = open_on_store()
    for n in range(7):
        log.append("k", {"n": n}, float(n))
    pages: list[list[int]] = []
    cursor = 0
    while page := log.since(cursor, limit=3):
        pages.append([e.body["n"] for e in page])
        cursor = page[-1].seq
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]


def test_bad_arguments_raise_value_error_and_log_nothing(open_on_store: OpenLog) -> None:
    log = open_on_store()
    with pytest.raises(ValueError):
        log.since(-1)
    with pytest.raises(ValueError):
        log.since(0, limit=0)
    with pytest.raises(ValueError, match="JSON"):
        log.append("k", {"raw": b"bytes"}, 1.0)
    with pytest.raises(ValueError, match="JSON"):
        log.append("k", {"nan": float("nan")}, 1.0)
    with pytest.raises(ValueError, match="kind"):
        log.append("", {}, 1.0)
    assert log.since(0) == []
    assert log.append("k", {}, 1.0) == 1  # no number was used up


def test_stored_bodies_are_copies(open_on_store: OpenLog) -> None:
    log = open_on_store()
    body = {"terms": ["a"]}
    log.append("k", body, 1.0)
    body["terms"].append("b")
    read = log.since(0)[0].body
    read["terms"].append("c")
    assert log.since(0)[0].body == {"terms": ["a"]}


def test_closed_log_is_unavailable(open_on_store: OpenLog) -> None:
    log = open_on_store()
    log.append("k", {}, 1.0)
    log.close()
    log.close()  # idempotent
    with pytest.raises(LibraryUnavailable):
        log.append("k", {}, 2.0)
    with pytest.raises(LibraryUnavailable):
        log.since(0)


def test_describe_names_the_backend(open_on_store: OpenLog) -> None:
    log = open_on_store()
    assert log.describe()["kind"] == log.kind
    assert "location" in log.describe()


# --------------------------------------------------------------------------- shared stores


def test_logs_on_one_store_see_each_others_appends(open_shared: OpenLog) -> None:
    first, second = open_shared(), open_shared()
    assert first.append("k", {"by": "first"}, 1.0) == 1
    assert second.append("k", {"by": "second"}, 2.0) == 2
    assert first.append("k", {"by": "first"}, 3.0) == 3
    for log in (first, second):
        assert [(e.seq, e.body["by"]) for e in log.since(0)] == [
            (1, "first"),
            (2, "second"),
            (3, "first"),
        ]
    assert [e.seq for e in second.since(2)] == [3]


def test_concurrent_appends_get_distinct_contiguous_numbers(open_shared: OpenLog) -> None:
    logs = [open_shared(), open_shared()]
    per_writer = 40
    numbers: list[list[int]] = [[], []]

    def write(index: int) -> None:
        for n in range(per_writer):
            numbers[index].append(logs[index].append("k", {"w": index, "n": n}, float(n)))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a < b for seqs in numbers for a, b in itertools.pairwise(seqs))
    assert sorted(numbers[0] + numbers[1]) == list(range(1, 2 * per_writer + 1))
    events = logs[0].since(0, limit=1000)
    assert [e.seq for e in events] == list(range(1, 2 * per_writer + 1))
    for index in range(2):  # each writer's events are in the order it wrote them
        assert [e.body["n"] for e in events if e.body["w"] == index] == list(range(per_writer))


# --------------------------------------------------------------------------- SQLite


def test_sqlite_reopen_keeps_events_and_numbering(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "scenes.db"
    with SqliteEventLog(path) as log:
        log.append("k", {"n": 1}, 1.0)
        log.append("k", {"n": 2}, 2.0)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SqliteEventLog(path) as log:
        assert [e.body["n"] for e in log.since(0)] == [1, 2]
        assert log.append("k", {"n": 3}, 3.0) == 3
        assert log.describe() == {"kind": "sqlite", "location": str(path), "last_seq": 3}


def test_sqlite_shares_a_file_with_the_library(tmp_path: Path) -> None:
    path = tmp_path / "memeserve.db"
    with SqliteEventLog(path) as log:
        log.append("k", {}, 1.0)
    with SqliteBackend(path) as library:  # the library's own schema checks still pass
        assert library.count() == 0
    with SqliteEventLog(path) as log:
        assert len(log.since(0)) == 1


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "scenes.db"
    SqliteEventLog(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE scene_events_schema SET version = 99")
    with pytest.raises(LibrarySchemaError, match="version 99"):
        SqliteEventLog(path)


def test_sqlite_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(LibraryUnavailable):
        SqliteEventLog(tmp_path / "file" / "scenes.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(LibraryUnavailable):
        SqliteEventLog(garbage)


# --------------------------------------------------------------------------- redis


def test_redis_unreachable_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        log = RedisEventLog(f"redis://:s3cret@127.0.0.1:{port}/0", "p:", connect_timeout_s=1)
        assert "s3cret" not in log.location
        with pytest.raises(LibraryUnavailable, match="append"):
            log.append("k", {}, 1.0)
        with pytest.raises(LibraryUnavailable):
            log.since(0)
        log.close()


def test_open_log_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sqlite_path"):
        open_log("sqlite")
    with pytest.raises(ValueError, match="redis_url"):
        open_log("redis")
    with pytest.raises(ValueError, match="unknown"):
        open_log("postgres")  # type: ignore[arg-type]
    assert isinstance(open_log("memory"), MemoryEventLog)
    with open_log("sqlite", sqlite_path=tmp_path / "s.db") as log:
        assert isinstance(log, SqliteEventLog)
