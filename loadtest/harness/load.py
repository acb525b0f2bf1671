"""Request drivers: open-loop Poisson arrivals and closed loops, with their outcomes.

The open loop sends on a fixed schedule whatever the service answers (the overload a
web tier would bring), records one :class:`Outcome` per request and polls
``/v1/status`` meanwhile; the closed loop keeps a fixed number of requests going and
tells the sustained throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.harness.http import async_client, post_meme
from loadtest.harness.status import POLL_PERIOD_S, Sample, poll_status

logger = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 75.0  # above the service's 60 s request deadline
CLIENT_SHARDS = 16
RECOVERY_LIMIT_S = 30.0
DRAIN_LIMIT_S = CLIENT_TIMEOUT_S + 15.0


@dataclass
class Outcome:
    """One open-loop request, as the client saw it."""

    sent_s: float  # since the start of the arrivals
    latency_ms: float | None = None  # None: no HTTP answer
    status: int | None = None
    failure: str | None = None  # "timeout" or "connection" when there was no answer
    retry_after: bool = False
    level: int | None = None  # meta.degradation_level of a 200
    cache_hit: bool = False
    error_code: str | None = None
    send_lag_ms: float = 0.0  # how late the client sent it against the schedule
    server_ms: float | None = None  # a 200's meta.timings_ms.total: inside the Ingress
    engine_ms: float | None = None  # a 200's meta.timings_ms.engine (0 for cache hits)


def poisson_schedule(rate: float, duration_s: float, seed: int) -> list[float]:
    """Send offsets (s) of a Poisson process at ``rate``/s over ``duration_s``, seeded."""
    if rate <= 0 or duration_s <= 0:
        return []
    rng = random.Random(seed)
    offsets: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _record_response(outcome: Outcome, response: httpx.Response) -> None:
    outcome.status = response.status_code
    outcome.retry_after = "retry-after" in response.headers
    try:
        body = response.json()
    except ValueError:
        return
    if not isinstance(body, dict):
        return
    if response.status_code == 200:
        meta = body.get("meta") or {}
        outcome.level = meta.get("degradation_level")
        outcome.cache_hit = bool((meta.get("cache") or {}).get("hit"))
        timings = meta.get("timings_ms") or {}
        outcome.server_ms = _number(timings.get("total"))
        outcome.engine_ms = _number(timings.get("engine"))
    elif isinstance(body.get("error"), dict):
        outcome.error_code = body["error"].get("code")


async def send_one(
    client: httpx.AsyncClient, data: bytes, outcome: Outcome, limit_s: float = CLIENT_TIMEOUT_S
) -> None:
    """Send one analyze request and fill ``outcome`` in."""
    started = time.perf_counter()
    try:
        # httpx's timeout is per operation (connect, write, each read): bound the total.
        response = await asyncio.wait_for(post_meme(client, data), limit_s)
    except (httpx.TimeoutException, TimeoutError):
        outcome.failure = "timeout"
    except httpx.HTTPError:
        outcome.failure = "connection"
    else:
        _record_response(outcome, response)
        outcome.latency_ms = (time.perf_counter() - started) * 1000.0


async def closed_loop(url: str, images: list[bytes], concurrency: int, seconds: float) -> float:
    """Keep ``concurrency`` requests going for ``seconds``; 200s per second of wall time."""
    queue = iter(images)
    successes = 0
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal successes
        while time.monotonic() < deadline:
            data = next(queue, None)
            if data is None:
                return
            with contextlib.suppress(httpx.HTTPError):
                if (await post_meme(client, data)).status_code == 200:
                    successes += 1

    started = time.monotonic()
    async with async_client(url, CLIENT_TIMEOUT_S) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return successes / (time.monotonic() - started)


@contextlib.asynccontextmanager
async def send_on_schedule(
    url: str,
    images: list[bytes],
    outcomes: list[Outcome],
    t0: float,
    shards: int = CLIENT_SHARDS,
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Send ``images[i]`` at ``t0 + outcomes[i].sent_s`` (``time.perf_counter``), each
    answer into its outcome, whatever the service answers, over ``shards`` clients;
    yields the request tasks once every one is sent. The clients stay open until the
    block ends."""
    async with contextlib.AsyncExitStack() as stack:
        # Several small pools: httpx scans its whole pool per request, and an overloaded
        # service holds hundreds of connections open at once.
        clients = [
            await stack.enter_async_context(async_client(url, CLIENT_TIMEOUT_S))
            for _ in range(shards)
        ]
        tasks: list[asyncio.Task[None]] = []
        for number, (data, outcome) in enumerate(zip(images, outcomes, strict=True)):
            delay = t0 + outcome.sent_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome.send_lag_ms = round(max(0.0, -delay) * 1000.0, 1)
            client = clients[number % shards]
            tasks.append(asyncio.create_task(send_one(client, data, outcome)))
        yield tasks


async def end_run(stop: asyncio.Event, poller: asyncio.Task[None], outcomes: list[Outcome]) -> None:
    """Stop the status poller of a run; a request that never finished counts as abandoned."""
    stop.set()
    await poller
    for outcome in outcomes:
        if outcome.status is None and outcome.failure is None:
            outcome.failure = "abandoned"


async def open_loop(
    url: str, images: list[bytes], schedule: list[float], duration_s: float
) -> dict[str, Any]:
    """Arrivals on ``schedule``, status polling, drain, and the wait for level 0 after.

    Returns the outcomes, the status samples, when the arrivals ended, how long the
    drain took and how many requests were abandoned at its limit.
    """
    outcomes = [Outcome(sent_s=offset) for offset in schedule]
    samples: list[Sample] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    poller = asyncio.create_task(poll_status(url, t0, samples, stop))
    async with send_on_schedule(url, images, outcomes, t0) as tasks:
        await asyncio.sleep(max(0.0, t0 + duration_s - time.perf_counter()))
        arrivals_end = time.perf_counter() - t0
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=DRAIN_LIMIT_S)
        for task in pending:
            task.cancel()
        drained_s = time.perf_counter() - t0 - arrivals_end
    recovery_deadline = time.perf_counter() + RECOVERY_LIMIT_S
    while time.perf_counter() < recovery_deadline:
        answered = [s for s in samples if s.ok and s.level is not None]
        if answered and answered[-1].level == 0 and answered[-1].t_s >= arrivals_end:
            break
        await asyncio.sleep(POLL_PERIOD_S)
    await end_run(stop, poller, outcomes)
    return {
        "outcomes": outcomes,
        "samples": samples,
        "arrivals_end_s": round(arrivals_end, 2),
        "drain_s": round(drained_s, 1),
        "abandoned": len(pending),
    }
