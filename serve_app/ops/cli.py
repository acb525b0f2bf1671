"""The ``memeserve`` command: run the service, check configs, analyse a meme."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from serve_app.config.check import PROXY_CALLBACK, PROXY_CALLBACK_ENV, check_file, http_address
from serve_app.ops.drain import drain

if TYPE_CHECKING:
    from serve_app.http.client import StreamEvent

DEFAULT_CONFIG = Path("autoscale_configs/dev-cpu.yaml")
_READY_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 60.0


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200, the process exits, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.get(url).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    return False


def _default_sigint() -> None:
    """In the child: Ctrl-C handling as Python's default, even if we inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Ask ``serve run`` to shut the app down (SIGINT), escalating if it hangs."""
    if process.poll() is not None:
        return process.returncode
    for sig, wait_s in ((signal.SIGINT, _STOP_TIMEOUT_S), (signal.SIGTERM, 10.0)):
        process.send_signal(sig)
        try:
            return process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    return process.wait()


def _drain_before_stop(config: Path, base: str, process: subprocess.Popen[bytes]) -> None:
    """Let the requests inside finish before the app stops; a second Ctrl-C skips it."""
    if process.poll() is not None:
        return
    print("\nmemeserve: draining (Ctrl-C again to skip) ...", flush=True)
    try:
        result = drain(config, base)
    except KeyboardInterrupt:
        print("memeserve: drain skipped", flush=True)
        return
    except Exception as exc:  # not ready yet, or the cluster is already going
        print(f"memeserve: could not drain: {exc}", flush=True)
        return
    if result.idle:
        print(f"memeserve: drained in {result.waited_s:.1f} s", flush=True)
    else:
        print(f"memeserve: {result.in_flight} requests still inside after {result.waited_s:.1f} s")


def cmd_drain(args: argparse.Namespace) -> int:
    """Set ``draining`` on a running app and wait until no request is inside."""
    result = drain(args.config, args.url, args.timeout, args.address)
    if result.idle:
        print(f"memeserve: idle after {result.waited_s:.1f} s; the app can be deleted now")
        return 0
    print(f"memeserve: {result.in_flight} requests still inside after {result.waited_s:.1f} s")
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the profile, start ``serve run`` on it, print the URL once ready."""
    config: Path = args.config
    problems = check_file(config)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    host, port = http_address(config)
    probe = _probe_host(host)
    if _port_in_use(probe, port):
        print(
            f"error: port {port} on {probe} is already in use (is memeserve already running?)",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("OTEL_SERVICE_NAME", "memeserve")  # names the traces' service
    # Serve's proxy answers timeouts and backpressure itself: this makes them our JSON.
    env.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    command = [sys.executable, "-m", "ray.serve.scripts", "run", str(config)]
    if not env.get("RAY_ADDRESS"):
        # A Ray instance of its own: `serve run` would otherwise join whichever instance
        # is already running on this machine (another service's, a test's, a benchmark's).
        command += ["--address", "local"]
    print(f"memeserve: starting {config} ...", flush=True)
    started = time.monotonic()
    # Own process group: Ctrl-C reaches us once and we forward exactly one SIGINT,
    # so `serve run` is not interrupted again while it is shutting the app down.
    process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_default_sigint)

    def forward(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicitly, not inherited: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        base = f"http://{probe}:{port}"
        if not wait_until_ready(f"{base}/readyz", process, args.ready_timeout):
            print("error: the service did not become ready; see the log above", file=sys.stderr)
            _stop(process)
            return 1
        elapsed = time.monotonic() - started
        print(
            f"memeserve: ready in {elapsed:.1f} s at {base}  "
            f"(try: curl -F image=@meme.jpg {base}/v1/memes/analyze; Ctrl-C stops)",
            flush=True,
        )
        return process.wait()
    except KeyboardInterrupt:
        _drain_before_stop(config, base, process)
        print("memeserve: stopping ...", flush=True)
        code = _stop(process)
        print("memeserve: stopped", flush=True)
        return 0 if code in (0, -signal.SIGINT, 130) else code


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate each file; non-zero exit if any has a problem."""
    failed = 0
    for path in args.files:
        problems = check_file(path)
        if problems:
            failed += 1
            for problem in problems:
                print(f"error: {problem}")
        else:
            print(f"ok: {path}")
    return 1 if failed else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse one image with a running service (through the Python client); print JSON."""
    from serve_app.http.client import ApiError, MemeServeClient, RetryPolicy

    image: Path = args.image
    try:
        data = image.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    client = MemeServeClient(
        args.url, timeout_s=args.timeout, retry=RetryPolicy(retries=args.retries)
    )
    try:
        with client:
            if args.stream:
                return _print_stream(client.stream(data, args.text))
            analysis = client.analyze(data, args.text)
    except ApiError as exc:
        if exc.code == "timeout" and exc.status == 0:
            message = f"no answer from {args.url} within --timeout {args.timeout:g} s"
        elif exc.code == "unreachable" and exc.status == 0:
            message = f"cannot reach {args.url}: {exc.message}"
        else:
            message = str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(json.dumps(analysis.model_dump(mode="json"), ensure_ascii=False, indent=2))
    return 0


def _print_stream(events: Iterator[StreamEvent]) -> int:
    """Explanation deltas to stderr as they arrive, the final result (or error) as JSON."""
    for event in events:
        if event.event == "delta":
            print(event.data["text"], end="", file=sys.stderr, flush=True)
        elif event.event in ("result", "error"):
            print(file=sys.stderr)
            print(json.dumps(event.data, ensure_ascii=False, indent=2))
            return 0 if event.event == "result" else 1
    print("error: the stream ended without a result", file=sys.stderr)
    return 1


def cmd_tiny_glm4v(args: argparse.Namespace) -> int:
    """Write the tiny random GLM-4.xV checkpoint (offline) for tests and the CPU profile."""
    from serve_app.ops.tiny_glm4v import build_tiny_glm4v, parameter_count

    out = build_tiny_glm4v(args.out_dir, seed=args.seed)
    print(f"tiny Glm4vForConditionalGeneration: {parameter_count(out):,} parameters in {out}")
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    """``library import | stats | export`` on the backend the config file names."""
    from serve_app.library.backends import LibraryUnavailable
    from serve_app.library.store import library_from
    from serve_app.ops.library_tool import (
        export_records,
        import_directory,
        library_stats,
        load_profile,
    )

    try:
        profile = load_profile(args.config)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    library = library_from(profile.args.cache)
    try:
        if args.action == "stats":
            print(json.dumps(library_stats(library.backend), ensure_ascii=False, indent=2))
            return 0
        if args.action == "export":
            if args.out is None:
                count = export_records(library.backend, sys.stdout)
            else:
                with args.out.open("w", encoding="utf-8") as out:
                    count = export_records(library.backend, out)
            print(f"exported {count} entries", file=sys.stderr)
            return 0
        if not args.directory.is_dir():
            print(f"error: {args.directory} is not a directory", file=sys.stderr)
            return 2
        library.sync()  # what is stored already decides what an import may replace
        report = import_directory(args.directory, profile, library, context=args.text)
    except LibraryUnavailable as exc:
        print(f"error: library backend unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        library.backend.close()
    for name, reason in report.failed.items():
        print(f"error: {name}: {reason}", file=sys.stderr)
    print(
        f"imported {len(report.stored)} ({len(report.analysed)} analysed by the "
        f"{profile.args.engine.kind} engine), kept {len(report.kept)} better stored "
        f"analyses, failed {len(report.failed)}"
    )
    return 1 if report.failed else 0


def cmd_lists(args: argparse.Namespace) -> int:
    """``lists import | export | stats | remove`` through a running service's admin API."""
    from serve_app.ops.scenes_tool import run_lists

    return run_lists(args)


