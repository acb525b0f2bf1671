"""The job store: one contract for the memory, SQLite and redis backends, then each one's own."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.jobs.store import (
    Claimed,
    JobStore,
    MemoryJobStore,
    NewItem,
    NewJob,
    RedisJobStore,
    SqliteJobStore,
    open_job_store,
)
from serve_app.library.backends import LibrarySchemaError, LibraryUnavailable, SqliteBackend
from tests.support.redis_server import running_redis

OpenStore = Callable[[], JobStore]

T0 = 1_700_000_000.25
LEASE = 30.0
OK: dict[str, Any] = {"status": 200, "result": {"label": "猫猫", "score": 0.5}}
BAD: dict[str, Any] = {"status": 400, "error": {"code": "bad_input", "message": "not an image"}}


def make_items(n: int, prefix: str = "m") -> list[NewItem]:
    """``n`` items; odd ones carry text, every third its own policy."""
    return [
        NewItem(
            item_id=f"{prefix}{i}",
            image=f"image-{prefix}-{i}".encode(),
            text=f"配文 {i}" if i % 2 else None,
            policy="strict" if i % 3 == 2 else None,
        )
        for i in range(n)
    ]


def create(
    store: JobStore,
    n: int,
    now: float = T0,
    *,
    owner: str | None = "key-a",
    policy: str | None = "default",
    callback_url: str | None = None,
    prefix: str = "m",
) -> str:
    job = NewJob(owner=owner, policy=policy, callback_url=callback_url, total=n)
    return store.create(job, make_items(n, prefix), now)


def drain(store: JobStore, worker: str, now: float, limit: int = 100) -> list[Claimed]:
    """Claim until nothing is left at ``now``."""
    out: list[Claimed] = []
    while batch := store.claim(worker, limit, LEASE, now):
        out.extend(batch)
    return out


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One throw-away redis-server for the module (skips, or fails under
    MEMESERVE_REQUIRE_REDIS=1, without the binary)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _opener(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Open stores of ``kind`` on one place (one file, one redis prefix); all closed after."""
    opened: list[JobStore] = []
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{uuid.uuid4().hex}:"

        def open_one() -> JobStore:
            opened.append(open_job_store("redis", redis_url=url, redis_prefix=prefix))
            return opened[-1]
    elif kind == "sqlite":

        def open_one() -> JobStore:
            opened.append(open_job_store("sqlite", sqlite_path=tmp_path / "nested" / "jobs.db"))
            return opened[-1]
    else:
        shared = open_job_store("memory")
        opened.append(shared)

        def open_one() -> JobStore:
            return shared

    yield open_one
    for store in opened:
        store.close()


# --------------------------------------------------------------------------- the contract


