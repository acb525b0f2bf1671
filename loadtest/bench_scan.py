"""`make bench-scan`: ``memeserve scan`` (Ray Data) against the online HTTP path.

Draws ``--items`` distinct seeded memes (JPEG, no context text) into a temporary folder,
then, on the same machine, with the same profile (the lite engine by default) and a
fresh fingerprint library for every run, one run each of:

* **scan, embedded Ray**: ``memeserve scan DIR --out …`` as a user runs it (the time
  includes starting Ray and the engines);
* **HTTP**: the service started with the harness (:mod:`loadtest.harness.service`;
  start-to-ready reported, not counted), every meme sent by ``--clients`` concurrent
  clients (multipart ``/v1/memes/analyze``) until answered: a bulk client sends a
  load-shedding refusal (429/503) again after its ``Retry-After``, and the refusals are
  counted; items/s = 200s over the wall time of the sending;
* **scan on one logical node** and **on two logical nodes** (``ray.cluster_utils.Cluster``:
  one node with ``--cpus`` CPUs, then two with half each; the cluster is started before
  the timed scan, which joins it through ``RAY_ADDRESS`` as under ``ray job submit``).

Prints the table with the ratios and writes ``artifacts/bench_scan.json``. On one
machine, two logical nodes share the same cores: that ratio is the cost of spreading
the pipeline over nodes (object transfers, scheduling), not a speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.corpus import corpus, meme_bytes
from loadtest.harness.http import SHED_STATUSES, async_client, post_meme
from loadtest.harness.load import CLIENT_TIMEOUT_S
from loadtest.harness.service import ROOT, service_document, start_service, stop_service
from loadtest.harness.stats import latency_summary

DEFAULT_CONFIG = Path("autoscale_configs/dev-cpu.yaml")
SCAN_TIMEOUT_S = 3600.0
MAX_SENDS = 50
"""Sends of one meme at most while the service keeps refusing it (429/503)."""


def write_corpus(folder: Path, items: int, seed: int) -> list[Path]:
    """``items`` distinct memes as JPEG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, spec in enumerate(corpus(items, seed=seed)):
        path = folder / f"meme{index:05d}.jpg"
        path.write_bytes(meme_bytes(spec, "JPEG", quality=88))
        paths.append(path)
    return paths


def fresh_profile(config: Path, folder: Path, name: str) -> Path:
    """A copy of ``config`` with a new, empty library file; its path."""
    document = service_document(config, fresh_library=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), "utf-8")
    return path


