"""The pure parts of ``loadtest.harness``: statistics, the /proc walker, stopping a tree.

The process tests spawn real, short-lived process trees (``sh`` and ``sleep``) in their
own sessions, as ``memeserve run`` is started, and check that the walker sees them and
that :func:`stop_service` leaves none of them alive.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.harness import processes, service
from loadtest.harness.ports import free_port
from loadtest.harness.processes import (
    alive,
    cmdline,
    descendants,
    is_running,
    is_zombie,
    proc_stat,
    ray_processes,
    session_members,
    wait_gone,
)
from loadtest.harness.service import (
    Service,
    StopReport,
    service_document,
    stop_service,
    wait_ready,
)
from loadtest.harness.stats import latency_summary, percentile, summarise

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


# ----------------------------------------------------------------------------- stats


def test_percentile_is_nearest_rank() -> None:
    """The value at rank ceil(q/100 * n) of the sorted values, whatever their order."""
    values = [float(v) for v in range(7, 0, -1)]
    assert percentile(values, 50) == 4.0
    assert percentile(values, 95) == 7.0
    assert percentile(values, 10) == 1.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 7.0
    assert percentile([7.0], 95) == 7.0
    # q·n/100 whole: half-to-even rounding of k + 0.5 (the figures benchmarks always gave).
    hundred = [float(v) for v in range(1, 101)]
    assert (percentile(hundred, 95), percentile(hundred, 99)) == (96.0, 100.0)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summaries() -> None:
    """n, median, p95(, p99) and max to one decimal; the latency summary copes with nothing."""
    values = [10.04, 20.0, 30.0, 40.0, 1000.0]
    assert summarise(values) == {"n": 5, "p50": 30.0, "p95": 1000.0, "max": 1000.0}
    assert latency_summary(values) == {
        "n": 5,
        "p50": 30.0,
        "p95": 1000.0,
        "p99": 1000.0,
        "max": 1000.0,
    }
    assert latency_summary([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    assert summarise([1.26, 1.26])["p50"] == 1.3


# ----------------------------------------------------------------------------- processes


def _spawn(script: str) -> subprocess.Popen[bytes]:
    """``sh -c script`` in its own session, as the harness starts the service."""
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _session_commands(process: subprocess.Popen[bytes]) -> list[str]:
    """The command lines of the live processes of ``process``'s session, but its own."""
    members = session_members(process.pid)
    return sorted(cmdline(pid) for pid in alive(members) if pid != process.pid)


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """``sh`` with two ``sleep`` children, killed (group and all) after the test."""
    process = _spawn("sleep 60 & sleep 61 & wait")
    _wait_for(lambda: _session_commands(process) == ["sleep 60", "sleep 61"])
    members = session_members(process.pid)
    try:
        yield process
    finally:
        processes.signal_all(alive(members), signal.SIGKILL)
        process.wait(timeout=10)


def test_descendants_alive_and_session(tree: subprocess.Popen[bytes]) -> None:
    """The walker finds the root and its children, with start times, and their session."""
    found = descendants(tree.pid)
    children = descendants(tree.pid, include_root=False)
    assert tree.pid in found and tree.pid not in children
    assert set(children) == set(found) - {tree.pid} and len(children) == 2
    assert sorted(cmdline(pid) for pid in children) == ["sleep 60", "sleep 61"]
    assert alive(found) == sorted(found)
    assert all(is_running(pid) and not is_zombie(pid) for pid in found)
    assert set(session_members(tree.pid)) == set(found)
    stat = proc_stat(tree.pid)
    assert stat is not None and stat.session == stat.pgrp == tree.pid
    # A pid whose start time differs is another process: not one of ours.
    assert alive({pid: start + 1 for pid, start in found.items()}) == []


def test_gone_and_zombie_processes() -> None:
    """An exited, unreaped child is a zombie and not alive; once reaped it is gone."""
    child = subprocess.Popen(["true"])
    start = proc_stat(child.pid)
    assert start is not None
    _wait_for(lambda: is_zombie(child.pid))
    assert not is_running(child.pid)
    assert alive({child.pid: start.start_ticks}) == []
    child.wait()
    assert proc_stat(child.pid) is None and not is_zombie(child.pid)
    assert descendants(child.pid) == {}
    assert cmdline(child.pid) == ""
    assert wait_gone({child.pid: start.start_ticks}, timeout_s=0.1) == []


def test_ray_processes_by_command_line() -> None:
    """A process whose command line carries a Ray marker is found; this process never."""
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "ray::ServeReplica:fake"]
    )
    try:
        _wait_for(lambda: "ray::ServeReplica:fake" in cmdline(fake.pid))
        found = ray_processes()
        assert fake.pid in found
        assert ray_processes(markers=("no-such-marker-anywhere",)) == []
    finally:
        fake.kill()
        fake.wait()
    assert fake.pid not in ray_processes()