def cmd_reviews(args: argparse.Namespace) -> int:
    """``reviews export``: the reviewed set (or ``--audit``) of a running service as JSON lines."""
    from serve_app.ops.scenes_tool import run_reviews

    return run_reviews(args)


def cmd_scan(args: argparse.Namespace) -> int:
    """``scan INPUT --out OUT``: offline bulk analysis on Ray Data (resumable)."""
    from serve_app.ops.scan import ScanOptions, main_scan

    try:
        options = ScanOptions(
            source=args.input,
            out=args.out,
            config=args.config,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            num_cpus=args.num_cpus,
            engine_cpus=args.engine_cpus,
            engine_gpus=args.engine_gpus,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return main_scan(options)


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--api-key``, ``--timeout``, ``--retries`` of the commands over HTTP."""
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument(
        "--api-key",
        default=None,
        help="an API key with the admin scope (default: $MEMESERVE_API_KEY)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)"
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries on 429/503 (honouring Retry-After)"
    )


def _add_scenes_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lists = sub.add_parser(
        "lists", help="term and image lists of a running service: import, export, stats, remove"
    )
    lists_sub = lists.add_subparsers(dest="lists_command", required=True)
    import_ = lists_sub.add_parser(
        "import",
        help="add the terms of FILE (.txt, .csv term[,action], .jsonl) or the images of a "
        "directory to list NAME",
    )
    import_.add_argument(
        "name", metavar="NAME", help="the list (lower-case letters, digits, _ . -)"
    )
    import_.add_argument(
        "file", metavar="FILE", type=Path, help=".txt, .csv or .jsonl terms, or a directory"
    )
    import_.add_argument(
        "--action",
        required=True,
        choices=("block", "review", "pass"),
        help="the action of the terms (a .csv/.jsonl row's own action wins) or images",
    )
    import_.add_argument("--label", default=None, help="images' label (default: each file's name)")
    export = lists_sub.add_parser("export", help="one list or every list as JSON lines")
    export.add_argument(
        "name", metavar="NAME", nargs="?", default=None, help="the list (default: every list)"
    )
    export.add_argument("--out", type=Path, default=None, help="file (default stdout)")
    lists_sub.add_parser("stats", help="every list's terms and images, counted by action")
    remove = lists_sub.add_parser("remove", help="take terms (or images) off list NAME")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("terms", nargs="*", metavar="TERM")
    remove.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="ENTRY_ID",
        help="an image entry to remove (repeatable; ids as `lists export` shows them)",
    )
    for command in lists_sub.choices.values():
        _add_service_options(command)
        command.set_defaults(func=cmd_lists)

    reviews = sub.add_parser(
        "reviews", help="the reviewed set (or the review audit) of a running service"
    )
    reviews_sub = reviews.add_subparsers(dest="reviews_command", required=True)
    reviews_export = reviews_sub.add_parser(
        "export",
        help="every reviewed image's latest review as JSON lines, oldest first (the "
        "reviewer's labels, the model's labels before, a thumbnail): the next model's "
        "training or evaluation file; with --audit, every review event, newest first",
    )
    reviews_export.add_argument("--out", type=Path, required=True, help="the JSON lines file")
    reviews_export.add_argument(
        "--audit",
        action="store_true",
        help="write the whole review audit (labels before and after, note, key) instead, "
        "newest first",
    )
    _add_service_options(reviews_export)
    reviews_export.set_defaults(func=cmd_reviews)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memeserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the service on a config profile")
    run.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"Serve config file (default {DEFAULT_CONFIG})",
    )
    run.add_argument(
        "--ready-timeout", type=float, default=_READY_TIMEOUT_S, help="seconds to wait for /readyz"
    )
    run.set_defaults(func=cmd_run)

    drain_parser = sub.add_parser(
        "drain",
        help="stop new analyses (503 + Retry-After) and wait until none is inside, "
        "before the app is deleted",
    )
    drain_parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    drain_parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    drain_parser.add_argument(
        "--address", default=None, help="Ray dashboard address for serve deploy (default: local)"
    )
    drain_parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait (default: deadline + 5)"
    )
    drain_parser.set_defaults(func=cmd_drain)

    check = sub.add_parser("check-config", help="validate Serve config files")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(func=cmd_check_config)

    analyze = sub.add_parser("analyze", help="analyse one image with a running service")
    analyze.add_argument("image", type=Path)
    analyze.add_argument("--text", default=None, help="context: caption, comment, danmaku")
    analyze.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    analyze.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the answer (default 120)"
    )
    analyze.add_argument(
        "--retries", type=int, default=3, help="retries on 429/503 (honouring Retry-After)"
    )
    analyze.add_argument(
        "--stream", action="store_true", help="stream the explanation as it is generated"
    )
    analyze.set_defaults(func=cmd_analyze)

    library = sub.add_parser(
        "library", help="the known-meme library: import images, show stats, export"
    )
    library_sub = library.add_subparsers(dest="action", required=True)
    for action, text in (
        ("import", "fingerprint and store every image of DIR (NAME.json sidecar: its analysis)"),
        ("stats", "entries by model, level and source"),
        ("export", "every entry as JSON lines"),
    ):
        command = library_sub.add_parser(action, help=text)
        command.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"Serve config whose args.cache names the backend (default {DEFAULT_CONFIG})",
        )
        if action == "import":
            command.add_argument("directory", type=Path)
            command.add_argument(
                "--text", default=None, help="the context the imported analyses are keyed under"
            )
        if action == "export":
            command.add_argument("--out", type=Path, default=None, help="file (default stdout)")
        command.set_defaults(func=cmd_library)

    tiny = sub.add_parser(
        "tiny-glm4v",
        help="write a tiny randomly initialised GLM-4.xV checkpoint (offline, for tests)",
    )
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_glm4v)

    scan = sub.add_parser(
        "scan",
        help="analyse every image of a directory or a JSONL/Parquet manifest offline on Ray "
        "Data; JSONL and Parquet parts in OUT; a rerun skips what is done",
    )
    scan.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="a directory of images, or a .jsonl/.parquet manifest of {id, path, text}",
    )
    scan.add_argument("--out", type=Path, required=True, help="the output folder")
    scan.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"Serve profile: engine, limits, library, Structurer (default {DEFAULT_CONFIG})",
    )
    scan.add_argument(
        "--concurrency", type=int, default=2, help="engine actors, one engine each (default 2)"
    )
    scan.add_argument(
        "--batch-size", type=int, default=32, help="items per block and per part (default 32)"
    )
    scan.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the embedded local Ray (default: all); ignored with RAY_ADDRESS",
    )
    scan.add_argument(
        "--engine-cpus", type=float, default=0.5, help="CPUs reserved per engine actor (0.5)"
    )
    scan.add_argument(
        "--engine-gpus", type=float, default=0.0, help="GPUs reserved per engine actor (0)"
    )
    scan.set_defaults(func=cmd_scan)

    _add_scenes_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
