"""The SQLite job store: two tables in an embedded file (WAL), shared by processes on a host."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from serve_app.jobs.store.base import (
    JOB_FIELDS,
    Claimed,
    JobStore,
    JobView,
    NewItem,
    NewJob,
    check_claim,
    check_lease,
    check_new_job,
    check_page,
    check_worker,
    encode_outcome,
    job_view_from_fields,
    new_job_fields,
    new_job_id,
    result_row,
    short_error,
)
from serve_app.library.backends.plumbing import (
    SqliteConnection,
    check_columns,
    check_schema_version,
    table_schema_version,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final[int] = 1

_JOBS_SQL: Final[str] = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    owner TEXT, policy TEXT, callback_url TEXT,
    state TEXT NOT NULL, cb_state TEXT NOT NULL, cb_last_error TEXT, cb_worker TEXT,
    total INTEGER NOT NULL, done INTEGER NOT NULL, failed INTEGER NOT NULL,
    cb_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL, finished_at REAL, cb_delivered_at REAL, cb_next_at REAL,
    cb_lease_until REAL
)"""
# ready_at: when the item may be claimed (never claimed: 0; given back: its retry time;
# leased: the end of the lease); NULL once it is done or its job cancelled.
_ITEMS_SQL: Final[str] = """
CREATE TABLE IF NOT EXISTS job_items (
    job_seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    item_id TEXT NOT NULL, image BLOB, text TEXT, policy TEXT,
    state TEXT NOT NULL, worker TEXT, ready_at REAL, attempt INTEGER NOT NULL,
    status INTEGER, outcome TEXT,
    PRIMARY KEY (job_seq, idx)
)"""
_INDEXES: Final[tuple[str, ...]] = (
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, state)",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (cb_next_at) WHERE cb_state = 'pending'",
    "CREATE INDEX IF NOT EXISTS job_items_ready ON job_items (job_seq, ready_at, idx) "
    "WHERE ready_at IS NOT NULL",
)
_JOB_COLUMNS: Final[frozenset[str]] = frozenset({"seq", "job_id", *JOB_FIELDS})
_ITEM_COLUMNS: Final[frozenset[str]] = frozenset(
    {"job_seq", "idx", "item_id", "image", "text", "policy", "state", "worker", "ready_at"}
    | {"attempt", "status", "outcome"}
)
_OPEN: Final[str] = "('queued', 'running')"
_FINISHED: Final[str] = "('done', 'cancelled')"
_SELECT_JOB: Final[str] = f"SELECT job_id, {', '.join(JOB_FIELDS)} FROM jobs"


def _view(row: Sequence[Any]) -> JobView:
    return job_view_from_fields(row[0], dict(zip(JOB_FIELDS, row[1:], strict=True)))


