"""The job-store interface, its records and the codec every backend shares.

See :mod:`serve_app.jobs.store` for the backends and their guarantees.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Self

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "cancelled"]
CallbackState = Literal["none", "pending", "delivered", "failed"]

OPEN_STATES: Final[tuple[str, ...]] = ("queued", "running")
"""Job states that still have work to hand out."""
FINISHED_STATES: Final[tuple[str, ...]] = ("done", "cancelled")
"""Job states that are final: their callback (if any) becomes due."""
MAX_ID_CHARS: Final[int] = 512
"""Longest caller's item id, owner, policy or worker name."""
MAX_URL_CHARS: Final[int] = 2048
MAX_ERROR_CHARS: Final[int] = 500
_JOB_ID: Final = re.compile(r"[0-9a-f]{32}")
"""A callback's ``last_error`` is cut to this length."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A job as the web tier submits it (its items travel beside it)."""

    owner: str | None = None
    """Name of the API key that submitted it (``None``: no authentication)."""
    policy: str | None = None
    """Scene policy for items that name none."""
    callback_url: str | None = None
    """Where the signed callback goes once the job is finished (already allow-listed)."""
    total: int
    """Number of items; must equal ``len(items)`` given to :meth:`JobStore.create`."""


@dataclass(frozen=True)
class NewItem:
    """One meme of a new job."""

    item_id: str
    """The caller's id for it (echoed in results; need not be unique)."""
    image: bytes
    """The encoded image."""
    text: str | None = None
    """Context text sent with it."""
    policy: str | None = None
    """Scene policy for this item (``None``: the job's)."""


@dataclass(frozen=True)
class Claimed:
    """One item leased to a worker by :meth:`JobStore.claim`."""

    job_id: str
    index: int
    """Position of the item in its job (0-based); the key for complete/release."""
    item_id: str
    image: bytes
    text: str | None
    policy: str | None
    """The item's policy, else the job's."""
    attempt: int
    """1 on the item's first claim, one more on each later claim (expired lease, release)."""


@dataclass(frozen=True)
class CallbackView:
    """Where a job's callback stands."""

    url: str | None
    state: CallbackState
    """``none`` (no URL), ``pending`` (to deliver once the job is finished, or retrying),
    ``delivered`` or ``failed`` (gave up)."""
    attempts: int
    last_error: str | None
    delivered_at: float | None
    next_attempt_at: float | None
    """When the next delivery is due (``None`` until the job is finished, and once final)."""


@dataclass(frozen=True)
class JobView:
    """What a job looks like to its owner."""

    id: str
    owner: str | None
    state: JobState
    created_at: float
    finished_at: float | None
    total: int
    done: int
    """Items completed (whatever their status)."""
    failed: int
    """Completed items whose status is not 200 (counted in ``done`` too)."""
    policy: str | None
    callback: CallbackView

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the callback as a nested dict)."""
        return asdict(self)


# --------------------------------------------------------------------------- validation


def _check_optional_str(name: str, value: object, max_chars: int = MAX_ID_CHARS) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > max_chars:
        raise ValueError(f"{name} must be a str of at most {max_chars} chars or None")


def check_new_job(job: NewJob, items: Sequence[NewItem]) -> None:
    """``ValueError`` unless ``job`` with ``items`` can be stored."""
    _check_optional_str("owner", job.owner)
    _check_optional_str("policy", job.policy)
    _check_optional_str("callback_url", job.callback_url, MAX_URL_CHARS)
    if job.callback_url == "":
        raise ValueError("callback_url must not be empty (None for no callback)")
    if isinstance(job.total, bool) or not isinstance(job.total, int) or job.total < 1:
        raise ValueError("a job needs at least one item (total >= 1)")
    if job.total != len(items):
        raise ValueError(f"job.total is {job.total} but {len(items)} items were given")
    for position, item in enumerate(items):
        if not isinstance(item, NewItem):
            raise ValueError(f"item {position} is not a NewItem")
        if not isinstance(item.item_id, str) or len(item.item_id) > MAX_ID_CHARS:
            raise ValueError(f"item {position}: item_id must be a str of at most {MAX_ID_CHARS}")
        if not isinstance(item.image, bytes | bytearray) or not item.image:
            raise ValueError(f"item {position}: image must be non-empty bytes")
        if item.text is not None and not isinstance(item.text, str):
            raise ValueError(f"item {position}: text must be a str or None")
        _check_optional_str(f"item {position}: policy", item.policy)


def check_claim(worker: str, limit: int, lease_s: float) -> None:
    """``ValueError`` unless the arguments of a claim are usable."""
    check_worker(worker)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be an int >= 1")
    check_lease(lease_s)


def check_worker(worker: str) -> None:
    """``ValueError`` unless ``worker`` is a usable worker name."""
    if not isinstance(worker, str) or not worker or len(worker) > MAX_ID_CHARS:
        raise ValueError(f"worker must be a non-empty str of at most {MAX_ID_CHARS} chars")


def check_lease(lease_s: float) -> None:
    """``ValueError`` unless ``lease_s`` is a positive number of seconds."""
    if not isinstance(lease_s, int | float) or not lease_s > 0:
        raise ValueError("lease_s must be > 0")


def check_page(offset: int, limit: int) -> None:
    """``ValueError`` unless ``offset >= 0`` and ``limit >= 1``."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if limit < 1:
        raise ValueError("limit must be >= 1")


