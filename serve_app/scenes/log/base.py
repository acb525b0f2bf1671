"""The event-log interface and its event: what every scenes log backend stores and promises.

See :mod:`serve_app.scenes.log` for the backends and their guarantees.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Final, Self

from serve_app.library.backends.base import check_cursor

logger = logging.getLogger(__name__)

MAX_KIND_CHARS: Final[int] = 64
PAGE: Final[int] = 1000
"""Default number of events :meth:`EventLog.since` returns at most."""


@dataclass(frozen=True)
class Event:
    """One appended event: its sequence number, kind, JSON body and wall-clock time."""

    seq: int
    """Position in the log: 1, 2, 3 … strictly increasing across every writer of the log."""
    kind: str
    """What happened (``"terms.add"`` …); readers skip kinds they do not know."""
    body: dict[str, Any]
    """The JSON-serialisable details (bytes travel base64-encoded)."""
    at: float
    """Wall-clock time the writer gave (``time.time()``)."""


def encode_body(kind: str, body: dict[str, Any]) -> str:
    """Validate ``kind`` and serialise ``body`` as compact JSON; ``ValueError`` if impossible."""
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_CHARS:
        raise ValueError(f"event kind must be a non-empty str of at most {MAX_KIND_CHARS} chars")
    if not isinstance(body, dict):
        raise ValueError("event body must be a dict")
    try:
        return json.dumps(
            body, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event body is not JSON-serialisable: {exc}") from None


def decode_event(seq: int, kind: str, body: str | bytes, at: float) -> Event:
    """An :class:`Event` from stored primitives (``body`` as written by :func:`encode_body`)."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    return Event(seq=int(seq), kind=str(kind), body=json.loads(text), at=float(at))


def check_since(seq: int, limit: int) -> None:
    """``ValueError`` unless ``seq >= 0`` and ``limit >= 1``."""
    check_cursor(seq, limit)


class EventLog(ABC):
    """An append-only log of :class:`Event` objects. Implementations are thread-safe.

    Errors that mean "the log cannot be reached or used now" raise
    :class:`~serve_app.library.backends.LibraryUnavailable` (as the library's backends do),
    so callers can degrade; a bad ``kind`` or ``body`` raises ``ValueError``.
    """

    kind: str = "abstract"

    @abstractmethod
    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        """Append one event; return its sequence number.

        The number is strictly greater than every number handed out before by any log
        object on the same store, and events become visible to :meth:`since` in that order.
        """

    @abstractmethod
    def since(self, seq: int, limit: int = PAGE) -> list[Event]:
        """Events whose sequence number is greater than ``seq``, ascending, at most ``limit``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the log lives, for status pages: ``kind`` and ``location`` (no secrets)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; idempotent. Later calls raise ``LibraryUnavailable``."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
