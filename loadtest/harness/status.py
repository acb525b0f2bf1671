"""``GET /v1/status``: reading it, replica counts and states, samples and pollers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.harness.http import STATUS, async_client

logger = logging.getLogger(__name__)

POLL_PERIOD_S = 0.5
# Serve's replica states that mean "on its way in" and "on its way out".
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")
STOPPING_STATES = ("STOPPING",)


@dataclass
class Sample:
    """One ``GET /v1/status`` poll of a timeline."""

    t_s: float
    ok: bool
    poll_ms: float
    level: int | None = None
    load: float | None = None
    dominant: str | None = None
    in_flight: int | None = None
    replicas: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolState:
    """The replicas of one deployment by phase: running, on the way in, on the way out."""

    running: int
    starting: int
    stopping: int


def replica_counts(replicas: Any) -> dict[str, int]:
    """RUNNING replicas per deployment from ``/v1/status``'s ``replicas`` (empty if absent)."""
    if not isinstance(replicas, dict):
        return {}
    counts: dict[str, int] = {}
    for name, entry in replicas.items():
        if isinstance(entry, dict) and isinstance(entry.get("replicas"), dict):
            counts[name] = int(entry["replicas"].get("RUNNING", 0))
    return counts


def pool_state(body: dict[str, Any], deployment: str) -> PoolState | None:
    """The replica states of ``deployment`` in a ``/v1/status`` body; None if it lacks them."""
    states = ((body.get("replicas") or {}).get(deployment) or {}).get("replicas")
    if not isinstance(states, dict):
        return None
    return PoolState(
        running=int(states.get("RUNNING", 0)),
        starting=sum(int(states.get(name, 0)) for name in STARTING_STATES),
        stopping=sum(int(states.get(name, 0)) for name in STOPPING_STATES),
    )


def sample_from_status(t_s: float, poll_ms: float, body: dict[str, Any]) -> Sample:
    """A timeline sample from a ``/v1/status`` body."""
    degradation = body.get("degradation") or {}
    return Sample(
        t_s=round(t_s, 2),
        ok=True,
        poll_ms=round(poll_ms, 1),
        level=degradation.get("level"),
        load=degradation.get("load"),
        dominant=degradation.get("dominant"),
        in_flight=body.get("in_flight"),
        replicas=replica_counts(body.get("replicas")),
    )


def read_status(client: httpx.Client) -> dict[str, Any] | None:
    """The ``/v1/status`` body through ``client`` (on the service's URL); None if unread."""
    try:
        response = client.get(STATUS)
        if response.status_code != 200:
            return None
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def read_status_async(client: httpx.AsyncClient) -> dict[str, Any] | None:
    """:func:`read_status` with an async client."""
    try:
        response = await client.get(STATUS)
        if response.status_code != 200:
            return None
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def poll_status(
    url: str,
    t0: float,
    samples: list[Sample],
    stop: asyncio.Event,
    period_s: float = POLL_PERIOD_S,
) -> None:
    """Append a sample (``t_s`` from ``t0``, perf_counter) every ``period_s`` until ``stop``."""
    async with async_client(url, timeout_s=5.0) as client:
        next_tick = time.perf_counter()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await client.get(STATUS)
                poll_ms = (time.perf_counter() - started) * 1000.0
                if response.status_code == 200:
                    samples.append(sample_from_status(started - t0, poll_ms, response.json()))
                else:
                    samples.append(Sample(round(started - t0, 2), False, round(poll_ms, 1)))
            except (httpx.HTTPError, ValueError):
                poll_ms = (time.perf_counter() - started) * 1000.0
                samples.append(Sample(round(started - t0, 2), False, round(poll_ms, 1)))
            next_tick += period_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.perf_counter()))


async def wait_level_zero(url: str, limit_s: float) -> float | None:
    """Poll until ``degradation.level`` is 0; the seconds it took, None after ``limit_s``."""
    started = time.monotonic()
    async with async_client(url, timeout_s=5.0) as client:
        while time.monotonic() - started < limit_s:
            body = await read_status_async(client)
            if body is not None and (body.get("degradation") or {}).get("level") == 0:
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(POLL_PERIOD_S)
    return None


async def running_replicas(client: httpx.AsyncClient, deployment: str) -> int | None:
    """RUNNING replicas of ``deployment`` from one poll; None when unread or not listed."""
    body = await read_status_async(client)
    if body is None:
        return None
    return replica_counts(body.get("replicas")).get(deployment)


async def wait_replicas(url: str, deployment: str, replicas: int, limit_s: float) -> int | None:
    """Poll until ``deployment`` has ``replicas`` RUNNING; the last count seen."""
    deadline = time.monotonic() + limit_s
    running = None
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            running = await running_replicas(client, deployment)
            if running == replicas:
                return running
            await asyncio.sleep(POLL_PERIOD_S)
    return running


StatusRecorder = Callable[[float, dict[str, Any] | None, str | None], None]
"""Takes (wall-clock time, the body or None, the error or None) of one poll."""


class StatusPoller(threading.Thread):
    """Polls ``GET /v1/status`` every ``period_s`` in a thread, handing each poll on."""

    def __init__(self, url: str, record: StatusRecorder, period_s: float = 1.0) -> None:
        super().__init__(name="status-poller", daemon=True)
        self.url = url
        self.record = record
        self.period_s = period_s
        self.stop_event = threading.Event()
        self.samples = 0

    def poll_once(self, client: httpx.Client) -> None:
        """One poll, recorded."""
        ts = time.time()
        try:
            response = client.get(f"{self.url}{STATUS}")
            response.raise_for_status()
            body, error = response.json(), None
        except (httpx.HTTPError, ValueError) as exc:
            body, error = None, f"{type(exc).__name__}: {exc}"[:200]
        self.record(ts, body, error)
        self.samples += 1

    def run(self) -> None:
        """Poll on a fixed cadence until :meth:`stop`, then take one last sample."""
        with httpx.Client(timeout=5.0) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self.poll_once(client)
                next_at += self.period_s
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
            self.poll_once(client)

    def stop(self) -> None:
        """Stop after one final sample."""
        self.stop_event.set()
        self.join(timeout=30)