def run_scan(
    source: Path,
    out: Path,
    profile: Path,
    *,
    concurrency: int,
    batch_size: int,
    cpus: int,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """One ``memeserve scan`` as a subprocess; its summary.json plus the command's wall time."""
    command = [
        sys.executable,
        "-m",
        "serve_app.ops.cli",
        "scan",
        str(source),
        "--out",
        str(out),
        "--config",
        str(profile),
        "--concurrency",
        str(concurrency),
        "--batch-size",
        str(batch_size),
        "--num-cpus",
        str(cpus),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT_S,
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"scan failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text("utf-8"))
    summary["command_wall_s"] = round(wall, 2)
    after_start = summary["wall_s"] - summary["startup_s"]
    summary["items_per_s_after_start"] = (
        round(summary["written"] / after_start, 3) if after_start > 0 else None
    )
    return summary


async def _send_all(url: str, images: list[bytes], clients: int) -> dict[str, Any]:
    """Every image answered once, ``clients`` at a time; items/s of 200s and the latencies.

    A bulk client honours load shedding: a 429/503 is sent again after its
    ``Retry-After`` (the refusals are counted), so every meme ends answered or failed.
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in images:
        queue.put_nowait(data)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    levels: dict[str, int] = {}
    refusals = 0

    async def answer(client: httpx.AsyncClient, data: bytes) -> str:
        nonlocal refusals
        for _ in range(MAX_SENDS):
            started = time.perf_counter()
            try:
                response = await post_meme(client, data)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            if response.status_code not in SHED_STATUSES:
                latencies.append((time.perf_counter() - started) * 1000.0)
                if response.status_code == 200:
                    level = str(response.json()["meta"]["degradation_level"])
                    levels[level] = levels.get(level, 0) + 1
                return str(response.status_code)
            refusals += 1
            await asyncio.sleep(float(response.headers.get("retry-after") or 1.0))
        return "gave_up"

    async def worker() -> None:
        async with async_client(url, CLIENT_TIMEOUT_S) as client:
            while not queue.empty():
                key = await answer(client, queue.get_nowait())
                statuses[key] = statuses.get(key, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    ok = statuses.get("200", 0)
    return {
        "items": len(images),
        "statuses": statuses,
        "refused_and_resent": refusals,
        "answers_by_level": dict(sorted(levels.items())),
        "wall_s": round(wall, 2),
        "items_per_s": round(ok / wall, 3),
        "latency_ms": latency_summary(latencies),
    }


def run_http(config: Path, paths: list[Path], clients: int) -> dict[str, Any]:
    """The service (fresh library) and ``clients`` concurrent senders over every meme."""
    images = [path.read_bytes() for path in paths]
    service = start_service(config, name="bench_scan", fresh_library=True)
    try:
        result = asyncio.run(_send_all(service.url, images, clients))
    finally:
        stop_service(service)
    result["ready_s"] = round(service.ready_s, 1)
    return result


@contextmanager
def cluster(nodes: int, cpus: int) -> Iterator[str]:
    """A local Ray cluster of ``nodes`` logical nodes sharing ``cpus`` CPUs; its address."""
    from ray.cluster_utils import Cluster

    share = max(1, cpus // nodes)
    local = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": share})
    try:
        for _ in range(nodes - 1):
            local.add_node(num_cpus=share)
        local.wait_for_nodes()
        yield local.address
    finally:
        local.shutdown()


def _line(label: str, figures: dict[str, Any], note: str = "") -> str:
    return (
        f"  {label:32s} {figures['items_per_s']:7.2f} items/s  "
        f"wall {figures['wall_s']:7.1f} s  {note}"
    ).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--concurrency", type=int, default=2, help="scan engine actors")
    parser.add_argument("--batch-size", type=int, default=32, help="scan items per block")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--skip-cluster", action="store_true", help="no one/two node runs")
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "bench_scan.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="memeserve-bench-scan-"))
    try:
        return _bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> int:
    """Every run of the benchmark, its files in ``work``."""
    paths = write_corpus(work / "memes", args.items, args.seed)
    scan_options = {
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
    }
    results: dict[str, Any] = {
        "items": args.items,
        "config": str(args.config),
        "cpus": os.cpu_count(),
        "clients": args.clients,
        **scan_options,
    }
    print(f"memeserve bench-scan: {args.items} memes, {args.config}, {os.cpu_count()} CPUs")
    load: dict[str, list[float]] = {"start": list(os.getloadavg())}
    results["load_average"] = load  # other work on the machine skews a one-run benchmark
    results["scan"] = run_scan(
        work / "memes",
        work / "out-scan",
        fresh_profile(args.config, work, "scan"),
        **scan_options,
    )
    load["after_scan"] = list(os.getloadavg())
    results["http"] = run_http(args.config, paths, args.clients)
    load["after_http"] = list(os.getloadavg())
    if not args.skip_cluster:
        for nodes, key in ((1, "scan_one_node"), (2, "scan_two_nodes")):
            with cluster(nodes, args.cpus) as address:
                results[key] = run_scan(
                    work / "memes",
                    work / f"out-{key}",
                    fresh_profile(args.config, work, key),
                    ray_address=address,
                    **scan_options,
                )
            load[f"after_{key}"] = list(os.getloadavg())
    scan, http = results["scan"], results["http"]
    results["scan_vs_http"] = round(scan["items_per_s"] / http["items_per_s"], 3)
    results["scan_after_start_vs_http"] = round(
        scan["items_per_s_after_start"] / http["items_per_s"], 3
    )

    print(_line("scan (embedded Ray)", scan, "whole command: Ray + engine start included"))
    print(
        f"  {'  after Ray start':32s} {scan['items_per_s_after_start']:7.2f} items/s  "
        f"(Ray start {scan['startup_s']:.1f} s; engine start still included)"
    )
    print(_line(f"HTTP, {args.clients} clients", http, f"(start to ready {http['ready_s']} s)"))
    print(
        f"  HTTP latency p50 {http['latency_ms']['p50']} ms, p95 {http['latency_ms']['p95']} ms; "
        f"statuses {http['statuses']}, {http['refused_and_resent']} refusals sent again"
    )
    print(f"  HTTP answers by degradation level {http['answers_by_level']} (the scan: all at 0)")
    print(
        f"  scan / HTTP                      {results['scan_vs_http']:.2f}x items/s "
        f"({results['scan_after_start_vs_http']:.2f}x after Ray start)"
    )
    if not args.skip_cluster:
        one, two = results["scan_one_node"], results["scan_two_nodes"]
        results["two_vs_one_node"] = round(two["items_per_s"] / one["items_per_s"], 3)
        print(_line("scan, 1 logical node", one, "(cluster up before)"))
        print(_line("scan, 2 logical nodes", two, "(same cores)"))
        print(f"  2 nodes / 1 node                 {results['two_vs_one_node']:.2f}x items/s")
    for key in ("scan", "scan_one_node", "scan_two_nodes"):
        figures = results.get(key)
        if figures and (figures["errors_total"] or figures["written"] != args.items):
            print(f"  warning: {key} wrote {figures['written']} rows, errors {figures['errors']}")
    print(f"  load average (1 min) at each step: {[v[0] for v in load.values()]}")
    print(
        "  (lite engine: OCR + lexicon on CPU; no language model, so DESIGN.md §5's "
        "per-token floor does not apply)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"  JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
