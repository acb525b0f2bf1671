"""Serve's autoscaler at work on CPU: a step load scales the VLM pool up, then back down.

Starts the profile (``autoscale_configs/test-autoscale-cpu.yaml`` by default) with
``memeserve run`` on a free port, applies a step load — ``--users`` closed-loop clients,
each posting a fresh meme as soon as its previous answer came back, every meme distinct
so that none is a cache hit — for ``--load-s`` seconds, stops it, and keeps watching
until the pool is back at its minimum. Throughout, every 0.5 s, it reads
``/v1/status`` → ``replicas.VLMPool.replicas`` (replica state → count).

Prints a timeline (time, VLM replicas running / starting / stopping, requests in flight
in the ingress, requests done) and the key times: load start, first scale-up, peak,
load end, back at the minimum. Writes the same as JSON with ``--json``.

    python -m loadtest.autoscale_demo [--config autoscale_configs/test-autoscale-cpu.yaml]
        [--users 6] [--load-s 30] [--json artifacts/autoscale_demo.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest.corpus import CAPTIONS, MemeSpec, meme_bytes
from loadtest.harness.http import ANALYZE
from loadtest.harness.service import ROOT, load_profile, start_service, stop_service
from loadtest.harness.status import POLL_PERIOD_S, pool_state, read_status

DEFAULT_CONFIG = ROOT / "autoscale_configs" / "test-autoscale-cpu.yaml"
VLM = "VLMPool"


@dataclass
class Sample:
    """One reading of ``/v1/status``, ``t`` seconds after the load started."""

    t: float
    running: int
    starting: int
    stopping: int
    in_flight: int | None
    done: int
    errors: int


@dataclass
class DemoResult:
    """A whole run: the samples and the key times (seconds after the load started)."""

    users: int
    load_s: float
    min_replicas: int
    max_replicas: int | None
    samples: list[Sample] = field(default_factory=list)
    load_end_t: float | None = None
    first_starting_t: float | None = None
    first_scale_up_t: float | None = None
    peak_replicas: int = 0
    peak_t: float | None = None
    back_to_min_t: float | None = None
    requests_done: int = 0
    request_errors: int = 0
    cache_hits: int = 0

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON-able data."""
        return asdict(self)


def vlm_autoscaling(config: Path) -> dict[str, Any]:
    """The VLMPool ``autoscaling_config`` of the profile (empty if it has none)."""
    document = load_profile(config)
    for deployment in document["applications"][0].get("deployments") or []:
        if deployment.get("name") == VLM:
            return dict(deployment.get("autoscaling_config") or {})
    return {}


def read_pool(client: httpx.Client) -> tuple[int, int, int, int | None] | None:
    """(running, starting, stopping, ingress in-flight) from ``/v1/status``; None if unread."""
    body = read_status(client)
    state = None if body is None else pool_state(body, VLM)
    if body is None or state is None:
        return None
    in_flight = body.get("in_flight")
    in_flight = in_flight if isinstance(in_flight, int) else None
    return state.running, state.starting, state.stopping, in_flight


