"""The one /proc walker: process trees, liveness, zombies and Ray's processes.

A process is named by its pid *and* its start time (clock ticks since boot, field 22 of
``/proc/<pid>/stat``), so that a pid reused by an unrelated process is never taken for
one of ours. Everything here reads /proc only; where /proc is absent it finds nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROC = Path("/proc")
# Command-line fragments of Ray's processes: raylet, GCS, workers, dashboard, Serve.
RAY_MARKERS = ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard", "ray.serve")

Processes = dict[int, int]
"""pid -> start time: a set of processes, each identified against pid reuse."""


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the harness uses."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int

    @property
    def zombie(self) -> bool:
        """Exited but not reaped by its parent (or being torn down)."""
        return self.state in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """The stat fields of ``pid``; None when it is gone (or /proc cannot be read)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields 3.. follow its
    # last ')': state, ppid, pgrp, session, ..., starttime (field 22).
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def all_pids() -> list[int]:
    """Every pid in /proc right now (empty where /proc is unavailable)."""
    try:
        return [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []


def snapshot() -> dict[int, ProcStat]:
    """pid -> stat of every process that could be read."""
    found: dict[int, ProcStat] = {}
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None:
            found[pid] = stat
    return found


def descendants(root: int, *, include_root: bool = True) -> Processes:
    """pid -> start time of every process below ``root`` (and ``root`` itself by default).

    Zombies are included (they are still processes); :func:`alive` leaves them out.
    Empty when ``root`` is gone.
    """
    table = snapshot()
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: Processes = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid].start_ticks
            todo.extend(children.get(pid, []))
    if not include_root:
        found.pop(root, None)
    return found


def session_members(session: int) -> Processes:
    """pid -> start time of every process in session ``session``.

    A process started with ``start_new_session=True`` leads a session whose id is its
    pid; what it starts stays in that session even once reparented to init.
    """
    return {pid: stat.start_ticks for pid, stat in snapshot().items() if stat.session == session}


def is_zombie(pid: int) -> bool:
    """True when ``pid`` has exited but is not reaped yet (False when it is gone)."""
    stat = proc_stat(pid)
    return stat is not None and stat.zombie


def is_running(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    stat = proc_stat(pid)
    return stat is not None and not stat.zombie


def alive(processes: Mapping[int, int]) -> list[int]:
    """The pids of ``processes`` still running as the same process (same start, no zombie)."""
    live = []
    for pid, start in processes.items():
        stat = proc_stat(pid)
        if stat is not None and stat.start_ticks == start and not stat.zombie:
            live.append(pid)
    return sorted(live)


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" when unreadable)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def ray_processes(markers: Iterable[str] = RAY_MARKERS) -> list[int]:
    """Pids of live processes that look like Ray's (raylet, GCS, workers, dashboard, Serve).

    This process is never among them.
    """
    markers = tuple(markers)
    own = os.getpid()
    found = []
    for pid in all_pids():
        if pid == own or not is_running(pid):
            continue
        line = cmdline(pid)
        if any(marker in line for marker in markers):
            found.append(pid)
    return sorted(found)


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``; those already gone (or not ours) are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(processes: Mapping[int, int], timeout_s: float, poll_s: float = 0.2) -> list[int]:
    """Wait up to ``timeout_s`` until none of ``processes`` is alive; those still alive."""
    deadline = time.monotonic() + timeout_s
    while (live := alive(processes)) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return live
