"""`make fault-drill`: kill a VLM replica during a load run; every request must be accounted for.

The drill (DESIGN.md §3 contracts under failure):

* ``--clients`` closed-loop clients POST distinct memes to ``/v1/memes/analyze`` for
  ``--duration`` seconds, each with its own ``x-request-id``;
* at ``--kill-at`` seconds one VLMPool replica is killed while requests are in flight
  on it (the profile's ``engine.faults.delay_ms`` keeps them there);
* ``GET /v1/status`` is polled throughout, so the replica count is seen to drop and
  come back; afterwards one more request must succeed.

Every request must end as an answer (200 with a valid analysis) or an explicit error
(non-2xx with the JSON error body carrying our request id), within the service's
deadline plus a margin: ``sent == answered + errors``, no transport errors, no hangs.

Without ``--url`` the drill starts the graph itself (``memeserve run`` on a copy of
``--config`` via :func:`loadtest.harness.service.start_service`: free port, cache off, the
load controller off, VLMPool at 2 fixed replicas, an engine delay) and kills the
replica's worker process with SIGKILL, as a crash would. With ``--url`` it connects to
that service's Ray cluster (``--ray-address``) and ``ray.kill``s a replica actor.
It prints a JSON summary and exits non-zero when the numbers do not add up.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from loadtest.corpus import payloads
from loadtest.harness.http import post_meme
from loadtest.harness.processes import cmdline, descendants
from loadtest.harness.service import ROOT, load_profile, start_service, stop_service
from loadtest.harness.stats import latency_summary
from loadtest.harness.status import POLL_PERIOD_S, running_replicas, wait_replicas
from serve_app.understanding.analysis import Analysis

APP = "memeserve"
VLM = "VLMPool"

Killer = Callable[[], str]
"""Kills one VLMPool replica; returns a description of the victim."""


@dataclass(frozen=True)
class DrillPlan:
    """What the drill does; the defaults suit a 2-core development machine."""

    clients: int = 6
    duration_s: float = 18.0
    kill_at_s: float = 6.0
    request_timeout_s: float = 20.0
    """The service's ``request_timeout_s``: no request may take longer (plus margin)."""
    margin_s: float = 10.0
    recovery_limit_s: float = 120.0
    replicas: int = 2
    """VLMPool replicas the service runs when healthy."""
    seed: int = 5
    images: int = 48

    @property
    def hang_limit_s(self) -> float:
        """Client timeout: a request still open after this counts as a hang."""
        return self.request_timeout_s + self.margin_s


@dataclass
class Record:
    """One request as the client saw it."""

    request_id: str
    sent_s: float
    status: int | None = None
    latency_s: float | None = None
    outcome: str = "pending"  # answered | error | invalid | transport
    detail: str | None = None
    error_code: str | None = None
    retry_after: bool = False


@dataclass
class StatusSample:
    """The VLMPool replica count from one ``/v1/status`` poll (None: poll failed)."""

    t_s: float
    running: int | None


@dataclass
class DrillRun:
    """Everything the drill observed, before summarising."""

    records: list[Record] = field(default_factory=list)
    samples: list[StatusSample] = field(default_factory=list)
    killed: str | None = None
    kill_s: float | None = None
    kill_error: str | None = None
    final_status: int | None = None
    final_outcome: str | None = None


# ----------------------------------------------------------------------------- pure logic


def classify(
    status: int, headers: httpx.Headers, content: bytes, request_id: str
) -> tuple[str, str | None, str | None]:
    """(outcome, error code, problem) of one HTTP answer to a request sent as ``request_id``.

    ``answered``: a 200 whose body is a valid analysis for this request id; ``error``: a
    non-2xx with the ``{"error": {code, message, request_id}}`` body naming it; anything
    else is ``invalid`` with the problem.
    """
    if headers.get("x-request-id") != request_id:
        return "invalid", None, f"x-request-id header {headers.get('x-request-id')!r}"
    try:
        body = json.loads(content)
    except ValueError:
        return "invalid", None, f"HTTP {status} body is not JSON: {content[:120]!r}"
    if status == 200:
        try:
            analysis = Analysis.model_validate(body)
        except ValidationError as exc:
            return "invalid", None, f"200 body is not an analysis: {str(exc)[:160]}"
        if analysis.request_id != request_id:
            return "invalid", None, f"analysis request_id {analysis.request_id!r}"
        return "answered", None, None
    error = body.get("error") if isinstance(body, dict) else None
    if status < 400 or not isinstance(error, dict):
        return "invalid", None, f"HTTP {status} without an error body: {content[:120]!r}"
    if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
        return "invalid", None, f"HTTP {status} error body lacks code/message: {error}"
    if error.get("request_id") != request_id:
        return "invalid", error.get("code"), f"error request_id {error.get('request_id')!r}"
    return "error", error["code"], None


