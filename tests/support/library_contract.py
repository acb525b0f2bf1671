"""The behaviour every fingerprint-library backend must have, as reusable test classes.

Subclass :class:`LibraryBackendContract` and provide a ``backend`` fixture (a fresh, empty
backend) to run the contract against a backend. Backends whose store outlives one object
(a file, a server) also subclass :class:`SharedStoreContract` and provide
``open_on_store``: a callable opening another backend object on the *same* store (the
fixture closes what it opened).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from serve_app.library.backends import LibraryBackend, LibraryRecord, LibraryUnavailable

OpenOnStore = Callable[[], LibraryBackend]

UNICODE_ANALYSIS: dict[str, Any] = {
    "summary": "当你以为周五了，结果才周二 😩",
    "labels": ["幽默", "職場", "ñandú", "🐸"],
    "scores": {"humour": 0.87, "risk": 0.0, "nested": [1, 2.5, None, True, {"ключ": "значение"}]},
    "quote": 'line one\nline "two"\t\\ \u2028 end',
    "empty": {},
}


def make_record(
    entry_id: str,
    *,
    stored_at: float = 1_700_000_000.0,
    level: int = 0,
    analysis: dict[str, Any] | None = None,
    fingerprint: bytes | None = None,
    source: str = "service",
) -> LibraryRecord:
    """A record whose fields all derive from ``entry_id`` unless given."""
    return LibraryRecord(
        entry_id=entry_id,
        exact_key=f"exact-{entry_id}",
        scope=f"ctx:model:v1:{entry_id}",
        fingerprint=fingerprint if fingerprint is not None else entry_id.encode() + b"\x00\xff",
        analysis=analysis if analysis is not None else {"id": entry_id, "verdict": "ok"},
        level=level,
        stored_at=stored_at,
        source=source,
    )


def load_all(backend: LibraryBackend, cursor: int = 0, limit: int = 1000) -> list[LibraryRecord]:
    """Everything after ``cursor``, paging with ``limit``."""
    records: list[LibraryRecord] = []
    while True:
        page, new_cursor = backend.load_since(cursor, limit)
        if not page:
            assert new_cursor == cursor
            return records
        assert new_cursor > cursor
        records.extend(page)
        cursor = new_cursor


def ids(records: list[LibraryRecord]) -> list[str]:
    return [record.entry_id for record in records]


class LibraryBackendContract:
    """Contract tests; needs a ``backend`` fixture yielding a fresh, empty backend."""

    def test_empty_backend(self, backend: LibraryBackend) -> None:
        assert backend.count() == 0
        assert backend.load_since(0) == ([], 0)
        assert backend.get("nothing") is None

    def test_put_then_get_round_trips_every_field(self, backend: LibraryBackend) -> None:
        record = make_record(
            "meme/1:ctx:模型",
            stored_at=1_712_345_678.123456,
            level=2,
            analysis=UNICODE_ANALYSIS,
            fingerprint=bytes(range(256)) * 16,  # 4 KB, every byte value
            source="import",
        )
        backend.put(record)
        assert backend.get(record.entry_id) == record
        assert load_all(backend) == [record]

    def test_longest_entry_id_round_trips(self, backend: LibraryBackend) -> None:
        record = make_record("é" * 512)
        backend.put(record)
        assert backend.get(record.entry_id) == record

    def test_invalid_records_are_refused_and_not_stored(self, backend: LibraryBackend) -> None:
        bad = [
            make_record("x" * 513),
            make_record(""),
            make_record("nan", analysis={"score": float("nan")}),
            make_record("obj", analysis={"when": object()}),
            make_record("src", source="elsewhere"),
            make_record("lvl", level=-1),
        ]
        for record in bad:
            with pytest.raises((ValueError, TypeError)):
                backend.put(record)
        assert backend.count() == 0
        backend.put(make_record("fine"))
        assert backend.count() == 1

    def test_sequences_strictly_increase(self, backend: LibraryBackend) -> None:
        sequences = [backend.put(make_record(f"m{i}")) for i in range(5)]
        assert sequences == sorted(set(sequences))
        assert sequences[0] >= 1

    def test_upsert_replaces_and_bumps_sequence(self, backend: LibraryBackend) -> None:
        first = backend.put(make_record("a", level=2, analysis={"v": 1}))
        backend.put(make_record("b"))
        _, cursor = backend.load_since(0)
        replaced = make_record("a", level=0, analysis={"v": 2}, stored_at=1_800_000_000.0)
        second = backend.put(replaced)
        assert second > cursor > first
        assert backend.count() == 2
        assert backend.get("a") == replaced
        # A poller past the old version sees only the new one …
        assert backend.load_since(cursor) == ([replaced], second)
        # … and a full load lists it once, in its new (latest) position.
        assert ids(load_all(backend)) == ["b", "a"]

    def test_load_since_pages_oldest_first(self, backend: LibraryBackend) -> None:
        sequences = [backend.put(make_record(f"m{i}")) for i in range(10)]
        cursor = 0
        pages: list[list[str]] = []
        cursors: list[int] = []
        while True:
            page, cursor = backend.load_since(cursor, limit=3)
            if not page:
                break
            pages.append(ids(page))
            cursors.append(cursor)
        assert pages == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6", "m7", "m8"], ["m9"]]
        assert cursors == [sequences[2], sequences[5], sequences[8], sequences[9]]
        assert backend.load_since(cursor, limit=3) == ([], cursor)
        # A cursor in the middle resumes right after it.
        assert ids(backend.load_since(sequences[6])[0]) == ["m7", "m8", "m9"]
        # Polling picks up later writes.
        late = backend.put(make_record("late"))
        assert backend.load_since(cursor) == ([make_record("late")], late)

    def test_load_since_rejects_bad_arguments(self, backend: LibraryBackend) -> None:
        with pytest.raises(ValueError):
            backend.load_since(-1)
        with pytest.raises(ValueError):
            backend.load_since(0, limit=0)

    def test_delete_counts_only_existing(self, backend: LibraryBackend) -> None:
        for name in ("a", "b", "c"):
            backend.put(make_record(name))
        assert backend.delete(["a", "c", "missing", "a"]) == 2
        assert backend.delete([]) == 0
        assert backend.get("a") is None
        assert backend.count() == 1
        assert ids(load_all(backend)) == ["b"]

    def test_sequence_is_never_reused_after_delete(self, backend: LibraryBackend) -> None:
        backend.put(make_record("a"))
        last = backend.put(make_record("b"))
        _, cursor = backend.load_since(0)
        backend.delete(["b"])
        again = backend.put(make_record("c"))
        assert again > last
        # A poller already at the deleted record's sequence still gets the new one.
        assert ids(backend.load_since(cursor)[0]) == ["c"]

    def test_purge_older_than(self, backend: LibraryBackend) -> None:
        for i, stored_at in enumerate([100.0, 200.0, 300.0, 400.0]):
            backend.put(make_record(f"m{i}", stored_at=stored_at))
        assert backend.purge_older_than(300.0) == 2  # strictly older: 300 stays
        assert ids(load_all(backend)) == ["m2", "m3"]
        assert backend.purge_older_than(300.0) == 0
        assert backend.count() == 2
        # A record put again with a fresh time escapes the next purge.
        backend.put(make_record("m2", stored_at=1000.0))
        assert backend.purge_older_than(500.0) == 1
        assert ids(load_all(backend)) == ["m2"]

    def test_count_and_stats(self, backend: LibraryBackend) -> None:
        for i in range(3):
            backend.put(make_record(f"m{i}"))
        backend.put(make_record("m0"))
        assert backend.count() == 3
        stats = backend.stats()
        assert stats["kind"] == backend.kind
        assert stats["count"] == 3
        assert isinstance(stats["location"], str) and stats["location"]

    def test_stored_analysis_is_a_copy(self, backend: LibraryBackend) -> None:
        analysis: dict[str, Any] = {"labels": ["a"]}
        backend.put(make_record("m", analysis=analysis))
        analysis["labels"].append("changed")
        fetched = backend.get("m")
        assert fetched is not None and fetched.analysis == {"labels": ["a"]}
        fetched.analysis["labels"].append("changed too")
        again = backend.get("m")
        assert again is not None and again.analysis == {"labels": ["a"]}

    def test_concurrent_threads_putting(self, backend: LibraryBackend) -> None:
        threads_n, per_thread = 4, 25
        sequences: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(threads_n)

        def writer(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    sequence = backend.put(make_record(f"t{t}-{i}"))
                    with lock:
                        sequences.append(sequence)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not errors
        assert len(set(sequences)) == threads_n * per_thread
        assert backend.count() == threads_n * per_thread
        loaded = load_all(backend, limit=7)
        assert sorted(ids(loaded)) == sorted(
            f"t{t}-{i}" for t in range(threads_n) for i in range(per_thread)
        )
        # Each thread's records come back in the order that thread wrote them.
        for t in range(threads_n):
            mine = [eid for eid in ids(loaded) if eid.startswith(f"t{t}-")]
            assert mine == [f"t{t}-{i}" for i in range(per_thread)]

    def test_closed_backend_raises_unavailable(self, backend: LibraryBackend) -> None:
        backend.put(make_record("m"))
        backend.close()
        backend.close()  # idempotent
        with pytest.raises(LibraryUnavailable):
            backend.put(make_record("n"))
        with pytest.raises(LibraryUnavailable):
            backend.load_since(0)


class SharedStoreContract:
    """Contract for stores shared by several backend objects (processes); needs the
    ``open_on_store`` fixture (a callable opening another object on the same store)."""

    def test_objects_on_one_store_see_each_others_puts(self, open_on_store: OpenOnStore) -> None:
        writer, poller = open_on_store(), open_on_store()
        _, cursor = poller.load_since(0)
        first = writer.put(make_record("from-writer"))
        page, cursor = poller.load_since(cursor)
        assert (ids(page), cursor) == (["from-writer"], first)
        second = poller.put(make_record("from-poller"))
        assert second > first
        assert writer.get("from-poller") == make_record("from-poller")
        assert ids(writer.load_since(first)[0]) == ["from-poller"]
        assert writer.count() == poller.count() == 2
        assert writer.delete(["from-poller"]) == 1
        assert poller.get("from-poller") is None

    def test_reopen_after_close_keeps_everything(self, open_on_store: OpenOnStore) -> None:
        first = open_on_store()
        records = [make_record(f"m{i}", analysis=UNICODE_ANALYSIS, level=i) for i in range(5)]
        last = 0
        for record in records:
            last = first.put(record)
        first.close()
        reopened = open_on_store()
        assert load_all(reopened) == records
        assert reopened.count() == 5
        assert reopened.put(make_record("after-restart")) > last

    def test_poller_never_misses_concurrent_writes(self, open_on_store: OpenOnStore) -> None:
        """Writers on two objects race; a third object polling meanwhile sees every record.

        This holds only if sequence numbers become visible in increasing order.
        """
        writers = [open_on_store(), open_on_store()]
        poller = open_on_store()
        per_writer_thread, threads_per_writer = 30, 2
        done = threading.Event()
        errors: list[BaseException] = []
        seen: list[str] = []

        def write(backend: LibraryBackend, tag: str) -> None:
            try:
                for i in range(per_writer_thread):
                    backend.put(make_record(f"{tag}-{i}"))
            except BaseException as exc:
                errors.append(exc)

        def poll() -> None:
            cursor = 0
            try:
                while True:
                    finished = done.is_set()
                    page, cursor = poller.load_since(cursor, limit=5)
                    seen.extend(ids(page))
                    if finished and not page:
                        return
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(backend, f"w{w}t{t}"))
            for w, backend in enumerate(writers)
            for t in range(threads_per_writer)
        ]
        polling = threading.Thread(target=poll)
        polling.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        polling.join(timeout=60)
        assert not polling.is_alive()
        assert not errors
        expected = len(writers) * threads_per_writer * per_writer_thread
        assert len(seen) == expected  # every record once (none was put twice)
        assert len(set(seen)) == expected