# ----------------------------------------------------------------------------- stop


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short grace periods, so that escalation is tested in seconds."""
    monkeypatch.setattr(service, "ESCALATE_TIMEOUT_S", 2.0)
    monkeypatch.setattr(service, "STRAY_GRACE_S", 1.0)
    monkeypatch.setattr(service, "STRAY_SIGNAL_WAIT_S", 2.0)


def _service(process: subprocess.Popen[bytes], tmp_path: Path) -> Service:
    return Service(process, "http://127.0.0.1:9", 0.0, tmp_path / "x.log", tmp_path / "x.yaml")


def _all_of(process: subprocess.Popen[bytes]) -> dict[int, int]:
    return descendants(process.pid) | session_members(process.pid)


@pytest.mark.usefixtures("quick")
def test_stop_kills_children_left_behind(tmp_path: Path) -> None:
    """SIGINT ends ``sh`` but not its background children (sh ignores SIGINT for them).

    One child was reparented away before the stop (a double fork): only the session
    finds it. Both are strays; none survives the stop.
    """
    process = _spawn("(sleep 62 &); sleep 63 & wait")
    _wait_for(lambda: _session_commands(process) == ["sleep 62", "sleep 63"])
    _wait_for(lambda: len(session_members(process.pid)) == 3)  # the subshell is reaped
    everything = _all_of(process)
    assert len(descendants(process.pid)) == 2  # the double-forked sleep is not below it
    report = stop_service(_service(process, tmp_path))
    assert process.returncode is not None
    assert not report.killed_group
    assert sorted(report.strays_killed) == sorted(set(everything) - {process.pid})
    assert report.left == []
    assert alive(everything) == []
    # Stopping again finds nothing to do.
    assert stop_service(_service(process, tmp_path)) == StopReport(exit_code=process.returncode)


@pytest.mark.usefixtures("quick")
def test_stop_escalates_when_sigint_is_ignored(tmp_path: Path) -> None:
    """A tree deaf to SIGINT and SIGTERM is SIGKILLed as a group; nothing is left."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, subprocess, time\n"
            "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n"
            "subprocess.Popen(['sleep', '64'])\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    _wait_for(lambda: len(descendants(process.pid)) == 2)
    everything = _all_of(process)
    started = time.monotonic()
    report = stop_service(_service(process, tmp_path), timeout_s=1.0)
    assert time.monotonic() - started < 30
    assert report.killed_group
    assert report.exit_code == -signal.SIGKILL
    assert report.left == [] and not report.ray_stop_force
    assert alive(everything) == []
    assert report.to_json() == {
        "killed_group": True,
        "strays_killed": report.strays_killed,
        "ray_stop_force": False,
    }
    process.stdout.close()


# ----------------------------------------------------------------------------- start


def test_service_document_is_a_copy_on_loopback_with_a_fresh_library() -> None:
    """Host and port are set, each application gets a new library file, the input is kept."""
    profile = {
        "http_options": {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 120},
        "applications": [{"args": {"cache": {"backend": "sqlite"}}}, {"name": "other"}],
    }
    document = service_document(profile, port=4321)
    assert document["http_options"] == {"host": "127.0.0.1", "port": 4321, "request_timeout_s": 120}
    paths = [app["args"]["cache"]["sqlite_path"] for app in document["applications"]]
    assert len(set(paths)) == 2 and all(Path(p).parent.is_dir() for p in paths)
    assert profile["http_options"]["port"] == 8000
    assert "sqlite_path" not in profile["applications"][0]["args"]["cache"]
    kept = service_document(profile, fresh_library=False)
    assert "args" not in kept["applications"][1]
    assert 0 < kept["http_options"]["port"] < 65536


def test_service_document_from_a_profile_file() -> None:
    """A path relative to the repository root reads the profile there."""
    document = service_document(Path("autoscale_configs/dev-cpu.yaml"), port=free_port())
    assert document["http_options"]["host"] == "127.0.0.1"
    assert document["applications"][0]["import_path"] == "deployments.app:build_app"


def test_wait_ready_gives_up_early_with_the_reason(tmp_path: Path) -> None:
    """An exited process, a failed deployment in the log, or the time limit: never a hang."""
    url = f"http://127.0.0.1:{free_port()}"
    exited = subprocess.Popen(["sh", "-c", "exit 3"])
    exited.wait()
    log = tmp_path / "service.log"
    log.write_text("starting\n", "utf-8")
    problem = wait_ready(Service(exited, url, 0.0, log, tmp_path / "c.yaml"), timeout_s=10)
    assert problem is not None and "exited (status 3)" in problem

    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        running = Service(sleeper, url, 0.0, log, tmp_path / "c.yaml")
        started = time.monotonic()
        assert wait_ready(running, timeout_s=0.6) == "the service did not become ready in 1 s"
        with log.open("a", encoding="utf-8") as handle:
            handle.write("ERROR Deploying app 'memeserve' failed with exception:\n")
        problem = wait_ready(running, timeout_s=10)
        assert problem is not None and "failed to deploy" in problem
        assert time.monotonic() - started < 8
    finally:
        sleeper.kill()
        sleeper.wait()