def recovery(
    samples: list[StatusSample], kill_s: float | None, replicas: int
) -> tuple[float | None, float | None, int | None]:
    """(seconds to the drop, seconds to recovery, fewest replicas seen) after the kill.

    Recovery is the first sample, after one showing fewer than ``replicas`` running,
    that shows ``replicas`` again; None where either never happened.
    """
    if kill_s is None:
        return None, None, None
    after = [s for s in samples if s.t_s >= kill_s and s.running is not None]
    fewest = min((s.running for s in after if s.running is not None), default=None)
    drop = next((s for s in after if s.running is not None and s.running < replicas), None)
    if drop is None:
        return None, None, fewest
    back = next(
        (s for s in after if s.t_s > drop.t_s and s.running is not None and s.running >= replicas),
        None,
    )
    drop_s = round(drop.t_s - kill_s, 1)
    return drop_s, (None if back is None else round(back.t_s - kill_s, 1)), fewest


def summarise(run: DrillRun, plan: DrillPlan, replicas_before: int | None) -> dict[str, Any]:
    """The JSON summary: counts, latencies, the kill and the recovery."""
    records = run.records
    by = Counter(r.outcome for r in records)
    errors = [r for r in records if r.outcome == "error"]
    latencies = [r.latency_s * 1000.0 for r in records if r.latency_s is not None]
    drop_s, recovery_s, fewest = recovery(run.samples, run.kill_s, plan.replicas)
    after = next((s.running for s in reversed(run.samples) if s.running is not None), None)
    summary: dict[str, Any] = {
        "sent": len(records),
        "answered": by["answered"],
        "errors": by["error"],
        "errors_by_status": dict(sorted(Counter(str(r.status) for r in errors).items())),
        "error_codes": dict(sorted(Counter(r.error_code for r in errors).items())),
        "errors_503_without_retry_after": sum(
            1 for r in errors if r.status == 503 and not r.retry_after
        ),
        "invalid": by["invalid"],
        "invalid_examples": [r.detail for r in records if r.outcome == "invalid"][:3],
        "transport_errors": by["transport"],
        "transport_examples": [r.detail for r in records if r.outcome == "transport"][:3],
        "unfinished": by["pending"],
        "latency_ms": latency_summary(latencies),
        "hang_limit_s": plan.hang_limit_s,
        "clients": plan.clients,
        "duration_s": plan.duration_s,
        "killed": run.killed,
        "kill_error": run.kill_error,
        "kill_at_s": None if run.kill_s is None else round(run.kill_s, 1),
        "replicas_before": replicas_before,
        "replicas_fewest": fewest,
        "replicas_after": after,
        "drop_seen_after_s": drop_s,
        "recovery_s": recovery_s,
        "final_status": run.final_status,
        "final_outcome": run.final_outcome,
    }
    summary["consistent"] = summary["sent"] == summary["answered"] + summary["errors"]
    return summary


def problems(summary: dict[str, Any], plan: DrillPlan) -> list[str]:
    """What the drill's contract says is wrong with ``summary`` (empty: passed)."""
    found = []
    if not summary["consistent"]:
        found.append(
            f"sent {summary['sent']} != answered {summary['answered']} + errors "
            f"{summary['errors']} (invalid {summary['invalid']}, transport "
            f"{summary['transport_errors']}, unfinished {summary['unfinished']})"
        )
    if summary["answered"] == 0:
        found.append("no request was answered")
    max_ms = summary["latency_ms"]["max"]
    if max_ms is not None and max_ms > plan.hang_limit_s * 1000.0:
        found.append(f"a request took {max_ms:.0f} ms, over {plan.hang_limit_s:g} s")
    internal = summary["error_codes"].get("internal_error", 0)
    if internal:
        found.append(
            f"{internal} answers were 500 internal_error: a request lost with a replica "
            "must be 503 + Retry-After"
        )
    if summary["errors_503_without_retry_after"]:
        found.append(f"{summary['errors_503_without_retry_after']} 503s lack Retry-After")
    if summary["killed"] is None:
        found.append(f"no replica was killed: {summary['kill_error']}")
    if summary["replicas_before"] != plan.replicas:
        found.append(f"{summary['replicas_before']} VLMPool replicas before, not {plan.replicas}")
    if summary["recovery_s"] is None:
        found.append(
            f"VLMPool did not come back to {plan.replicas} RUNNING replicas within "
            f"{plan.recovery_limit_s:g} s (drop seen after {summary['drop_seen_after_s']} s)"
        )
    if summary["final_outcome"] != "answered":
        found.append(f"the request after recovery was not answered: {summary['final_status']}")
    return found