def new_job_id() -> str:
    """A fresh job id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def is_job_id(job_id: object) -> bool:
    """Whether ``job_id`` has the shape :func:`new_job_id` gives (else no job has it)."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None


# --------------------------------------------------------------------------- codec
# Every backend keeps a job as these primitive fields (SQLite columns, redis hash fields,
# a dict in memory); ``None`` is a NULL column or an absent hash field.

_TEXT: Final = ("owner", "policy", "callback_url", "state")
_TEXT_CB: Final = ("cb_state", "cb_last_error", "cb_worker")
_INT: Final = ("total", "done", "failed", "cb_attempts")
_FLOAT: Final = ("created_at", "finished_at", "cb_delivered_at", "cb_next_at", "cb_lease_until")
JOB_FIELDS: Final[tuple[str, ...]] = (*_TEXT, *_TEXT_CB, *_INT, *_FLOAT)


def new_job_fields(job: NewJob, now: float) -> dict[str, str | int | float | None]:
    """The stored fields of a job just created at ``now``."""
    return {
        "owner": job.owner,
        "policy": job.policy,
        "callback_url": job.callback_url,
        "state": "queued",
        "cb_state": "pending" if job.callback_url else "none",
        "cb_last_error": None,
        "cb_worker": None,
        "total": job.total,
        "done": 0,
        "failed": 0,
        "cb_attempts": 0,
        "created_at": float(now),
        "finished_at": None,
        "cb_delivered_at": None,
        "cb_next_at": None,
        "cb_lease_until": None,
    }


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)


def _number(raw: Any, kind: type[int] | type[float]) -> Any:
    if raw is None:
        return None
    return kind(raw.decode("ascii") if isinstance(raw, bytes | bytearray) else raw)


def job_view_from_fields(job_id: str, data: Mapping[str, Any]) -> JobView:
    """A :class:`JobView` from stored fields (values native or ``bytes``; absent is None)."""
    value: dict[str, Any] = {}
    for name in (*_TEXT, *_TEXT_CB):
        value[name] = _text(data.get(name))
    for name in _INT:
        value[name] = _number(data.get(name), int) or 0
    for name in _FLOAT:
        value[name] = _number(data.get(name), float)
    return JobView(
        id=job_id,
        owner=value["owner"],
        state=value["state"],
        created_at=value["created_at"],
        finished_at=value["finished_at"],
        total=value["total"],
        done=value["done"],
        failed=value["failed"],
        policy=value["policy"],
        callback=CallbackView(
            url=value["callback_url"],
            state=value["cb_state"],
            attempts=value["cb_attempts"],
            last_error=value["cb_last_error"],
            delivered_at=value["cb_delivered_at"],
            next_attempt_at=value["cb_next_at"],
        ),
    )


def encode_outcome(outcome: Mapping[str, Any]) -> tuple[int, str]:
    """Validate an item's outcome; return its status and the JSON text to store.

    ``outcome`` is ``{"status": int, "result": {...}}`` or ``{"status": int, "error": {...}}``.
    """
    if not isinstance(outcome, Mapping):
        raise ValueError("outcome must be a dict")
    status = outcome.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("outcome status must be an HTTP status (int 100..599)")
    extra = set(outcome) - {"status", "result", "error"}
    if extra:
        raise ValueError(f"outcome has unknown keys {sorted(extra)}")
    kinds = [key for key in ("result", "error") if key in outcome]
    if len(kinds) != 1:
        raise ValueError("outcome needs exactly one of 'result' or 'error'")
    body = outcome[kinds[0]]
    if not isinstance(body, dict):
        raise ValueError(f"outcome {kinds[0]} must be a dict")
    try:
        text = json.dumps({kinds[0]: body}, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"outcome is not JSON-serialisable: {exc}") from None
    return status, text


def result_row(item_id: Any, status: Any, outcome: Any) -> dict[str, Any]:
    """One entry of :meth:`JobStore.results` from stored primitives."""
    return {
        "id": _text(item_id),
        "status": _number(status, int),
        **json.loads(_text(outcome) or "{}"),
    }


