"""Memory and SQLite fingerprint-library backends (the shared contract, plus SQLite's own)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.library.backends import (
    LibraryBackend,
    LibrarySchemaError,
    LibraryUnavailable,
    MemoryBackend,
    RedisBackend,
    SqliteBackend,
    open_backend,
    record_from_fields,
    record_to_fields,
    redact_url,
)
from tests.support.library_contract import (
    UNICODE_ANALYSIS,
    LibraryBackendContract,
    OpenOnStore,
    SharedStoreContract,
    load_all,
    make_record,
)
from tests.support.paths import ROOT


class TestLocalBackendContract(LibraryBackendContract):
    """The contract, once per local backend."""

    @pytest.fixture(params=["memory", "sqlite"])
    def backend(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LibraryBackend]:
        opened = open_backend(request.param, sqlite_path=tmp_path / "nested" / "library.db")
        yield opened
        opened.close()


class TestSqliteSharedStore(SharedStoreContract):
    """Several SqliteBackend objects (as several processes would) on one file."""

    @pytest.fixture
    def open_on_store(self, tmp_path: Path) -> Iterator[OpenOnStore]:
        opened: list[LibraryBackend] = []

        def open_one() -> LibraryBackend:
            opened.append(SqliteBackend(tmp_path / "library.db"))
            return opened[-1]

        yield open_one
        for backend in opened:
            backend.close()


_WRITER = """
import sys
from pathlib import Path
from serve_app.library.backends import SqliteBackend
from tests.support.library_contract import make_record
backend = SqliteBackend(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    print(backend.put(make_record(f"{sys.argv[2]}-{i}")))
backend.close()
"""


def test_sqlite_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "library.db"
    per_process = 40
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"p{n}", str(per_process)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n in range(2)
    ]
    sequences: list[int] = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        sequences.extend(int(line) for line in out.split())
    assert sorted(sequences) == list(range(1, 2 * per_process + 1))
    with SqliteBackend(path) as backend:
        assert backend.count() == 2 * per_process


def test_sqlite_creates_parent_dirs_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "library.db"
    with SqliteBackend(path) as backend:
        backend.put(make_record("m"))
        stats = backend.stats()
    assert path.is_file()
    assert stats["location"] == str(path)
    assert stats["file_bytes"] > 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        indexed = {row[1] for row in conn.execute("PRAGMA index_list(records)")}
        columns = {row[2] for name in indexed for row in conn.execute(f"PRAGMA index_info({name})")}
    assert "seq" in columns


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "library.db"
    with SqliteBackend(path) as backend:
        backend.put(make_record("m"))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(LibrarySchemaError, match="schema version 99, newer"):
        SqliteBackend(path)
    with sqlite3.connect(path) as conn:  # left untouched
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1


def test_sqlite_refuses_unexpected_columns(tmp_path: Path) -> None:
    path = tmp_path / "library.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE records (seq INTEGER, entry_id TEXT)")
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(LibrarySchemaError, match="columns"):
        SqliteBackend(path)


def test_sqlite_unreadable_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "library.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LibraryUnavailable):
        SqliteBackend(path)


def test_codec_round_trip() -> None:
    record = make_record("m", analysis=UNICODE_ANALYSIS, level=3, source="import")
    encoded = record_to_fields(record)
    assert set(encoded) == {
        "entry_id", "exact_key", "scope", "fingerprint", "analysis", "level", "stored_at",
        "source",
    }  # fmt: skip
    assert all(isinstance(value, str | bytes | int | float) for value in encoded.values())
    assert record_from_fields(encoded) == record
    # As redis hands it back: every value as bytes.
    as_bytes = {
        key: value
        if isinstance(value, bytes)
        else (repr(value) if isinstance(value, float) else str(value)).encode()
        for key, value in encoded.items()
    }
    assert record_from_fields(as_bytes) == record


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host/1", "redis://user:***@host/1"),
        ("redis://user@host/1", "redis://user@host/1"),
        ("rediss://host:6380/0?password=s3cret&ssl_cert_reqs=none",
         "rediss://host:6380/0?password=%2A%2A%2A&ssl_cert_reqs=none"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_open_backend_validates_arguments(tmp_path: Path) -> None:
    assert isinstance(open_backend("memory"), MemoryBackend)
    with pytest.raises(ValueError, match="sqlite_path"):
        open_backend("sqlite")
    with pytest.raises(ValueError, match="redis_url"):
        open_backend("redis")
    with pytest.raises(ValueError, match="ttl_s"):
        open_backend("memory", ttl_s=0)
    with pytest.raises(ValueError, match="unknown"):
        open_backend("postgres")  # type: ignore[arg-type]
    with open_backend("sqlite", sqlite_path=tmp_path / "l.db") as backend:
        assert isinstance(backend, SqliteBackend)
        assert load_all(backend) == []


def test_redis_backend_construction_does_not_connect_and_hides_password() -> None:
    backend = RedisBackend("redis://user:s3cret@127.0.0.1:1/0", "p:", ttl_s=5)
    assert "s3cret" not in backend.location
    backend.close()
    with pytest.raises(LibraryUnavailable, match="closed"):
        backend.count()


def test_missing_redis_server_skips_or_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import redis_server

    monkeypatch.setattr(redis_server, "REDIS_SERVER", tmp_path / "no-redis-server")
    monkeypatch.delenv("MEMESERVE_REQUIRE_REDIS", raising=False)
    with (
        pytest.raises(pytest.skip.Exception, match="make system-deps"),
        redis_server.running_redis(tmp_path),
    ):
        pass
    monkeypatch.setenv("MEMESERVE_REQUIRE_REDIS", "1")
    with (
        pytest.raises(pytest.fail.Exception, match="make system-deps"),
        redis_server.running_redis(tmp_path),
    ):
        pass