# ----------------------------------------------------------------------------- the run


async def _send(client: httpx.AsyncClient, data: bytes, record: Record, limit_s: float) -> None:
    started = time.perf_counter()
    try:
        # httpx's timeout is per operation: bound the whole request.
        response = await asyncio.wait_for(
            post_meme(client, data, headers={"x-request-id": record.request_id}), limit_s
        )
    except (httpx.TimeoutException, TimeoutError):
        record.outcome, record.detail = "transport", f"no answer within {limit_s:g} s (hang)"
    except httpx.HTTPError as exc:
        record.outcome, record.detail = "transport", f"{type(exc).__name__}: {exc}"[:200]
    else:
        record.status = response.status_code
        record.retry_after = "retry-after" in response.headers
        record.outcome, record.error_code, record.detail = classify(
            response.status_code, response.headers, response.content, record.request_id
        )
    record.latency_s = time.perf_counter() - started


async def _drill(url: str, kill: Killer, plan: DrillPlan, images: list[bytes]) -> DrillRun:
    run = DrillRun()
    t0 = time.perf_counter()
    load_end = t0 + plan.duration_s
    recovered = asyncio.Event()

    async def client_loop(number: int, client: httpx.AsyncClient) -> None:
        sequence = 0
        while time.perf_counter() < load_end:
            record = Record(f"drill-{plan.seed}-{number}-{sequence}", time.perf_counter() - t0)
            run.records.append(record)
            data = images[(number + sequence * plan.clients) % len(images)]
            sequence += 1
            await _send(client, data, record, plan.hang_limit_s)

    async def killer() -> None:
        await asyncio.sleep(max(0.0, t0 + plan.kill_at_s - time.perf_counter()))
        run.kill_s = time.perf_counter() - t0
        try:
            run.killed = await asyncio.to_thread(kill)
        except Exception as exc:
            run.kill_error = f"{type(exc).__name__}: {exc}"[:300]

    async def poller(client: httpx.AsyncClient) -> None:
        limit = t0 + plan.kill_at_s + plan.recovery_limit_s
        while time.perf_counter() < limit:
            started = time.perf_counter()
            running = await running_replicas(client, VLM)
            run.samples.append(StatusSample(round(started - t0, 2), running))
            _, back, _ = recovery(run.samples, run.kill_s, plan.replicas)
            if back is not None and time.perf_counter() >= load_end:
                break
            await asyncio.sleep(POLL_PERIOD_S)
        recovered.set()

    limits = httpx.Limits(max_connections=plan.clients + 8)
    # httpx's own default (5 s an operation) would cut off a request that the killed
    # replica's recovery delayed and count it as a hang: only hang_limit_s bounds one.
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=plan.hang_limit_s) as client,
        httpx.AsyncClient(base_url=url, timeout=10) as status_client,
    ):
        tasks = [asyncio.create_task(client_loop(n, client)) for n in range(plan.clients)]
        kill_task = asyncio.create_task(killer())
        poll_task = asyncio.create_task(poller(status_client))
        await asyncio.gather(*tasks, kill_task)
        await poll_task
        final = Record(f"drill-{plan.seed}-final", time.perf_counter() - t0)
        await _send(client, images[-1], final, plan.hang_limit_s)
        run.final_status, run.final_outcome = final.status, final.outcome
    return run


def run_drill(url: str, kill: Killer, plan: DrillPlan | None = None) -> dict[str, Any]:
    """Run the kill-a-VLM-replica drill against ``url``; return the JSON summary.

    ``kill`` runs once, ``plan.kill_at_s`` into the load. Check the result with
    :func:`problems`.
    """
    plan = plan or DrillPlan()
    images = payloads(plan.images, plan.seed)
    before = asyncio.run(wait_replicas(url, VLM, plan.replicas, plan.recovery_limit_s))
    run = asyncio.run(_drill(url, kill, plan, images))
    return summarise(run, plan, before)


# ----------------------------------------------------------------------------- killers


