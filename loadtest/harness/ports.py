"""Free TCP ports for services started by tests and benchmarks, away from the ports Ray takes.

Asking the kernel for port 0 hands out a port from its ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768–60999 on Linux). That range is
where every outgoing connection and every "bind to any free port" of a running Ray
cluster (its GCS, raylets, workers' gRPC servers, metrics agents) also draws from, so a
port that was free when we asked can be taken before Serve's proxy binds it — a CI run
lost a whole test module to ``Failed to bind to address '127.0.0.1:39745'``.

:func:`free_port` therefore draws at random from a range neither the kernel nor Ray
hands out by itself: above Ray's worker ports (10002–19999 by default) and below the
ephemeral range, and checks that the port can be bound right now.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
RAY_WORKER_PORTS_END = 19999
"""Ray's default ``max_worker_port``; its workers bind ports up to this one."""
DEFAULT_EPHEMERAL_START = 32768
TRIES = 200


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text("ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_START


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that can be bound on ``host`` now and that Ray and the kernel do not hand out.

    Falls back to a kernel-chosen port when the quiet range is unusable (an ephemeral
    range reconfigured to start below Ray's worker ports, or every try taken).
    """
    low, high = RAY_WORKER_PORTS_END + 1, _ephemeral_start() - 1
    if high - low >= TRIES:
        rng = random.SystemRandom()
        for _ in range(TRIES):
            port = rng.randint(low, high)
            if _bindable(port, host):
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
