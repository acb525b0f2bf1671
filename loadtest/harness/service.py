"""The service under test: ``memeserve run`` on a profile, on a free port, until stopped.

:func:`start_service` writes a copy of a profile (loopback host, a free port, a fresh
library file unless told otherwise) to a temporary file, starts
``python -m serve_app.ops.cli run --config FILE`` in its own session with its output in
a log file next to it, and polls ``/readyz`` until it answers 200 — failing early when
the process exits or its log says the application will not deploy.

:func:`stop_service` is the one way to stop it: SIGINT to its process group (``memeserve
run`` shuts Serve and Ray down), SIGTERM and SIGKILL to the group if that does not end
it, then SIGTERM and SIGKILL to any of its processes (its tree and its session, Ray's
included) still alive, and ``ray stop --force`` only where asked and nothing else
worked. Its :class:`StopReport` says what it took and what, if anything, is left.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.harness.http import READYZ
from loadtest.harness.ports import free_port
from loadtest.harness.processes import (
    Processes,
    descendants,
    session_members,
    signal_all,
    wait_gone,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600.0
READY_POLL_S = 0.25
STOP_TIMEOUT_S = 120.0
ESCALATE_TIMEOUT_S = 15.0
STRAY_GRACE_S = 15.0
STRAY_SIGNAL_WAIT_S = 5.0
LOG_TAIL_CHARS = 3000
# Lines of `serve run`'s log that mean the application will never become ready.
DEPLOY_FAILURE = re.compile(r"Exception importing application|Deploying app '[^']*' failed")
# Serve's proxy could not listen on the HTTP port: something took it after it was chosen.
PORT_TAKEN = re.compile(r"Failed to bind to address '[^']*'")
PORT_TRIES = 3


class ServiceStartError(RuntimeError):
    """The service did not become ready; the message carries the tail of its log."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken
        """Serve's proxy could not bind the HTTP port (its log says so)."""


