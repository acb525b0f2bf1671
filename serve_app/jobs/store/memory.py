"""The memory job store: jobs in dicts of this process (store ``memory``, tests)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from serve_app.jobs.store.base import (
    FINISHED_STATES,
    OPEN_STATES,
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
from serve_app.library.backends import LibraryUnavailable

logger = logging.getLogger(__name__)


def _due_at(job: Mapping[str, Any]) -> float:
    """When a pending callback may be claimed next: its due time or its lease's end."""
    return max(job["cb_next_at"], job["cb_lease_until"] or 0.0)


class MemoryJobStore(JobStore):
    """Jobs in dicts of this process (lost on exit), guarded by one lock.

    A job is kept as the same primitive fields the persistent stores keep; an item as a
    dict whose ``ready_at`` is when it may be claimed (never claimed: 0; given back: its
    ``retry_at``; leased: the lease's end; ``None`` once completed or cancelled).
    """

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}  # insertion order is creation order
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LibraryUnavailable("memory job store is closed")

    def create(self, job: NewJob, items: Sequence[NewItem], now: float) -> str:
        check_new_job(job, items)
        job_id = new_job_id()
        rows = [
            {
                "item_id": item.item_id,
                "image": bytes(item.image),
                "text": item.text,
                "policy": item.policy,
                "state": "pending",
                "worker": None,
                "ready_at": 0.0,
                "attempt": 0,
                "status": None,
                "outcome": None,
            }
            for item in items
        ]
        with self._lock:
            self._check_open()
            self._jobs[job_id] = new_job_fields(job, now)
            self._items[job_id] = rows
        return job_id

    def claim(self, worker: str, limit: int, lease_s: float, now: float) -> list[Claimed]:
        check_claim(worker, limit, lease_s)
        lease_until = float(now) + lease_s
        claimed: list[Claimed] = []
        with self._lock:
            self._check_open()
            for job_id, job in self._jobs.items():
                if len(claimed) >= limit:
                    break
                if job["state"] not in OPEN_STATES:
                    continue
                rows = self._items[job_id]
                ready = sorted(
                    (row["ready_at"], index)
                    for index, row in enumerate(rows)
                    if row["ready_at"] is not None and row["ready_at"] <= now
                )[: limit - len(claimed)]
                for _, index in ready:
                    row = rows[index]
                    row.update(state="leased", worker=worker, ready_at=lease_until)
                    row["attempt"] += 1
                    claimed.append(
                        Claimed(
                            job_id=job_id,
                            index=index,
                            item_id=row["item_id"],
                            image=row["image"],
                            text=row["text"],
                            policy=row["policy"] if row["policy"] is not None else job["policy"],
                            attempt=row["attempt"],
                        )
                    )
                if ready and job["state"] == "queued":
                    job["state"] = "running"
        return claimed

    def _leased_row(self, job_id: str, index: int, worker: str) -> dict[str, Any] | None:
        """The item if ``worker`` holds its lease (expired or not) in an open job."""
        job = self._jobs.get(job_id)
        if job is None or job["state"] not in OPEN_STATES:
            return None
        rows = self._items[job_id]
        if not 0 <= index < len(rows):
            return None
        row = rows[index]
        if row["state"] != "leased" or row["worker"] != worker:
            return None
        return row

    def complete(
        self, job_id: str, index: int, worker: str, outcome: Mapping[str, Any], now: float
    ) -> bool:
        status, encoded = encode_outcome(outcome)
        with self._lock:
            self._check_open()
            row = self._leased_row(job_id, index, worker)
            if row is None or row["ready_at"] <= now:
                return False
            row.update(
                state="done", worker=None, ready_at=None, image=None, status=status, outcome=encoded
            )
            job = self._jobs[job_id]
            job["done"] += 1
            job["failed"] += status != 200
            if job["done"] >= job["total"]:
                job["state"] = "done"
                self._finish(job, now)
        return True

    @staticmethod
    def _finish(job: dict[str, Any], now: float) -> None:
        job["finished_at"] = float(now)
        if job["cb_state"] == "pending":
            job["cb_next_at"] = float(now)

    def release(self, job_id: str, index: int, worker: str, retry_at: float) -> None:
        with self._lock:
            self._check_open()
            row = self._leased_row(job_id, index, worker)
            if row is not None:
                row.update(state="pending", worker=None, ready_at=float(retry_at))

    def cancel(self, job_id: str, now: float) -> bool:
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in OPEN_STATES:
                return False
            job["state"] = "cancelled"
            self._finish(job, now)
            for row in self._items[job_id]:
                if row["state"] != "done":
                    row.update(state="cancelled", worker=None, ready_at=None, image=None)
        return True

    def get(self, job_id: str) -> JobView | None:
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
            return None if job is None else job_view_from_fields(job_id, job)

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        check_page(offset, limit)
        with self._lock:
            self._check_open()
            done = [row for row in self._items.get(job_id, ()) if row["state"] == "done"]
            page = done[offset : offset + limit]
            return [result_row(row["item_id"], row["status"], row["outcome"]) for row in page]

    def open_jobs(self, owner: str | None) -> int:
        with self._lock:
            self._check_open()
            return sum(
                1
                for job in self._jobs.values()
                if job["owner"] == owner and job["state"] in OPEN_STATES
            )

    def _callback_due(self, job: Mapping[str, Any], now: float) -> bool:
        return (
            job["state"] in FINISHED_STATES
            and job["cb_state"] == "pending"
            and job["cb_next_at"] is not None
            and _due_at(job) <= now
        )

    def callbacks_due(self, now: float, limit: int = 100) -> list[JobView]:
        check_page(0, limit)
        with self._lock:
            self._check_open()
            due = [
                (_due_at(job), position, job_id)
                for position, (job_id, job) in enumerate(self._jobs.items())
                if self._callback_due(job, now)
            ]
            due.sort()
            return [job_view_from_fields(job_id, self._jobs[job_id]) for *_, job_id in due[:limit]]

    def claim_callback(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        check_worker(worker)
        check_lease(lease_s)
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in FINISHED_STATES:
                return False
            if job["cb_state"] != "pending" or job["cb_next_at"] > now:
                return False
            lease = job["cb_lease_until"]
            if lease is not None and lease > now and job["cb_worker"] != worker:
                return False
            job["cb_worker"] = worker
            job["cb_lease_until"] = float(now) + lease_s
        return True

    def record_callback(
        self,
        job_id: str,
        ok: bool,
        error: str | None,
        next_attempt_at: float | None,
        now: float,
    ) -> None:
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in FINISHED_STATES:
                return
            if job["cb_state"] != "pending":
                return
            job["cb_attempts"] += 1
            if error is not None:
                job["cb_last_error"] = short_error(error)
            job["cb_worker"] = job["cb_lease_until"] = None
            if ok:
                job.update(cb_state="delivered", cb_delivered_at=float(now), cb_next_at=None)
            elif next_attempt_at is None:
                job.update(cb_state="failed", cb_next_at=None)
            else:
                job["cb_next_at"] = float(next_attempt_at)

    def purge(self, older_than: float) -> int:
        with self._lock:
            self._check_open()
            old = [
                job_id
                for job_id, job in self._jobs.items()
                if job["state"] in FINISHED_STATES and job["finished_at"] < older_than
            ]
            for job_id in old:
                del self._jobs[job_id]
                del self._items[job_id]
        return len(old)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "location": "process memory", "jobs": len(self._jobs)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._items.clear()
