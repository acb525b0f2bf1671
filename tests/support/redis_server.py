"""Start a real, throw-away ``redis-server`` for tests (Debian's /usr/bin/redis-server).

Without the binary the tests that need it skip, saying why; with
``MEMESERVE_REQUIRE_REDIS=1`` (as ``make test`` sets) they fail instead, so a missing
system package is never mistaken for a pass.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest.harness.ports import free_port

REDIS_SERVER = Path("/usr/bin/redis-server")
START_TIMEOUT_S = 15.0
_MISSING = f"{REDIS_SERVER} is not installed (run `make system-deps` to install redis-server)"


def require_redis_server() -> Path:
    """The redis-server binary; skip (or fail under MEMESERVE_REQUIRE_REDIS=1) without it."""
    if REDIS_SERVER.is_file() and os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    if os.environ.get("MEMESERVE_REQUIRE_REDIS") == "1":
        pytest.fail(f"MEMESERVE_REQUIRE_REDIS=1 but {_MISSING}", pytrace=False)
    pytest.skip(_MISSING)


def _answering_pid(port: int) -> int | None:
    """The process id of the redis-server answering on ``port``, or None if none answers.

    Checked so that a server some other test started on a recycled port is never mistaken
    for ours.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"+PONG"):
        return None
    line = reply.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0]
    return int(line)


def _log_tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


def _server_options(port: int, tmp_dir: Path) -> list[str]:
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "no",
        "dir": str(tmp_dir),
        "daemonize": "no",
    }
    return [part for name, value in options.items() for part in (f"--{name}", value)]


@contextmanager
def running_redis(tmp_dir: Path) -> Iterator[str]:
    """Run ``redis-server`` on a free localhost port; yield ``redis://127.0.0.1:N/0``.

    No persistence (``--save "" --appendonly no``), working directory ``tmp_dir``. Waits
    until the server answers PING (raising ``TimeoutError`` with its log otherwise) and
    terminates it on exit.
    """
    binary = require_redis_server()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # another process may grab the free port before redis does
        port = free_port()
        log = tmp_dir / f"redis-{port}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [str(binary), *_server_options(port, tmp_dir)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_dir,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and _answering_pid(port) != process.pid:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(
                    f"redis-server on port {port} did not answer PING within "
                    f"{START_TIMEOUT_S}s; log:\n{_log_tail(log)}"
                )
            time.sleep(0.02)  # poll interval, not a wait for readiness
        if process.poll() is None:
            break
        failure = _log_tail(log)  # exited early: most likely the port was taken
    else:
        raise RuntimeError(f"redis-server would not start; last log:\n{failure}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