class SqliteJobStore(JobStore):
    """Jobs in the ``jobs`` and ``job_items`` tables of a SQLite file in WAL mode.

    One connection per store object, guarded by a lock, so threads may share it;
    processes on one host may share the file (writers wait up to ``busy_timeout_s`` for
    each other). Every write, claims included, is one ``BEGIN IMMEDIATE`` transaction, so
    two claims never see the same item free. The tables and their version row (table
    ``jobs_schema``) leave ``PRAGMA user_version`` alone, so the file may also hold a
    fingerprint library or scenes log; a newer version is refused with
    :class:`~serve_app.library.backends.LibrarySchemaError`.
    """

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._db = SqliteConnection(
            self.path, "job store", self._setup, busy_timeout_s=busy_timeout_s, logger=logger
        )

    def _setup(self, conn: sqlite3.Connection) -> None:
        version = table_schema_version(conn, "jobs")
        check_schema_version(version, SCHEMA_VERSION, f"job store {self.path}")
        conn.execute(_JOBS_SQL)
        conn.execute(_ITEMS_SQL)
        for statement in _INDEXES:
            conn.execute(statement)
        if version == 0:
            conn.execute("INSERT INTO jobs_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            logger.info("created job store in %s", self.path)
        for table, expected in (("jobs", _JOB_COLUMNS), ("job_items", _ITEM_COLUMNS)):
            check_columns(conn, table, expected, f"job store {self.path}: table {table}")

    def create(self, job: NewJob, items: Sequence[NewItem], now: float) -> str:
        check_new_job(job, items)
        job_id = new_job_id()
        fields = new_job_fields(job, now)
        names = ", ".join(fields)
        marks = ", ".join(f":{name}" for name in fields)
        with self._db.transaction() as conn:
            seq = conn.execute(
                f"INSERT INTO jobs (job_id, {names}) VALUES (:job_id, {marks})",
                {"job_id": job_id, **fields},
            ).lastrowid
            conn.executemany(
                "INSERT INTO job_items (job_seq, idx, item_id, image, text, policy, state, "
                "ready_at, attempt) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, 0)",
                (
                    (seq, index, item.item_id, bytes(item.image), item.text, item.policy)
                    for index, item in enumerate(items)
                ),
            )
        return job_id

    def claim(self, worker: str, limit: int, lease_s: float, now: float) -> list[Claimed]:
        check_claim(worker, limit, lease_s)
        lease_until = float(now) + lease_s
        claimed: list[Claimed] = []
        with self._db.transaction() as conn:
            jobs = conn.execute(
                f"SELECT seq, job_id, policy, state FROM jobs WHERE state IN {_OPEN} ORDER BY seq"
            ).fetchall()
            for seq, job_id, job_policy, state in jobs:
                rows = conn.execute(
                    "SELECT idx, item_id, image, text, policy, attempt FROM job_items "
                    "WHERE job_seq = ? AND ready_at <= ? ORDER BY ready_at, idx LIMIT ?",
                    (seq, float(now), limit - len(claimed)),
                ).fetchall()
                if not rows:
                    continue
                conn.executemany(
                    "UPDATE job_items SET state = 'leased', worker = ?, ready_at = ?, "
                    "attempt = attempt + 1 WHERE job_seq = ? AND idx = ?",
                    ((worker, lease_until, seq, row[0]) for row in rows),
                )
                if state == "queued":
                    conn.execute("UPDATE jobs SET state = 'running' WHERE seq = ?", (seq,))
                claimed.extend(
                    Claimed(
                        job_id=job_id,
                        index=int(index),
                        item_id=item_id,
                        image=bytes(image),
                        text=text,
                        policy=policy if policy is not None else job_policy,
                        attempt=int(attempt) + 1,
                    )
                    for index, item_id, image, text, policy, attempt in rows
                )
                if len(claimed) >= limit:
                    break
        return claimed

    def complete(
        self, job_id: str, index: int, worker: str, outcome: Mapping[str, Any], now: float
    ) -> bool:
        status, encoded = encode_outcome(outcome)
        with self._db.transaction() as conn:
            updated = conn.execute(
                "UPDATE job_items SET state = 'done', worker = NULL, ready_at = NULL, "
                "image = NULL, status = ?, outcome = ? "
                f"WHERE job_seq = (SELECT seq FROM jobs WHERE job_id = ? AND state IN {_OPEN}) "
                "AND idx = ? AND state = 'leased' AND worker = ? AND ready_at > ?",
                (status, encoded, job_id, index, worker, float(now)),
            ).rowcount
            if not updated:
                return False
            # Right-hand sides see the row's old values: "done + 1" is the new count.
            conn.execute(
                "UPDATE jobs SET done = done + 1, failed = failed + :failed, "
                "state = CASE WHEN done + 1 >= total THEN 'done' ELSE state END, "
                "finished_at = CASE WHEN done + 1 >= total THEN :now ELSE finished_at END, "
                "cb_next_at = CASE WHEN done + 1 >= total AND cb_state = 'pending' "
                "THEN :now ELSE cb_next_at END WHERE job_id = :job_id",
                {"failed": int(status != 200), "now": float(now), "job_id": job_id},
            )
        return True

    def release(self, job_id: str, index: int, worker: str, retry_at: float) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE job_items SET state = 'pending', worker = NULL, ready_at = ? "
                f"WHERE job_seq = (SELECT seq FROM jobs WHERE job_id = ? AND state IN {_OPEN}) "
                "AND idx = ? AND state = 'leased' AND worker = ?",
                (float(retry_at), job_id, index, worker),
            )

    def cancel(self, job_id: str, now: float) -> bool:
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = :now, "
                "cb_next_at = CASE WHEN cb_state = 'pending' THEN :now ELSE cb_next_at END "
                f"WHERE job_id = :job_id AND state IN {_OPEN} RETURNING seq",
                {"now": float(now), "job_id": job_id},
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE job_items SET state = 'cancelled', worker = NULL, ready_at = NULL, "
                "image = NULL WHERE job_seq = ? AND state != 'done'",
                (row[0],),
            )
        return True

    def get(self, job_id: str) -> JobView | None:
        with self._db.locked() as conn:
            row = conn.execute(f"{_SELECT_JOB} WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _view(row)

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        check_page(offset, limit)
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT item_id, status, outcome FROM job_items "
                "WHERE job_seq = (SELECT seq FROM jobs WHERE job_id = ?) AND state = 'done' "
                "ORDER BY idx LIMIT ? OFFSET ?",
                (job_id, limit, offset),
            ).fetchall()
        return [result_row(*row) for row in rows]

    def open_jobs(self, owner: str | None) -> int:
        with self._db.locked() as conn:
            row = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE owner IS ? AND state IN {_OPEN}", (owner,)
            ).fetchone()
        return int(row[0])

    def callbacks_due(self, now: float, limit: int = 100) -> list[JobView]:
        check_page(0, limit)
        with self._db.locked() as conn:
            # cb_next_at is set only once a job is finished, so no test of its state here:
            # that lets the planner walk the small jobs_callbacks index.
            rows = conn.execute(
                f"{_SELECT_JOB} WHERE cb_state = 'pending' AND cb_next_at <= :now "
                "AND (cb_lease_until IS NULL OR cb_lease_until <= :now) "
                "ORDER BY MAX(cb_next_at, COALESCE(cb_lease_until, 0)), seq LIMIT :limit",
                {"now": float(now), "limit": limit},
            ).fetchall()
        return [_view(row) for row in rows]

    def claim_callback(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        check_worker(worker)
        check_lease(lease_s)
        with self._db.transaction() as conn:
            updated = conn.execute(
                "UPDATE jobs SET cb_worker = :worker, cb_lease_until = :until "
                f"WHERE job_id = :job_id AND state IN {_FINISHED} AND cb_state = 'pending' "
                "AND cb_next_at <= :now AND (cb_lease_until IS NULL OR cb_lease_until <= :now "
                "OR cb_worker = :worker)",
                {
                    "worker": worker,
                    "until": float(now) + lease_s,
                    "job_id": job_id,
                    "now": float(now),
                },
            ).rowcount
        return bool(updated)

    def record_callback(
        self,
        job_id: str,
        ok: bool,
        error: str | None,
        next_attempt_at: float | None,
        now: float,
    ) -> None:
        if ok:
            state, delivered_at, next_at = "delivered", float(now), None
        elif next_attempt_at is None:
            state, delivered_at, next_at = "failed", None, None
        else:
            state, delivered_at, next_at = "pending", None, float(next_attempt_at)
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET cb_attempts = cb_attempts + 1, "
                "cb_last_error = COALESCE(:error, cb_last_error), cb_worker = NULL, "
                "cb_lease_until = NULL, cb_state = :state, "
                "cb_delivered_at = COALESCE(:delivered_at, cb_delivered_at), "
                "cb_next_at = :next_at "
                f"WHERE job_id = :job_id AND state IN {_FINISHED} AND cb_state = 'pending'",
                {
                    "error": short_error(error),
                    "state": state,
                    "delivered_at": delivered_at,
                    "next_at": next_at,
                    "job_id": job_id,
                },
            )

    def purge(self, older_than: float) -> int:
        old = f"state IN {_FINISHED} AND finished_at < ?"
        with self._db.transaction() as conn:
            conn.execute(
                f"DELETE FROM job_items WHERE job_seq IN (SELECT seq FROM jobs WHERE {old})",
                (float(older_than),),
            )
            return conn.execute(f"DELETE FROM jobs WHERE {old}", (float(older_than),)).rowcount

    def describe(self) -> dict[str, Any]:
        with self._db.locked() as conn:
            jobs = int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
        return {"kind": self.kind, "location": str(self.path), "jobs": jobs}

    def close(self) -> None:
        self._db.close()
