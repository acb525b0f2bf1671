"""One ingress replica's gate in front of the engine path: who gets in, who waits, who is refused.

:class:`AdmissionGate` applies, in this order, to every request about to enter the
engine path (Preprocessor → VLM pool → Structurer):

* draining: refused (503, ``Retry-After: 5``), not counted as demand;
* with admission on (the controller's ``admission``, :mod:`serve_app.load.admission`):
  admitted under the adaptive limit, left to wait for a place in a FIFO queue at most
  its budget, or refused at once (503/429 + ``Retry-After``) when its predicted wait
  does not fit; at a ``route: reject`` level the limit is also capped at the
  replica's share of the pool and the refusal is the level's;
* with admission off: only a ``route: reject`` level's admission — places up to the
  replica's share of the pool's capacity, the excess refused at once.

Refusals (draining aside) are counted and reported to the LoadController as demand,
so the level holds while the overload lasts instead of hiding behind the refusals.
A request whose engine path answered feeds its time back to the policy
(:meth:`Ticket.served`); cache hits, reviewed images and streams do not (their time
says nothing about the engine's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_app.config.models import AdmissionArgs, LevelArgs
from serve_app.errors import MemeServeError, ServiceUnavailable, TooManyRequests
from serve_app.load.admission import UNCAPPED, AdmissionPolicy, Verdict
from serve_app.load.degradation import DRAIN_RETRY_AFTER_S, LevelState, shed_error

logger = logging.getLogger(__name__)


@dataclass
class Ticket:
    """A place in the engine path, held from :meth:`AdmissionGate.enter` to ``leave``."""

    entered_at: float
    concurrency: int
    """Requests inside (this one included) when it got its place."""
    entries: int
    """The gate's count of places given, when it got its place."""
    in_use: bool
    """It took the last free place under the limit, or waited for one."""
    measured: bool = False

    def served(self) -> None:
        """The engine path answered: its time counts for the admission policy."""
        self.measured = True


def admission_refusal(args: AdmissionArgs, detail: str) -> MemeServeError:
    """The refusal of the admission policy (``args.reject_status``, with Retry-After)."""
    message = f"shedding load: {detail}; retry later"
    if args.reject_status == 429:
        return TooManyRequests(message, retry_after_s=args.retry_after_s)
    return ServiceUnavailable(message, retry_after_s=args.retry_after_s)