def replica_actor_names(app: str = APP, deployment: str | None = VLM) -> list[str]:
    """Names (namespace ``serve``) of the live replica actors of ``app``'s ``deployment``
    (of every deployment of ``app`` when it is None)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#" + ("" if deployment is None else f"{deployment}#")
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry.get("namespace") == "serve" and entry["name"].startswith(prefix)
    )


def ray_replica_killer(app: str = APP, deployment: str = VLM) -> Killer:
    """A killer that ``ray.kill``s one replica actor (this process must be connected to Ray)."""

    def kill() -> str:
        import ray

        names = replica_actor_names(app, deployment)
        if not names:
            raise RuntimeError(f"no live {deployment} replica actor of {app}")
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        return names[0]

    return kill


def process_replica_killer(root_pid: int, app: str = APP, deployment: str = VLM) -> Killer:
    """A killer that SIGKILLs one replica's worker process among ``root_pid``'s descendants."""
    title = f"ray::ServeReplica:{app}:{deployment}"

    def kill() -> str:
        found = sorted(pid for pid in descendants(root_pid) if cmdline(pid).startswith(title))
        if not found:
            raise RuntimeError(f"no process titled {title!r} under pid {root_pid}")
        os.kill(found[0], signal.SIGKILL)
        return f"pid {found[0]} ({title})"

    return kill


# ----------------------------------------------------------------------------- the service


def drill_document(
    document: dict[str, Any],
    *,
    delay_ms: float = 300.0,
    request_timeout_s: float = 20.0,
    replicas: int = 2,
    seed: int = 5,
) -> dict[str, Any]:
    """A copy of a Serve profile for the drill.

    Cache off (every request reaches an engine), ``engine.faults.delay_ms`` (requests
    stay in flight on the replicas), the load controller off (no shedding), and VLMPool
    at ``replicas`` fixed replicas (no autoscaling: the count must come back by itself).
    """
    doc = copy.deepcopy(document)
    for app in doc.get("applications", []):
        args = app.setdefault("args", {})
        args["cache"] = {**(args.get("cache") or {}), "enabled": False, "backend": "memory"}
        engine = args.setdefault("engine", {})
        engine["faults"] = {"error_rate": 0.0, "delay_ms": delay_ms, "seed": seed}
        args["request_timeout_s"] = request_timeout_s
        names = set()
        for deployment in app.setdefault("deployments", []):
            names.add(deployment.get("name"))
            if deployment.get("name") == VLM:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = replicas
            if deployment.get("name") == "LoadController":
                deployment.setdefault("user_config", {})["enabled"] = False
        if VLM not in names:
            app["deployments"].append({"name": VLM, "num_replicas": replicas})
        if "LoadController" not in names:
            app["deployments"].append({"name": "LoadController", "user_config": {"enabled": False}})
    return doc


def _own_service(args: argparse.Namespace, plan: DrillPlan) -> dict[str, Any]:
    document = drill_document(
        load_profile(args.config),
        delay_ms=args.delay_ms,
        request_timeout_s=plan.request_timeout_s,
        replicas=plan.replicas,
        seed=plan.seed,
    )
    service = start_service(document, name="fault_drill", fresh_library=False)
    try:
        summary = run_drill(service.url, process_replica_killer(service.pid), plan)
    finally:
        summary_stop = stop_service(service, force_ray_stop=True).to_json()
    summary["service_ready_s"] = round(service.ready_s, 1)
    summary["service_log"] = str(service.log_path)
    summary["service_stop"] = summary_stop
    return summary


def _remote_service(args: argparse.Namespace, plan: DrillPlan) -> dict[str, Any]:
    import ray

    ray.init(address=args.ray_address, namespace="serve", log_to_driver=False)
    try:
        return run_drill(args.url, ray_replica_killer(), plan)
    finally:
        ray.shutdown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (else one is started)")
    parser.add_argument(
        "--ray-address", default="auto", help="with --url: the Ray cluster to kill a replica in"
    )
    parser.add_argument("--config", type=Path, default=Path("autoscale_configs/dev-cpu.yaml"))
    parser.add_argument("--clients", type=int, default=DrillPlan.clients)
    parser.add_argument("--duration", type=float, default=DrillPlan.duration_s)
    parser.add_argument("--kill-at", type=float, default=DrillPlan.kill_at_s)
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DrillPlan.request_timeout_s,
        help="the service's request_timeout_s (set on the started one)",
    )
    parser.add_argument("--delay-ms", type=float, default=300.0, help="engine.faults.delay_ms")
    parser.add_argument("--replicas", type=int, default=DrillPlan.replicas)
    parser.add_argument("--recovery-limit", type=float, default=DrillPlan.recovery_limit_s)
    parser.add_argument("--seed", type=int, default=DrillPlan.seed)
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "fault_drill.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the drill, print and write the JSON summary; 1 when the contract is broken."""
    args = parse_args(argv)
    plan = DrillPlan(
        clients=args.clients,
        duration_s=args.duration,
        kill_at_s=args.kill_at,
        request_timeout_s=args.request_timeout,
        recovery_limit_s=args.recovery_limit,
        replicas=args.replicas,
        seed=args.seed,
    )
    summary = _remote_service(args, plan) if args.url else _own_service(args, plan)
    summary["problems"] = problems(summary, plan)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n", "utf-8")
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
