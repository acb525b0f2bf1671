"""`make run` as a user runs it, for tests: a subprocess in its own process group,
its output collected line by line, a free port, and a clean Ctrl-C stop."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.harness.ports import free_port
from tests.support.paths import ROOT


class Service:
    """`make run CONFIG=...` in its own process group, output collected line by line."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"CONFIG={config}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"no line matching {pattern!r}; output:\n{''.join(self.lines)[-4000:]}"
        )

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to the whole foreground group."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=120)

    def ensure_stopped(self) -> None:
        """After a failure: Ctrl-C first, so `memeserve run` stops the Ray cluster it
        started (`serve run` is in its own session: killing this group would orphan it),
        then SIGKILL if it did not stop in time."""
        if self.process.poll() is not None:
            return
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(profile: Path) -> Iterator[Service]:
    """`make run CONFIG=profile`, stopped (and its process group killed) on the way out."""
    service = Service(profile)
    try:
        yield service
    finally:
        service.ensure_stopped()


def shipped_profile_on_free_port(name: str, directory: Path) -> Path:
    """A copy of a shipped profile on a free port (so a running `make run` is not disturbed)."""
    document = yaml.safe_load((ROOT / "autoscale_configs" / name).read_text("utf-8"))
    document["http_options"]["port"] = free_port()
    # Its own library file: one left by an earlier run would answer from the cache.
    document["applications"][0]["args"]["cache"]["sqlite_path"] = str(directory / "library.db")
    path = directory / name
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return path


def stop_and_check(service: Service, url: str) -> None:
    code = service.interrupt()
    output = "".join(service.lines)
    # make itself dies of the SIGINT it was sent once its recipe has finished.
    assert code in (0, -signal.SIGINT, 130), output[-4000:]
    assert "memeserve: stopped" in output
    assert "Traceback" not in output.split("memeserve: stopping")[-1]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)