class AdmissionGate:
    """The engine-path places of one ingress replica (module docstring); one event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.inside = 0
        """Requests holding a place now."""
        self.waiting = 0
        """Requests waiting for a place now."""
        self.refused_total = 0
        self._refused = 0
        self._entries = 0
        self._waiters: deque[asyncio.Future[tuple[int, int]]] = deque()
        self._policy: AdmissionPolicy | None = None
        self._active = False
        self._cap: int | None = None
        self._reported_at: float | None = None

    async def enter(self, state: LevelState, deadline_left_s: float) -> Ticket:
        """A place for one request (waiting for it if the policy says so), or a refusal."""
        if state.draining:
            raise ServiceUnavailable(
                "the service is draining before it stops; retry shortly",
                retry_after_s=DRAIN_RETRY_AFTER_S,
            )
        row = state.row
        reject = row.route == "reject"
        self._cap = (state.admit or 1) if reject else state.admit
        if state.admission is None:
            self._active = False
            if reject and self.inside >= (state.admit or 1):
                raise self._refuse(shed_error(row))
            self._dispatch()  # waiters left from when admission was on: no limit now
            return self._take(in_use=False)
        policy = self._policy_for(state.admission)
        now = self._clock()
        verdict = policy.decide(now, self.inside, self.waiting, deadline_left_s, self._cap)
        if verdict.action == "admit":
            return self._take(in_use=self.inside + 1 >= verdict.limit)
        if verdict.action == "refuse":
            raise self._refuse(self._refusal(state.admission, row, verdict.reason))
        return await self._wait(state.admission, row, verdict)

    def idle(self) -> bool:
        """Nothing inside, waiting, or refused since the last report: nothing to tell the
        controller that it has not heard (resent memes answered by the Ingress never enter)."""
        return self.inside == 0 and self.waiting == 0 and self._refused == 0

    def leave(self, ticket: Ticket) -> None:
        """Give the place back; a served request's time goes to the policy."""
        self.inside -= 1
        if ticket.measured and self._active and self._policy is not None:
            now = self._clock()
            concurrency = ticket.concurrency + (self._entries - ticket.entries)
            self._policy.completed(
                now, now - ticket.entered_at, concurrency, ticket.in_use, self._cap
            )
        self._dispatch()

    def take_refused(self) -> int:
        """Refusals since the last call (reported to the controller as waiting demand)."""
        refused, self._refused = self._refused, 0
        return refused

    def report(self) -> dict[str, float]:
        """This replica's demand for the LoadController, since the last report.

        ``graph_in_flight``: requests inside or waiting; ``refused``: refusals since the
        last report (a count: the pool's autoscaling reads it); ``refused_in_flight``:
        the same refusals as requests in flight, by Little's law — their rate x the
        engine-path time each would have taken —, so that the load they add does not
        depend on how often replicas report (only while admission has measured a time).
        """
        now = self._clock()
        elapsed = now - self._reported_at if self._reported_at is not None else None
        self._reported_at = now
        refused = self.take_refused()
        signals = {"graph_in_flight": float(self.inside + self.waiting), "refused": float(refused)}
        policy = self._policy if self._active else None
        service = None if policy is None else (policy.recent_s or policy.low_load_s)
        if service is not None and elapsed is not None and elapsed > 0:
            signals["refused_in_flight"] = refused / elapsed * service
        return signals

    def snapshot(self) -> dict[str, Any]:
        """This replica's admission figures, for ``/v1/status``."""
        figures: dict[str, Any] = {
            "admission": "on" if self._active else "off",
            "inside": self.inside,
            "waiting": self.waiting,
            "refused": self.refused_total,
        }
        if self._active and self._policy is not None:
            figures.update(self._policy.snapshot(self._clock(), self._cap))
        return figures

    def _policy_for(self, args: AdmissionArgs) -> AdmissionPolicy:
        if self._policy is None:
            self._policy = AdmissionPolicy(args, self._clock())
        else:
            self._policy.configure(args)
        self._active = True
        return self._policy

    def _take(self, in_use: bool) -> Ticket:
        self.inside += 1
        self._entries += 1
        return Ticket(self._clock(), self.inside, self._entries, in_use)

    def _refuse(self, error: MemeServeError) -> MemeServeError:
        self._refused += 1
        self.refused_total += 1
        return error

    @staticmethod
    def _refusal(args: AdmissionArgs, row: LevelArgs, detail: str) -> MemeServeError:
        # At a reject level the refusal is the level's (its status and Retry-After).
        return shed_error(row) if row.route == "reject" else admission_refusal(args, detail)

    async def _wait(self, args: AdmissionArgs, row: LevelArgs, verdict: Verdict) -> Ticket:
        place: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._waiters.append(place)
        self.waiting += 1
        started = self._clock()
        try:
            async with asyncio.timeout(verdict.budget_s):
                await place
        except BaseException as exc:
            if not (place.done() and not place.cancelled()):
                place.cancel()
                self.waiting -= 1
                if isinstance(exc, TimeoutError):
                    waited = self._clock() - started
                    detail = f"no place in the engine path within {waited:.2f} s"
                    raise self._refuse(self._refusal(args, row, detail)) from None
                raise
            # The place came just as the wait ended: keep it, unless the request is gone.
            if not isinstance(exc, TimeoutError):
                self.leave(Ticket(self._clock(), self.inside, self._entries, True))
                raise
        concurrency, entries = place.result()
        return Ticket(self._clock(), concurrency, entries, in_use=True)

    def _limit(self) -> int:
        if not self._active or self._policy is None:
            return UNCAPPED
        return self._policy.limit(self._clock(), self._cap)

    def _dispatch(self) -> None:
        """Give free places to the oldest waiters (a waiter that gave up is skipped)."""
        if not self._waiters:
            return
        limit = self._limit()
        while self._waiters and self.inside < limit:
            place = self._waiters.popleft()
            if place.done():
                continue
            self.waiting -= 1
            self.inside += 1
            self._entries += 1
            place.set_result((self.inside, self._entries))