@dataclass
class Service:
    """A ``memeserve run`` process in its own session, and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    ready_s: float
    log_path: Path
    config_path: Path

    @property
    def pid(self) -> int:
        """The pid of ``memeserve run`` (also its process group and session id)."""
        return self.process.pid


@dataclass
class StopReport:
    """What stopping a service took, and what was left."""

    exit_code: int | None = None
    killed_group: bool = False
    """SIGINT did not end it in time: its process group got SIGTERM, then SIGKILL."""
    strays_killed: list[int] = field(default_factory=list)
    """Its processes still alive after it exited, then sent SIGTERM and SIGKILL."""
    ray_stop_force: bool = False
    """``ray stop --force`` was run as the last resort."""
    left: list[int] = field(default_factory=list)
    """Its processes alive after all of it (empty: nothing is left)."""

    def to_json(self) -> dict[str, Any]:
        """The report as the benchmarks write it into their JSON."""
        return {
            "killed_group": self.killed_group,
            "strays_killed": list(self.strays_killed),
            "ray_stop_force": self.ray_stop_force,
        }


def load_profile(config: Path) -> dict[str, Any]:
    """The YAML document of a profile; a relative path not found here is taken from the root."""
    path = config if config.is_absolute() or config.exists() else ROOT / config
    document = yaml.safe_load(path.read_text("utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{config} is not a Serve config document")
    return document


def service_document(
    config: Path | Mapping[str, Any], *, port: int | None = None, fresh_library: bool = True
) -> dict[str, Any]:
    """A copy of a profile for one run: loopback host, ``port`` (else a free one).

    With ``fresh_library`` every application gets its own new SQLite library file, so
    that a file left by an earlier run cannot turn misses into hits.
    """
    document = load_profile(config) if isinstance(config, Path) else copy.deepcopy(dict(config))
    http_options = document.setdefault("http_options", {})
    http_options["host"] = "127.0.0.1"
    http_options["port"] = free_port() if port is None else port
    if fresh_library:
        folder = Path(tempfile.mkdtemp(prefix="memeserve-bench-"))
        for index, app in enumerate(document.get("applications") or []):
            cache = app.setdefault("args", {}).setdefault("cache", {})
            cache["sqlite_path"] = str(folder / f"lib{index or ''}.sqlite3")
    return document


def start_service(
    config: Path | Mapping[str, Any],
    *,
    name: str = "memeserve",
    port: int | None = None,
    fresh_library: bool = True,
    nice: int = 0,
    timeout_s: float = START_TIMEOUT_S,
) -> Service:
    """Start ``memeserve run`` on a copy of ``config`` (see :func:`service_document`).

    Returns once ``/readyz`` answers 200. ``nice`` lowers the priority of the whole
    service (Ray inherits it), so that on a small machine the load generator still sends
    on time. Raises :class:`ServiceStartError` (after stopping what it started) when the
    service exits, fails to deploy or is not ready within ``timeout_s``. A port this
    function chose itself and that something else took before Serve's proxy bound it is
    replaced by another one, up to :data:`PORT_TRIES` times; a port the caller named is not.
    """
    document = service_document(config, port=port, fresh_library=fresh_library)
    for attempt in range(1, PORT_TRIES + 1):
        try:
            return _start_once(document, name=name, nice=nice, timeout_s=timeout_s)
        except ServiceStartError as exc:
            if port is not None or attempt == PORT_TRIES or not exc.port_taken:
                raise
            taken = document["http_options"]["port"]
            document["http_options"]["port"] = free_port()
            logger.warning(
                "port %d was taken before the proxy bound it; starting again on %d",
                taken,
                document["http_options"]["port"],
            )
    raise AssertionError("unreachable: the last attempt returns or raises")


def _start_once(document: Mapping[str, Any], *, name: str, nice: int, timeout_s: float) -> Service:
    with tempfile.NamedTemporaryFile(
        "w", prefix=f"{name}_", suffix=".yaml", delete=False
    ) as handle:
        yaml.safe_dump(dict(document), handle, allow_unicode=True, sort_keys=False)
    config_path = Path(handle.name)
    log_path = config_path.with_suffix(".log")
    url = f"http://127.0.0.1:{document['http_options']['port']}"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve_app.ops.cli", "run", "--config", str(config_path)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
    service = Service(process, url, 0.0, log_path, config_path)
    logger.info("started %s (pid %d, log %s)", url, process.pid, log_path)
    try:
        problem = wait_ready(service, timeout_s)
    except BaseException:
        stop_service(service)
        raise
    if problem is None:
        service.ready_s = time.monotonic() - started
        logger.info("%s ready in %.1f s", url, service.ready_s)
        return service
    stop_service(service)
    text = log_path.read_text("utf-8", "replace")
    raise ServiceStartError(
        f"{problem} (log {log_path}); log tail:\n{text[-LOG_TAIL_CHARS:]}",
        port_taken=PORT_TAKEN.search(text) is not None,
    )


def wait_ready(service: Service, timeout_s: float = START_TIMEOUT_S) -> str | None:
    """Poll ``/readyz``; None once it answers 200, else why the service will not be ready."""
    started = time.monotonic()
    offset = 0
    pending = ""
    with httpx.Client(timeout=2) as client:
        while time.monotonic() - started < timeout_s:
            if service.process.poll() is not None:
                return (
                    f"the service exited (status {service.process.returncode}) before it was ready"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{service.url}{READYZ}").status_code == 200:
                    return None
            # Read only what the log gained, keeping the last partial line.
            with contextlib.suppress(OSError), service.log_path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
                offset += len(chunk)
                pending += chunk.decode("utf-8", "replace")
            failed = DEPLOY_FAILURE.search(pending)
            if failed is not None:
                return f"the application failed to deploy ({failed.group(0)!r} in its log)"
            pending = pending[pending.rfind("\n") + 1 :]
            time.sleep(READY_POLL_S)
    return f"the service did not become ready in {timeout_s:.0f} s"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_service(
    service: Service, *, timeout_s: float = STOP_TIMEOUT_S, force_ray_stop: bool = False
) -> StopReport:
    """Stop ``service`` and every process it started; see the module docstring.

    Safe to call twice (the second call finds nothing to do). ``force_ray_stop`` allows
    ``ray stop --force`` when even SIGKILL left processes: that stops every Ray instance
    of this user on the machine, so only benchmarks that own the machine ask for it.
    """
    process = service.process
    report = StopReport()
    # Read before the stop. Ray's processes start sessions of their own but are in its
    # tree; its session also holds what was reparented away from the tree.
    tree: Processes = {}
    if process.poll() is None:
        tree.update(descendants(process.pid))
    tree.update(session_members(process.pid))
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGINT)
        if not _wait(process, timeout_s):
            report.killed_group = True
            logger.warning("pid %d ignored SIGINT for %.0f s: SIGTERM", process.pid, timeout_s)
            _signal_group(process.pid, signal.SIGTERM)
            if not _wait(process, ESCALATE_TIMEOUT_S):
                _signal_group(process.pid, signal.SIGKILL)
                _wait(process, ESCALATE_TIMEOUT_S)
    report.exit_code = process.returncode
    # What it started while shutting down is still in its session.
    tree.update(session_members(process.pid))
    strays = wait_gone(tree, STRAY_GRACE_S)
    if strays:
        logger.warning("processes of pid %d alive after its exit: %s", process.pid, strays)
        report.strays_killed = strays
        signal_all(strays, signal.SIGTERM)
        strays = wait_gone(tree, STRAY_SIGNAL_WAIT_S)
        signal_all(strays, signal.SIGKILL)
        strays = wait_gone(tree, STRAY_SIGNAL_WAIT_S)
    if strays and force_ray_stop:
        report.ray_stop_force = True
        logger.warning("processes %s survived SIGKILL: ray stop --force", strays)
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "stop", "--force"],
            check=False,
            capture_output=True,
        )
        strays = wait_gone(tree, STRAY_SIGNAL_WAIT_S)
    report.left = strays
    if strays:
        logger.error("processes of pid %d left after the stop: %s", process.pid, strays)
    return report
