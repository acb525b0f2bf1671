"""The single writer of the scenes: validates, appends to the event log, applies.

The FingerprintStore replica owns one :class:`ScenesStore` next to its library. At start
:meth:`ScenesStore.load` replays the whole log into a fresh
:class:`~serve_app.scenes.state.ScenesState`; every change goes through
:meth:`ScenesStore.write` (validated first, so an invalid body never reaches the log);
:meth:`ScenesStore.sync` picks up events that other processes appended (a CLI, another
node on redis). Events are applied strictly in sequence order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from serve_app.media.fingerprint import Fingerprinter
from serve_app.scenes.events import canonical_body, parse_body
from serve_app.scenes.log import PAGE, Event, EventLog
from serve_app.scenes.state import ScenesState

logger = logging.getLogger(__name__)


class ScenesStore:
    """A :class:`ScenesState` kept in step with an :class:`EventLog`; thread-safe.

    Log errors (``LibraryUnavailable``) propagate to the caller: a failed ``write`` leaves
    the state unchanged, a failed ``load``/``sync`` leaves it at the last event applied.
    An event in the log whose body this version rejects is skipped with an error logged
    (counted in :attr:`rejected`) so that one bad event cannot stop a replica starting.
    """

    def __init__(
        self,
        log: EventLog,
        fingerprinter: Fingerprinter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Keep a state for ``log``; match images with ``fingerprinter``; stamp with ``clock``."""
        self.log = log
        self.fingerprinter = fingerprinter
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ScenesState(fingerprinter)
        self._cursor = 0
        self._rejected = 0

    @property
    def state(self) -> ScenesState:
        """The current state (queries are thread-safe; change it only through ``write``)."""
        return self._state

    @property
    def last_seq(self) -> int:
        """The sequence number of the last event read from the log (0: none)."""
        with self._lock:
            return self._cursor

    @property
    def rejected(self) -> int:
        """Events read from the log whose body this version rejected."""
        with self._lock:
            return self._rejected

    def load(self, page: int = PAGE) -> int:
        """Replay the whole log into a fresh state (at start); return how many events applied."""
        with self._lock:
            fresh = ScenesState(self.fingerprinter)
            cursor, applied, rejected = self._replay(fresh, 0, page)
            self._state, self._cursor, self._rejected = fresh, cursor, rejected
        logger.info(
            "scenes loaded: %d events applied up to seq %d (%d rejected)",
            applied,
            cursor,
            rejected,
        )
        return applied

    def sync(self, page: int = PAGE) -> int:
        """Apply events appended since the last one read; return how many applied."""
        with self._lock:
            return self._sync_locked(page)

    def write(self, kind: str, body: dict[str, Any]) -> Event:
        """Validate ``body`` as ``kind``, append it, apply it; return the logged event.

        Raises ``ValueError`` for an unknown kind or an invalid body (nothing is logged),
        ``LibraryUnavailable`` when the log cannot be written (nothing changes).
        """
        canonical = canonical_body(parse_body(kind, body))
        with self._lock:
            at = self._clock()
            seq = self.log.append(kind, canonical, at)
            event = Event(seq=seq, kind=kind, body=canonical, at=at)
            if seq == self._cursor + 1:
                try:
                    self._state.apply(event)
                finally:
                    self._cursor = seq
            else:  # others appended in between: apply theirs first, in order
                self._sync_locked(PAGE)
            return event

    def _sync_locked(self, page: int) -> int:
        cursor, applied, rejected = self._replay(self._state, self._cursor, page)
        self._cursor = cursor
        self._rejected += rejected
        return applied

    def _replay(self, state: ScenesState, cursor: int, page: int) -> tuple[int, int, int]:
        """Apply every event after ``cursor``; (new cursor, applied, rejected)."""
        applied = rejected = 0
        while True:
            events = self.log.since(cursor, page)
            for event in events:
                try:
                    if state.apply(event):
                        applied += 1
                except ValueError as exc:
                    rejected += 1
                    logger.error("skipping scenes event %d (%s): %s", event.seq, event.kind, exc)
                cursor = event.seq
            if len(events) < page:
                return cursor, applied, rejected