class TestJobStoreContract:
    """What every backend promises; each test runs on memory, SQLite and redis."""

    @pytest.fixture(params=["memory", "sqlite", "redis"])
    def open_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
        yield from _opener(request.param, request, tmp_path)

    @pytest.fixture
    def store(self, open_store: OpenStore) -> JobStore:
        return open_store()

    def test_create_then_get(self, store: JobStore) -> None:
        job_id = create(store, 3, callback_url="https://hooks.example.com/x")
        assert len(job_id) == 32 and int(job_id, 16) >= 0
        view = store.get(job_id)
        assert view is not None
        assert (view.id, view.owner, view.state) == (job_id, "key-a", "queued")
        assert view.policy == "default"
        assert (view.created_at, view.finished_at) == (T0, None)
        assert (view.total, view.done, view.failed) == (3, 0, 0)
        assert view.callback.url == "https://hooks.example.com/x"
        assert view.callback.state == "pending"
        assert (view.callback.attempts, view.callback.last_error) == (0, None)
        assert (view.callback.delivered_at, view.callback.next_attempt_at) == (None, None)
        assert view.as_dict()["callback"]["state"] == "pending"
        assert store.get(uuid.uuid4().hex) is None

    def test_job_without_callback_or_owner(self, store: JobStore) -> None:
        job_id = create(store, 1, owner=None, policy=None)
        view = store.get(job_id)
        assert view is not None
        assert (view.owner, view.policy) == (None, None)
        assert (view.callback.url, view.callback.state) == (None, "none")

    @pytest.mark.parametrize(
        ("job", "items", "reason"),
        [
            (NewJob(total=2), make_items(3), "total"),
            (NewJob(total=0), [], "at least one item"),
            (NewJob(total=1), [NewItem("a", b"")], "image"),
            (NewJob(total=1, callback_url=""), make_items(1), "callback_url"),
            (NewJob(total=1, owner="x" * 513), make_items(1), "owner"),
        ],
    )
    def test_create_refuses_bad_jobs_and_stores_nothing(
        self, store: JobStore, job: NewJob, items: list[NewItem], reason: str
    ) -> None:
        with pytest.raises(ValueError, match=reason):
            store.create(job, items, T0)
        assert store.open_jobs(job.owner) == 0
        assert store.claim("w", 10, LEASE, T0) == []

    def test_claim_hands_out_items_in_order_with_their_data(self, store: JobStore) -> None:
        job_id = create(store, 5)
        first = store.claim("w1", 3, LEASE, T0 + 1)
        assert [(c.job_id, c.index, c.item_id) for c in first] == [
            (job_id, 0, "m0"),
            (job_id, 1, "m1"),
            (job_id, 2, "m2"),
        ]
        assert first[1].image == b"image-m-1"
        assert (first[0].text, first[1].text) == (None, "配文 1")
        # The item's policy, else the job's.
        assert [c.policy for c in first] == ["default", "default", "strict"]
        assert {c.attempt for c in first} == {1}
        view = store.get(job_id)
        assert view is not None and view.state == "running"
        rest = store.claim("w2", 10, LEASE, T0 + 1)
        assert [c.index for c in rest] == [3, 4]
        assert store.claim("w3", 10, LEASE, T0 + 1) == []

    def test_oldest_job_first(self, store: JobStore) -> None:
        older = create(store, 3, T0, prefix="a")
        newer = create(store, 3, T0 + 1, prefix="b")
        claimed = store.claim("w", 4, LEASE, T0 + 2)
        assert [(c.job_id, c.index) for c in claimed] == [
            (older, 0),
            (older, 1),
            (older, 2),
            (newer, 0),
        ]

    def test_claim_checks_its_arguments(self, store: JobStore) -> None:
        create(store, 1)
        for worker, limit, lease in (("", 1, 1.0), ("w", 0, 1.0), ("w", 1, 0.0)):
            with pytest.raises(ValueError):
                store.claim(worker, limit, lease, T0)
        assert len(store.claim("w", 1, 1.0, T0)) == 1

    def test_complete_records_results_and_finishes_the_job(self, store: JobStore) -> None:
        job_id = create(store, 2, callback_url="https://hooks.example.com/")
        a, b = store.claim("w", 2, LEASE, T0 + 1)
        assert store.complete(job_id, a.index, "w", OK, T0 + 2)
        view = store.get(job_id)
        assert view is not None
        assert (view.state, view.done, view.failed, view.finished_at) == ("running", 1, 0, None)
        assert store.callbacks_due(T0 + 100) == []
        assert store.complete(job_id, b.index, "w", BAD, T0 + 3)
        view = store.get(job_id)
        assert view is not None
        assert (view.state, view.done, view.failed, view.finished_at) == ("done", 2, 1, T0 + 3)
        assert view.callback.next_attempt_at == T0 + 3
        assert [due.id for due in store.callbacks_due(T0 + 3)] == [job_id]
        assert store.results(job_id) == [
            {"id": "m0", **OK},
            {"id": "m1", **BAD},
        ]
        assert store.open_jobs("key-a") == 0

    def test_complete_is_refused_without_the_lease(self, store: JobStore) -> None:
        job_id = create(store, 3)
        (held,) = store.claim("w1", 1, LEASE, T0)
        refused = [
            (job_id, held.index, "w2"),  # someone else's item
            (job_id, 1, "w1"),  # never claimed
            (job_id, 99, "w1"),  # no such item
            (job_id, -1, "w1"),
            (uuid.uuid4().hex, 0, "w1"),  # no such job
        ]
        for job, index, worker in refused:
            assert not store.complete(job, index, worker, OK, T0 + 1)
        assert not store.complete(job_id, held.index, "w1", OK, T0 + LEASE)  # lease ended
        view = store.get(job_id)
        assert view is not None and view.done == 0
        assert store.results(job_id) == []

    def test_a_malformed_outcome_changes_nothing(self, store: JobStore) -> None:
        job_id = create(store, 1)
        (held,) = store.claim("w", 1, LEASE, T0)
        for outcome in (
            {"status": 200},
            {"status": 200, "result": {}, "error": {}},
            {"status": "200", "result": {}},
            {"status": 200, "result": {"x": float("nan")}},
            {"status": 200, "result": [1]},
            {"status": 200, "result": {}, "extra": 1},
        ):
            with pytest.raises(ValueError):
                store.complete(job_id, held.index, "w", outcome, T0 + 1)
        assert store.complete(job_id, held.index, "w", OK, T0 + 1)

    def test_an_expired_lease_is_reclaimed_and_the_old_worker_refused(
        self, store: JobStore
    ) -> None:
        job_id = create(store, 1)
        (first,) = store.claim("w1", 1, 10.0, T0)
        assert store.claim("w2", 1, 10.0, T0 + 9.9) == []
        (second,) = store.claim("w2", 1, 10.0, T0 + 10.0)
        assert (second.index, second.attempt) == (first.index, 2)
        assert not store.complete(job_id, first.index, "w1", OK, T0 + 10.5)
        store.release(job_id, first.index, "w1", T0)  # not w1's any more: no effect
        assert store.claim("w3", 1, 10.0, T0 + 11) == []
        assert store.complete(job_id, second.index, "w2", BAD, T0 + 11)
        assert store.results(job_id) == [{"id": "m0", **BAD}]

    def test_release_gives_an_item_back_until_retry_at(self, store: JobStore) -> None:
        job_id = create(store, 2)
        a, _b = store.claim("w1", 2, 1000.0, T0)  # b stays leased throughout
        store.release(job_id, a.index, "w1", T0 + 60)
        assert not store.complete(job_id, a.index, "w1", OK, T0 + 1)
        assert store.claim("w2", 5, LEASE, T0 + 59) == []
        (again,) = store.claim("w2", 5, LEASE, T0 + 60)
        assert (again.index, again.attempt, again.image) == (a.index, 2, a.image)
        store.release(job_id, again.index, "w1", T0)  # w1 holds nothing: no effect
        assert store.claim("w3", 5, LEASE, T0 + 61) == []
        assert store.complete(job_id, again.index, "w2", OK, T0 + 61)

    def test_cancel(self, store: JobStore) -> None:
        job_id = create(store, 4, callback_url="https://hooks.example.com/")
        a, b = store.claim("w", 2, LEASE, T0)
        assert store.complete(job_id, a.index, "w", OK, T0 + 1)
        assert store.open_jobs("key-a") == 1
        assert store.cancel(job_id, T0 + 2)
        view = store.get(job_id)
        assert view is not None
        assert (view.state, view.finished_at, view.done) == ("cancelled", T0 + 2, 1)
        assert store.open_jobs("key-a") == 0
        assert not store.complete(job_id, b.index, "w", OK, T0 + 3)
        store.release(job_id, b.index, "w", T0)
        assert store.claim("w", 10, LEASE, T0 + 100) == []
        assert store.results(job_id) == [{"id": "m0", **OK}]
        assert [due.id for due in store.callbacks_due(T0 + 2)] == [job_id]
        assert not store.cancel(job_id, T0 + 4)
        assert not store.cancel(uuid.uuid4().hex, T0 + 4)

    def test_a_finished_job_cannot_be_cancelled(self, store: JobStore) -> None:
        job_id = create(store, 1)
        (held,) = store.claim("w", 1, LEASE, T0)
        assert store.complete(job_id, held.index, "w", OK, T0 + 1)
        assert not store.cancel(job_id, T0 + 2)
        view = store.get(job_id)
        assert view is not None and view.state == "done"

    def test_claims_skip_cancelled_jobs(self, store: JobStore) -> None:
        cancelled = create(store, 2, prefix="a")
        kept = create(store, 2, T0 + 1, prefix="b")
        assert store.cancel(cancelled, T0 + 2)
        claimed = store.claim("w", 10, LEASE, T0 + 3)
        assert [(c.job_id, c.item_id) for c in claimed] == [(kept, "b0"), (kept, "b1")]

    def test_results_are_in_item_order_and_paged(self, store: JobStore) -> None:
        job_id = create(store, 7)
        claimed = {c.index: c for c in store.claim("w", 7, LEASE, T0)}
        for index in (6, 2, 0, 4, 1, 5, 3):
            outcome = BAD if index % 3 == 0 else {"status": 200, "result": {"n": index}}
            assert store.complete(job_id, claimed[index].index, "w", outcome, T0 + 1 + index)
        everything = store.results(job_id, 0, 100)
        assert [row["id"] for row in everything] == [f"m{i}" for i in range(7)]
        assert everything[1] == {"id": "m1", "status": 200, "result": {"n": 1}}
        assert everything[3] == {"id": "m3", **BAD}
        pages = [store.results(job_id, offset, 3) for offset in (0, 3, 6, 9)]
        assert [len(page) for page in pages] == [3, 3, 1, 0]
        assert [row for page in pages for row in page] == everything
        view = store.get(job_id)
        assert view is not None and (view.done, view.failed) == (7, 3)
        assert store.results(uuid.uuid4().hex) == []
        with pytest.raises(ValueError):
            store.results(job_id, -1, 10)
        with pytest.raises(ValueError):
            store.results(job_id, 0, 0)

    def test_results_skip_items_not_completed(self, store: JobStore) -> None:
        job_id = create(store, 4)
        claimed = store.claim("w", 4, LEASE, T0)
        for c in (claimed[3], claimed[1]):
            assert store.complete(job_id, c.index, "w", OK, T0 + 1)
        assert [row["id"] for row in store.results(job_id)] == ["m1", "m3"]
        assert [row["id"] for row in store.results(job_id, 1, 5)] == ["m3"]

    def test_open_jobs_counts_queued_and_running_per_owner(self, store: JobStore) -> None:
        a1 = create(store, 1, owner="a")
        create(store, 1, owner="a")
        create(store, 1, owner="b")
        create(store, 1, owner=None)
        assert [store.open_jobs(o) for o in ("a", "b", None, "c")] == [2, 1, 1, 0]
        claimed = store.claim("w", 1, LEASE, T0)  # a1 becomes running: still open
        assert store.open_jobs("a") == 2
        assert store.complete(a1, claimed[0].index, "w", OK, T0 + 1)
        assert store.open_jobs("a") == 1

    def test_callback_is_claimed_by_one_worker_and_recorded(self, store: JobStore) -> None:
        job_id = create(store, 1, callback_url="https://hooks.example.com/")
        assert not store.claim_callback(job_id, "r1", 10.0, T0)  # the job is not finished
        (held,) = store.claim("w", 1, LEASE, T0)
        assert store.complete(job_id, held.index, "w", OK, T0 + 1)
        assert store.callbacks_due(T0 + 0.5) == []
        assert not store.claim_callback(job_id, "r1", 10.0, T0 + 0.5)  # not due yet
        assert store.claim_callback(job_id, "r1", 10.0, T0 + 1)
        assert not store.claim_callback(job_id, "r2", 10.0, T0 + 2)
        assert store.callbacks_due(T0 + 2) == []  # leased to r1
        assert store.claim_callback(job_id, "r1", 10.0, T0 + 2)  # its holder may renew
        assert store.claim_callback(job_id, "r2", 10.0, T0 + 12)  # r1's lease ended
        store.record_callback(job_id, False, "HTTP 500", T0 + 100, T0 + 13)
        view = store.get(job_id)
        assert view is not None
        cb = view.callback
        assert (cb.state, cb.attempts, cb.last_error, cb.next_attempt_at) == (
            "pending",
            1,
            "HTTP 500",
            T0 + 100,
        )
        assert store.callbacks_due(T0 + 99) == []
        assert not store.claim_callback(job_id, "r1", 10.0, T0 + 99)
        assert [due.id for due in store.callbacks_due(T0 + 100)] == [job_id]
        assert store.claim_callback(job_id, "r1", 10.0, T0 + 100)
        store.record_callback(job_id, True, None, None, T0 + 101)
        view = store.get(job_id)
        assert view is not None
        cb = view.callback
        assert (cb.state, cb.attempts, cb.last_error, cb.delivered_at, cb.next_attempt_at) == (
            "delivered",
            2,
            "HTTP 500",
            T0 + 101,
            None,
        )
        assert store.callbacks_due(T0 + 1000) == []
        assert not store.claim_callback(job_id, "r1", 10.0, T0 + 1000)
        store.record_callback(job_id, False, "late", T0 + 2000, T0 + 1000)  # no effect
        view = store.get(job_id)
        assert view is not None and view.callback.attempts == 2

    def test_callback_given_up_is_failed(self, store: JobStore) -> None:
        job_id = create(store, 1, callback_url="https://hooks.example.com/")
        assert store.cancel(job_id, T0)
        assert store.claim_callback(job_id, "r", 10.0, T0)
        store.record_callback(job_id, False, "ConnectError: refused " + "x" * 2000, None, T0 + 1)
        view = store.get(job_id)
        assert view is not None
        cb = view.callback
        assert (cb.state, cb.attempts, cb.next_attempt_at) == ("failed", 1, None)
        assert cb.last_error is not None and cb.last_error.startswith("ConnectError: refused")
        assert len(cb.last_error) <= 500
        assert store.callbacks_due(T0 + 1000) == []

    def test_jobs_without_callback_are_never_due(self, store: JobStore) -> None:
        job_id = create(store, 1)
        assert store.cancel(job_id, T0)
        assert store.callbacks_due(T0 + 1000) == []
        assert not store.claim_callback(job_id, "r", 10.0, T0 + 1000)
        store.record_callback(job_id, True, None, None, T0 + 1)
        view = store.get(job_id)
        assert view is not None and view.callback.state == "none"

    def test_callbacks_due_most_overdue_first_and_limited(self, store: JobStore) -> None:
        ids = [create(store, 1, callback_url="http://h.example.com/", prefix=p) for p in "abc"]
        for offset, job_id in zip((3, 1, 2), ids, strict=True):
            assert store.cancel(job_id, T0 + offset)
        assert [v.id for v in store.callbacks_due(T0 + 5)] == [ids[1], ids[2], ids[0]]
        assert [v.id for v in store.callbacks_due(T0 + 5, limit=2)] == [ids[1], ids[2]]
        assert [v.id for v in store.callbacks_due(T0 + 2)] == [ids[1], ids[2]]

    def test_purge_deletes_old_finished_jobs_only(self, store: JobStore) -> None:
        old_done = create(store, 1, prefix="a")
        old_cancelled = create(store, 2, prefix="b", callback_url="https://hooks.example.com/")
        recent = create(store, 1, prefix="c")
        still_open = create(store, 1, prefix="d")
        (a,) = store.claim("w", 1, LEASE, T0)
        assert store.complete(old_done, a.index, "w", OK, T0 + 1)
        assert store.cancel(old_cancelled, T0 + 2)
        (c,) = store.claim("w", 1, LEASE, T0 + 3)
        assert store.complete(recent, c.index, "w", OK, T0 + 10)
        assert store.purge(T0 + 10) == 2
        assert store.get(old_done) is None and store.get(old_cancelled) is None
        assert store.results(old_done) == []
        assert store.callbacks_due(T0 + 100) == []
        assert store.get(recent) is not None and store.get(still_open) is not None
        assert store.purge(T0 + 10) == 0
        assert [row["id"] for row in store.results(recent)] == ["c0"]
        assert [c.item_id for c in store.claim("w", 5, LEASE, T0 + 11)] == ["d0"]

    def test_concurrent_claims_never_share_an_item(self, open_store: OpenStore) -> None:
        stores = [open_store(), open_store()]
        job_ids = {create(stores[0], 150, prefix="a"), create(stores[1], 150, prefix="b")}
        threads_per_store = 3
        barrier = threading.Barrier(len(stores) * threads_per_store)
        claimed: list[list[Claimed]] = []
        errors: list[BaseException] = []

        def work(store: JobStore, worker: str) -> None:
            mine: list[Claimed] = []
            claimed.append(mine)
            try:
                barrier.wait()
                while batch := store.claim(worker, 7, 3600.0, T0 + 1):
                    mine.extend(batch)
                    for item in batch:
                        assert store.complete(item.job_id, item.index, worker, OK, T0 + 2)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=(store, f"w{n}-{k}"))
            for n, store in enumerate(stores)
            for k in range(threads_per_store)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        keys = [(c.job_id, c.index) for mine in claimed for c in mine]
        assert len(keys) == len(set(keys)) == 300
        assert {job_id for job_id, _ in keys} == job_ids
        assert {c.attempt for mine in claimed for c in mine} == {1}
        for job_id in job_ids:
            view = stores[1].get(job_id)
            assert view is not None and (view.state, view.done) == ("done", 150)

    def test_two_store_objects_see_the_same_jobs(self, open_store: OpenStore) -> None:
        first, second = open_store(), open_store()
        job_id = create(first, 2, callback_url="https://hooks.example.com/")
        (held,) = second.claim("w", 1, LEASE, T0)
        assert held.job_id == job_id
        assert not first.complete(job_id, held.index, "other", OK, T0 + 1)
        assert first.complete(job_id, held.index, "w", OK, T0 + 1)
        assert second.results(job_id) == [{"id": "m0", **OK}]
        assert second.open_jobs("key-a") == 1

    def test_ten_thousand_items_in_batches_of_a_hundred(self, store: JobStore) -> None:
        n = 10_000
        items = [NewItem(item_id=f"i{i}", image=i.to_bytes(2, "big") + b"\xff") for i in range(n)]
        job_id = store.create(NewJob(owner="bulk", total=n), items, T0)
        seen: list[int] = []
        while batch := store.claim("w", 100, LEASE, T0 + 1):
            assert len(batch) == 100
            for item in batch:
                assert item.image == items[item.index].image
                assert store.complete(job_id, item.index, "w", OK, T0 + 2)
            seen.extend(item.index for item in batch)
        assert sorted(seen) == list(range(n))
        view = store.get(job_id)
        assert view is not None and (view.state, view.done, view.failed) == ("done", n, 0)
        pages = [store.results(job_id, offset, 1000) for offset in range(0, n, 1000)]
        ids = [row["id"] for page in pages for row in page]
        assert ids == [f"i{i}" for i in range(n)]

    @pytest.mark.parametrize("odd", ["", "*", "../x", "A" * 32, "0" * 31, "open", "0" * 32])
    def test_unknown_or_crafted_job_ids_are_unknown(self, store: JobStore, odd: str) -> None:
        job_id = create(store, 1, callback_url="https://hooks.example.com/")
        (held,) = store.claim("w", 1, LEASE, T0)
        assert store.get(odd) is None
        assert store.results(odd) == []
        assert not store.complete(odd, 0, "w", OK, T0 + 1)
        store.release(odd, 0, "w", T0)
        assert not store.cancel(odd, T0 + 1)
        assert not store.claim_callback(odd, "r", 10.0, T0 + 1)
        store.record_callback(odd, True, None, None, T0 + 1)
        assert store.complete(job_id, held.index, "w", OK, T0 + 1)
        view = store.get(job_id)
        assert view is not None and (view.state, view.callback.state) == ("done", "pending")

    def test_a_closed_store_is_unavailable(self, store: JobStore) -> None:
        job_id = create(store, 1)
        store.close()
        store.close()  # idempotent
        with pytest.raises(LibraryUnavailable):
            store.get(job_id)
        with pytest.raises(LibraryUnavailable):
            store.claim("w", 1, LEASE, T0)

    def test_describe_names_the_kind(self, store: JobStore) -> None:
        assert store.describe()["kind"] == store.kind