def short_error(error: str | None) -> str | None:
    """``error`` cut to :data:`MAX_ERROR_CHARS` (``None`` stays ``None``)."""
    return None if error is None else str(error)[:MAX_ERROR_CHARS]


# --------------------------------------------------------------------------- interface


class JobStore(ABC):
    """Where asynchronous jobs, their items and their callbacks are kept.

    Implementations are thread-safe; every store object opened on the same place (one
    SQLite file, one redis server and prefix) sees the same jobs, and claims are atomic
    across all of them. Times are wall-clock seconds (``time.time()``) given by the
    caller, so tests and replicas agree on what "now" means. Errors meaning "the store
    cannot be reached or used now" raise
    :class:`~serve_app.library.backends.LibraryUnavailable`; bad arguments ``ValueError``.
    """

    kind: str = "abstract"

    @abstractmethod
    def create(self, job: NewJob, items: Sequence[NewItem], now: float) -> str:
        """Store a new ``queued`` job with its items, all or nothing; return its id."""

    @abstractmethod
    def claim(self, worker: str, limit: int, lease_s: float, now: float) -> list[Claimed]:
        """Lease up to ``limit`` items to ``worker`` until ``now + lease_s``.

        Claimable are items never claimed, given back with a ``retry_at <= now``, or
        leased with a lease that has expired (``<= now``), of jobs neither done nor
        cancelled. Items of the oldest job come first; within a job, items ready the
        longest, then by position. Atomic: no item is handed out twice while its lease
        holds, whichever store object or process asks. The job becomes ``running``.
        """

    @abstractmethod
    def complete(
        self, job_id: str, index: int, worker: str, outcome: Mapping[str, Any], now: float
    ) -> bool:
        """Record the item's outcome if ``worker``'s lease on it still holds (``> now``).

        Returns ``False`` and changes nothing otherwise (lease expired or taken over, job
        cancelled or gone). Frees the item's image. When it was the job's last item the
        job becomes ``done`` (``finished_at = now``) and its callback, if any, due now.
        Raises ``ValueError`` for a malformed ``outcome``.
        """

    @abstractmethod
    def release(self, job_id: str, index: int, worker: str, retry_at: float) -> None:
        """Give back an item ``worker`` holds, to be claimed again not before ``retry_at``.

        Does nothing when ``worker`` no longer holds it. ``attempt`` is not reset.
        """

    @abstractmethod
    def cancel(self, job_id: str, now: float) -> bool:
        """Cancel a queued or running job: its remaining items are dropped (their images
        freed, later completes refused) and its callback, if any, is due now.

        Returns ``False`` when the job is unknown or already finished.
        """

    @abstractmethod
    def get(self, job_id: str) -> JobView | None:
        """The job, or ``None`` when unknown (or purged)."""

    @abstractmethod
    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Completed items in item order: ``{"id", "status", "result" | "error"}``.

        ``offset`` and ``limit`` count completed items (so while a job runs, an earlier
        item completing shifts later pages; page a finished job for stable pages).
        An unknown job has no results.
        """

    @abstractmethod
    def open_jobs(self, owner: str | None) -> int:
        """How many of ``owner``'s jobs are queued or running."""

    @abstractmethod
    def callbacks_due(self, now: float, limit: int = 100) -> list[JobView]:
        """Finished jobs whose callback is pending and due (``next_attempt_at <= now``),
        not leased by :meth:`claim_callback` at ``now``; most overdue first."""

    @abstractmethod
    def claim_callback(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        """Take the right to deliver the job's callback until ``now + lease_s``.

        ``True`` only if the callback is pending and due and no other worker's lease on it
        holds; the callback is then not due for others until the lease ends or
        :meth:`record_callback` is called.
        """

    @abstractmethod
    def record_callback(
        self,
        job_id: str,
        ok: bool,
        error: str | None,
        next_attempt_at: float | None,
        now: float,
    ) -> None:
        """Record one delivery attempt of a pending callback and end its lease.

        ``ok``: ``delivered`` (``delivered_at = now``). Not ok: ``pending`` again, due at
        ``next_attempt_at``, or ``failed`` when that is ``None`` (given up). ``attempts``
        counts every call; a given ``error`` becomes ``last_error`` (an earlier one is kept
        otherwise). Does nothing when the job is unknown or unfinished, or its callback is
        not pending.
        """

    @abstractmethod
    def purge(self, older_than: float) -> int:
        """Delete done or cancelled jobs finished before ``older_than``; return how many.

        Whatever their callback's state: a callback still pending is dropped with them.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the store lives, for status pages: ``kind`` and ``location`` (no secrets)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; idempotent. Later calls raise ``LibraryUnavailable``."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
