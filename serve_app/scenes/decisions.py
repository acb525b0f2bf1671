"""Recent decisions, for the moderators' page and for reviews by ``request_id``.

The FingerprintStore replica keeps one :class:`DecisionTable`: the Preprocessor's lookup
tells it which image (fingerprint, thumbnail) a request carried, and the Ingress then
records what the policy decided. Bounded (oldest dropped first) and in memory: a
decision is a working item for a reviewer, the review itself goes to the durable log.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Decision:
    """One request's image and, once recorded, what its policy decided."""

    request_id: str
    fingerprint: bytes
    thumbnail: bytes | None
    at: float
    summary: dict[str, Any] | None = None
    """The decision (policy, action, labels, …) once the Ingress recorded it."""
    review: dict[str, Any] | None = field(default=None)
    """The review that followed, if any."""


class DecisionTable:
    """``request_id`` → :class:`Decision`, at most ``max_entries``; thread-safe."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Decision] = OrderedDict()

    def seen(self, request_id: str, fingerprint: bytes, thumbnail: bytes | None) -> None:
        """The image ``request_id`` carried (a later call for the same id is ignored).

        A kept decision is never replaced: a caller reusing an ``x-request-id`` cannot
        swap the image a moderator is looking at.
        """
        with self._lock:
            if request_id in self._items:
                return
            self._items[request_id] = Decision(request_id, fingerprint, thumbnail, self._clock())
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def record(self, request_id: str, summary: dict[str, Any]) -> bool:
        """What the policy decided for ``request_id``; False when its image is not known."""
        with self._lock:
            decision = self._items.get(request_id)
            if decision is None or decision.summary is not None:
                return False
            decision.summary = summary
            return True

    def get(self, request_id: str) -> Decision | None:
        """The decision of ``request_id``, if kept."""
        with self._lock:
            return self._items.get(request_id)

    def reviewed(self, request_id: str, review: dict[str, Any]) -> None:
        """Note the review of ``request_id``'s decision."""
        with self._lock:
            decision = self._items.get(request_id)
            if decision is not None:
                decision.review = review

    def recent(self, limit: int, actions: frozenset[str] | None = None) -> list[Decision]:
        """Recorded decisions, newest first; with ``actions``, only those actions.

        ``actions`` None means every decision whose action is not its policy's mildest.
        """
        found: list[Decision] = []
        with self._lock:
            for decision in reversed(self._items.values()):
                summary = decision.summary
                if summary is None:
                    continue
                if actions is None:
                    if summary["action"] == summary["mildest_action"]:
                        continue
                elif "all" not in actions and summary["action"] not in actions:
                    continue
                found.append(decision)
                if len(found) >= limit:
                    break
        return found

    def __len__(self) -> int:
        return len(self._items)