# --------------------------------------------------------------------------- SQLite


def test_sqlite_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    done = create(store, 1, prefix="d", callback_url="https://hooks.example.com/")
    job_id = create(store, 4, callback_url="https://hooks.example.com/")
    (d,) = store.claim("w", 1, LEASE, T0)
    assert store.complete(done, d.index, "w", OK, T0 + 2)
    a, b = store.claim("w", 2, LEASE, T0)
    assert store.complete(job_id, a.index, "w", BAD, T0 + 1)
    store.record_callback(done, False, "HTTP 502", T0 + 50, T0 + 3)
    before = (store.get(job_id), store.get(done), store.results(job_id))
    store.close()

    reopened = SqliteJobStore(path)
    try:
        assert (reopened.get(job_id), reopened.get(done), reopened.results(job_id)) == before
        # b is still leased to w (until T0 + LEASE); the rest resume where they were.
        assert [c.index for c in reopened.claim("w2", 10, LEASE, T0 + 5)] == [2, 3]
        assert reopened.complete(job_id, b.index, "w", OK, T0 + 6)
        assert [v.id for v in reopened.callbacks_due(T0 + 50)] == [done]
        assert reopened.open_jobs("key-a") == 1
    finally:
        reopened.close()


def test_sqlite_frees_images_of_completed_and_cancelled_items(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteJobStore(path) as store:
        job_id = create(store, 3)
        (a,) = store.claim("w", 1, LEASE, T0)
        assert store.complete(job_id, a.index, "w", OK, T0 + 1)
        with sqlite3.connect(path) as conn:
            images = [row[0] for row in conn.execute("SELECT image FROM job_items ORDER BY idx")]
        assert images == [None, b"image-m-1", b"image-m-2"]
        assert store.cancel(job_id, T0 + 2)
        with sqlite3.connect(path) as conn:
            images = [row[0] for row in conn.execute("SELECT image FROM job_items")]
        assert images == [None, None, None]


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO jobs_schema (version) VALUES (99)")
    with pytest.raises(LibrarySchemaError, match="99"):
        SqliteJobStore(path)


def test_sqlite_shares_a_file_with_the_library(tmp_path: Path) -> None:
    path = tmp_path / "memeserve.db"
    library = SqliteBackend(path)
    store = SqliteJobStore(path)
    try:
        assert library.count() == 0
        job_id = create(store, 1)
        assert store.get(job_id) is not None
    finally:
        store.close()
        library.close()
    with SqliteJobStore(path) as again:
        assert again.get(job_id) is not None


def test_sqlite_unusable_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LibraryUnavailable):
        SqliteJobStore(blocker / "jobs.db")


