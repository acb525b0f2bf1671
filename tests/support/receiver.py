"""A local HTTP receiver for job callbacks: records every POST, can fail on purpose."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the receiver got; ``fail_first`` POSTs are answered 500 (-1: all of them)."""

    url: str
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def wait_for(self, count: int, timeout_s: float) -> list[Received]:
        """The first ``count`` POSTs, waiting up to ``timeout_s`` for them."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout_s)
            return list(self.received)


@contextlib.contextmanager
def running_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (a free port) for the duration of the block."""
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = state["receiver"]
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with receiver.arrived:
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                failing = receiver.fail_first < 0 or len(receiver.received) <= receiver.fail_first
                receiver.arrived.notify_all()
            self.send_response(500 if failing else 204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(f"http://127.0.0.1:{server.server_port}", fail_first)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()