class StepLoad:
    """``users`` closed-loop clients posting distinct fresh memes until :meth:`stop`."""

    def __init__(self, url: str, users: int, seed: int = 4711) -> None:
        self._url = url
        self._users = users
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Template numbers far from the other benchmarks' corpora: every meme is new.
        self._templates = itertools.count(seed * 1_000_003)
        self._threads: list[threading.Thread] = []
        self.done = 0
        self.errors = 0
        self.cache_hits = 0
        self.last_error: str | None = None

    def _next_meme(self) -> bytes:
        with self._lock:
            template = next(self._templates)
        spec = MemeSpec(
            template=template,
            top=CAPTIONS[template % len(CAPTIONS)],
            bottom=CAPTIONS[(template // len(CAPTIONS)) % len(CAPTIONS)],
            size=(480, 480),
        )
        return meme_bytes(spec, "JPEG", quality=88)

    def _client_loop(self) -> None:
        with httpx.Client(base_url=self._url, timeout=120) as client:
            while not self._stop.is_set():
                data = self._next_meme()
                try:
                    response = client.post(ANALYZE, files={"image": ("m.jpg", data)})
                    ok = response.status_code == 200
                    hit = ok and bool(response.json()["meta"]["cache"]["hit"])
                    error = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    ok, hit, error = False, False, repr(exc)
                with self._lock:
                    self.done += ok
                    self.errors += not ok
                    self.cache_hits += hit
                    if error is not None:
                        self.last_error = error

    def start(self) -> None:
        """Start every client at once (the step)."""
        for index in range(self._users):
            thread = threading.Thread(target=self._client_loop, name=f"user-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stop sending; wait for the requests already sent to come back."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def run_scenario(
    url: str,
    users: int,
    load_s: float,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    settle_timeout_s: float = 90.0,
    on_sample: Callable[[Sample], None] | None = None,
    hold_until_scaled_s: float | None = None,
) -> DemoResult:
    """Step load on the running service at ``url``; watch the VLM pool until it settles.

    The load lasts ``load_s`` seconds; with ``hold_until_scaled_s``, it goes on past that
    until the pool has scaled up, but no longer than ``hold_until_scaled_s`` in all (a
    slow machine then still shows the whole cycle). Samples every 0.5 s from the load
    start until the pool is back at ``min_replicas`` RUNNING (and none starting or
    stopping) after the load, or ``settle_timeout_s`` after the load ended. Never raises
    on a slow scale-up or scale-down: the result tells.
    """
    hold_s = max(load_s, hold_until_scaled_s or load_s)
    result = DemoResult(users, load_s, min_replicas, max_replicas)
    load = StepLoad(url, users)
    stopper: threading.Thread | None = None
    with httpx.Client(base_url=url, timeout=5) as client:
        started = time.monotonic()
        load.start()
        load_end: float | None = None
        next_tick = started
        while True:
            now = time.monotonic()
            scaled = result.first_scale_up_t is not None
            if load_end is None and now - started >= (load_s if scaled else hold_s):
                # Stop in the background: the clients finish their last request meanwhile.
                load_end = now
                result.load_end_t = round(now - started, 2)
                stopper = threading.Thread(target=load.stop, daemon=True)
                stopper.start()
            pool = read_pool(client)
            if pool is not None:
                running, starting, stopping, in_flight = pool
                sample = Sample(
                    round(time.monotonic() - started, 2),
                    running,
                    starting,
                    stopping,
                    in_flight,
                    load.done,
                    load.errors,
                )
                result.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                if starting and result.first_starting_t is None:
                    result.first_starting_t = sample.t
                if running > min_replicas and result.first_scale_up_t is None:
                    result.first_scale_up_t = sample.t
                if running > result.peak_replicas:
                    result.peak_replicas, result.peak_t = running, sample.t
                settled = running == min_replicas and starting == 0 and stopping == 0
                if load_end is not None and result.first_scale_up_t is not None and settled:
                    result.back_to_min_t = sample.t
                    break
            if load_end is not None and time.monotonic() - load_end > settle_timeout_s:
                break
            next_tick += POLL_PERIOD_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
    load.stop()
    if stopper is not None:
        stopper.join()
    result.requests_done, result.request_errors = load.done, load.errors
    result.cache_hits = load.cache_hits
    return result


def _row(sample: Sample) -> str:
    in_flight = "-" if sample.in_flight is None else str(sample.in_flight)
    return (
        f"  {sample.t:6.1f}  {sample.running:7d}  {sample.starting:8d}  {sample.stopping:8d}  "
        f"{in_flight:>9s}  {sample.done:5d}  {sample.errors:6d}"
    )


def _when(t: float | None) -> str:
    return "never" if t is None else f"{t:6.1f} s"


def print_summary(result: DemoResult) -> None:
    """The key times of a run."""
    print("key times (seconds after the load started):")
    print(f"  load start                    {0.0:6.1f} s   ({result.users} users)")
    print(f"  first replica starting        {_when(result.first_starting_t)}")
    print(f"  first scale-up (>1 running)   {_when(result.first_scale_up_t)}")
    peak = f"{result.peak_replicas} replicas at {_when(result.peak_t).strip()}"
    print(f"  peak                          {peak}   (max_replicas {result.max_replicas})")
    print(f"  load end                      {_when(result.load_end_t)}")
    print(f"  back to {result.min_replicas} replica(s)          {_when(result.back_to_min_t)}")
    if result.back_to_min_t is not None and result.load_end_t is not None:
        print(f"  scale-down took               {result.back_to_min_t - result.load_end_t:6.1f} s")
    load_s = result.load_end_t or result.load_s
    rate = result.requests_done / load_s if load_s else 0.0
    print(
        f"  requests: {result.requests_done} answered (~{rate:.1f}/s over the load), "
        f"{result.request_errors} errors, {result.cache_hits} cache hits"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; exit status 0 when the pool scaled up and back down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--load-s", type=float, default=30.0)
    parser.add_argument("--settle-timeout-s", type=float, default=90.0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    autoscaling = vlm_autoscaling(args.config)
    min_replicas = int(autoscaling.get("min_replicas", 1))
    max_replicas = autoscaling.get("max_replicas")
    print(f"memeserve autoscaling demo ({args.config}, {os.cpu_count()} CPUs)")
    print(
        "  VLMPool autoscaling_config: "
        + ", ".join(f"{key}={value}" for key, value in autoscaling.items())
    )
    print("starting the service ...", flush=True)
    service = start_service(args.config, name="autoscale_demo")
    url, ready_s = service.url, service.ready_s
    left: list[int] = []
    try:
        print(f"  ready in {ready_s:.1f} s at {url}", flush=True)
        print(
            f"step load: {args.users} closed-loop clients for {args.load_s:.0f} s, "
            "then none; VLM pool read every 0.5 s"
        )
        print("       t  running  starting  stopping  in_flight   done  errors")
        last: tuple[int, int, int] | None = None
        last_t = -10.0

        def show(sample: Sample) -> None:
            nonlocal last, last_t
            state = (sample.running, sample.starting, sample.stopping)
            # Every change of the pool, and a heartbeat row every 2 s.
            if state != last or sample.t - last_t >= 2.0:
                print(_row(sample), flush=True)
                last, last_t = state, sample.t

        result = run_scenario(
            url,
            args.users,
            args.load_s,
            min_replicas=min_replicas,
            max_replicas=int(max_replicas) if max_replicas is not None else None,
            settle_timeout_s=args.settle_timeout_s,
            on_sample=show,
        )
        if result.samples and result.samples[-1].t != last_t:
            print(_row(result.samples[-1]))
    finally:
        print("stopping the service ...", flush=True)
        left = stop_service(service).strays_killed
    print_summary(result)
    if left:
        print(f"  warning: processes left after the stop were killed: {left}")
    else:
        print("  service stopped; no process of it left")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"config": str(args.config), "ready_s": round(ready_s, 1), **result.to_json()}
        args.json.write_text(json.dumps(document, indent=2), "utf-8")
        print(f"  written to {args.json}")
    scaled = result.peak_replicas > min_replicas and result.back_to_min_t is not None
    return 0 if scaled else 1


if __name__ == "__main__":
    sys.exit(main())