# --------------------------------------------------------------------------- redis


def test_redis_frees_images_and_keeps_prefixes_apart(redis_url: str) -> None:
    import redis

    prefix = f"test:{uuid.uuid4().hex}:"
    store = RedisJobStore(redis_url, prefix)
    other = RedisJobStore(redis_url, f"test:{uuid.uuid4().hex}:")
    client = redis.Redis.from_url(redis_url)
    try:
        job_id = create(store, 2)
        assert other.get(job_id) is None and other.claim("w", 10, LEASE, T0) == []
        (a,) = store.claim("w", 1, LEASE, T0)
        assert store.complete(job_id, a.index, "w", OK, T0 + 1)
        keys = [f"{prefix}jobs:i:{job_id}:{i:010d}" for i in range(2)]
        assert [client.hget(key, "image") for key in keys] == [None, b"image-m-1"]
        assert store.cancel(job_id, T0 + 2)
        assert [client.hget(key, "image") for key in keys] == [None, None]
        assert store.purge(T0 + 3) == 1
        assert client.keys(f"{prefix}*") == [f"{prefix}jobs:counter".encode()]
    finally:
        client.close()
        store.close()
        other.close()


def test_redis_construction_does_not_connect_and_hides_password() -> None:
    store = RedisJobStore("redis://user:s3cret@127.0.0.1:1/0", "p:", connect_timeout_s=0.5)
    described = store.describe()
    assert "s3cret" not in str(described)
    assert described["location"] == "redis://user:***@127.0.0.1:1/0"
    with pytest.raises(LibraryUnavailable, match=r"127\.0\.0\.1:1/") as caught:
        store.get(uuid.uuid4().hex)
    assert "s3cret" not in str(caught.value)
    store.close()


# --------------------------------------------------------------------------- opening


def test_open_job_store_checks_its_arguments(tmp_path: Path) -> None:
    assert isinstance(open_job_store("memory"), MemoryJobStore)
    with pytest.raises(ValueError, match="sqlite_path"):
        open_job_store("sqlite")
    with pytest.raises(ValueError, match="redis_url"):
        open_job_store("redis")
    with pytest.raises(ValueError, match="unknown"):
        open_job_store("postgres")  # type: ignore[arg-type]
    with open_job_store("sqlite", sqlite_path=tmp_path / "j.db") as store:
        assert isinstance(store, SqliteJobStore)
