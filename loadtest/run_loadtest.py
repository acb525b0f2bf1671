"""`make loadtest`: Locust against memeserve, with the service's own view alongside.

    python -m loadtest.run_loadtest [--url URL | --config autoscale_configs/dev-cpu.yaml]
        [--shape step|spike|soak|none] [--users N --spawn-rate R --run-time 75s]
        [--out artifacts/loadtest]

Without ``--url`` the profile is started with ``memeserve run`` on a free port and a
fresh library file, and stopped afterwards, by :mod:`loadtest.harness.service`. Locust runs
headless as a subprocess on ``loadtest/locustfile.py``; the shape is chosen through
``MEMESERVE_SHAPE`` and sized from ``--users``/``--run-time`` through
``MEMESERVE_SHAPE_PARAMS`` (see the locustfile's docstring). Meanwhile ``/v1/status`` is
polled every second into ``status_timeline.jsonl``. Written to ``--out``:

* ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
  ``locust_exceptions.csv``, ``locust.html``, ``locust.log`` — Locust's own output;
* ``status_timeline.jsonl`` — degradation level and load, in-flight, library figures and
  RUNNING replicas per second;
* ``summary.json`` and ``loadtest.png`` — see :mod:`loadtest.report`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.harness.service import (
    ROOT,
    Service,
    ServiceStartError,
    start_service,
    stop_service,
)
from loadtest.harness.status import StatusPoller
from loadtest.report import format_summary, render_chart, status_sample, summarise

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
POLL_PERIOD_S = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")


def parse_duration(text: str) -> float:
    """Seconds in a Locust-style duration: ``90``, ``90s``, ``2m``, ``1h30m``, ``1m30s``."""
    text = text.strip().lower()
    total, position = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (e.g. 75s, 2m, 1m30s)")
    return total


def shape_params(shape: str, users: int, spawn_rate: float, run_time_s: float) -> dict[str, Any]:
    """The shape's settings (``MEMESERVE_SHAPE_PARAMS``) for ``users`` over ``run_time_s``.

    ``step``: three equal steps up to ``users``; ``spike``: a quarter of the users, all of
    them in the middle third, back; ``soak``: ``users`` throughout. ``none``: no shape.
    """
    if shape == "step":
        steps = 3
        return {
            "steps": steps,
            "step_users": max(1, math.ceil(users / steps)),
            "step_duration_s": run_time_s / steps,
            "spawn_rate": spawn_rate,
        }
    if shape == "spike":
        return {
            "base_users": max(1, users // 4),
            "spike_users": users,
            "spike_at_s": run_time_s / 3,
            "spike_duration_s": run_time_s / 3,
            "total_s": run_time_s,
            "spawn_rate": max(spawn_rate, float(users)),
        }
    if shape == "soak":
        return {"users": users, "duration_s": run_time_s, "spawn_rate": spawn_rate}
    return {}


def timeline_writer(path: Path) -> Callable[[float, dict[str, Any] | None, str | None], None]:
    """Records each ``/v1/status`` poll as one :func:`status_sample` line of ``path``."""

    def record(ts: float, body: dict[str, Any] | None, error: str | None) -> None:
        sample = status_sample(ts, body, error=error)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")

    return record


def locust_command(
    url: str, out: Path, shape: str, users: int, spawn_rate: float, run_time: str
) -> list[str]:
    """The headless Locust command line (common options only without a shape)."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--stop-timeout",
        "10",
        "--logfile",
        str(out / "locust.log"),
    ]
    if shape == "none":
        command += ["--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time]
    return command


def run_locust(command: list[str], env: dict[str, str], timeout_s: float, out: Path) -> int:
    """Run Locust to completion (killed after ``timeout_s``); its stdout goes to a file."""
    with (out / "locust.stdout").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # Locust writes its reports on SIGINT
            try:
                return process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the load test and write the report; returns 0, or 1 on contract failures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help="load this running service instead")
    target.add_argument(
        "--config",
        type=Path,
        default=Path("autoscale_configs/dev-cpu.yaml"),
        help="profile to start (default: the CPU development profile)",
    )
    parser.add_argument("--shape", choices=("step", "spike", "soak", "none"), default="step")
    parser.add_argument("--users", type=int, default=9, help="peak users (default 9)")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    parser.add_argument("--run-time", default="75s", help="length of the load (default 75s)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the meme corpora")
    parser.add_argument(
        "--cooldown",
        default="0s",
        help="keep reading /v1/status this long after the load (scale-down, level recovery)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "loadtest")
    args = parser.parse_args(argv)
    run_time_s = parse_duration(args.run_time)
    cooldown_s = parse_duration(args.cooldown)
    if args.users < 1 or run_time_s <= 0:
        parser.error("--users and --run-time must be positive")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*out.glob("locust*"), out / "status_timeline.jsonl", out / "summary.json"):
        stale.unlink(missing_ok=True)
    params = shape_params(args.shape, args.users, args.spawn_rate, run_time_s)
    env = dict(
        os.environ,
        MEMESERVE_SHAPE=args.shape,
        MEMESERVE_SHAPE_PARAMS=json.dumps(params),
        MEMESERVE_SEED=str(args.seed),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )

    service: Service | None = None
    url = args.url
    ready_s = None
    try:
        if url is None:
            print(f"loadtest: starting {args.config} ...", flush=True)
            try:
                service = start_service(args.config, name="loadtest")
            except ServiceStartError as exc:
                # A start can fail when other Ray clusters on the host compete for it; once.
                print(f"loadtest: the service did not start ({exc}); trying once more", flush=True)
                service = start_service(args.config, name="loadtest")
            url, ready_s = service.url, service.ready_s
            print(f"loadtest: service ready in {ready_s:.1f} s at {url}", flush=True)
        url = url.rstrip("/")
        poller = StatusPoller(
            url, timeline_writer(out / "status_timeline.jsonl"), period_s=POLL_PERIOD_S
        )
        command = locust_command(url, out, args.shape, args.users, args.spawn_rate, args.run_time)
        print(
            f"loadtest: locust, shape {args.shape} {json.dumps(params)} for {run_time_s:.0f} s",
            flush=True,
        )
        t0 = time.time()
        poller.start()
        try:
            rc = run_locust(command, env, run_time_s + 120, out)
            if cooldown_s:
                print(f"loadtest: load over; reading /v1/status for {cooldown_s:.0f} s", flush=True)
                time.sleep(cooldown_s)  # the poller keeps sampling the idle service meanwhile
        finally:
            poller.stop()
    finally:
        if service is not None:
            print("loadtest: stopping the service ...", flush=True)
            stop_service(service)

    summary = summarise(
        out,
        t0=t0,
        url=url,
        config=None if args.url else str(args.config),
        shape=args.shape,
        shape_params=params,
        seed=args.seed,
        ready_s=round(ready_s, 1) if ready_s is not None else None,
        locust_exit_code=rc,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), "utf-8")
    render_chart(out, out / "loadtest.png", t0=t0)
    print(format_summary(summary))
    print(f"  written to {out}/ (summary.json, loadtest.png, locust.html, CSVs)")
    if not summary["requests"]:
        print("loadtest: no requests were made; see locust.log", file=sys.stderr)
        return 1
    return 1 if summary["other_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
