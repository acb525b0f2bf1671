"""Callbacks: the URL allowlist, backoff, and delivery to a real local HTTP server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serve_app.jobs.callbacks import (
    backoff_s,
    check_callback_url,
    deliver,
    normalise_allowed_hosts,
)
from serve_app.jobs.signing import SIGNATURE_HEADER, verify

SECRET = "callback-secret"
BODY = b'{"job":"abc","state":"done"}'


# --------------------------------------------------------------------------- the allowlist

HOSTS = ["hooks.example.com", "*.example.org"]


@pytest.mark.parametrize(
    ("url", "allowed", "normalised"),
    [
        ("https://hooks.example.com/cb", HOSTS, "https://hooks.example.com/cb"),
        ("http://hooks.example.com", HOSTS, "http://hooks.example.com/"),
        (
            "HTTPS://Hooks.EXAMPLE.com.:8443/cb?job=1#frag",
            HOSTS,
            "https://hooks.example.com:8443/cb?job=1",
        ),
        ("https://a.example.org/x", HOSTS, "https://a.example.org/x"),
        ("https://deep.a.example.org/x", HOSTS, "https://deep.a.example.org/x"),
        ("https://example.org/x", [*HOSTS, "example.org"], "https://example.org/x"),
        ("https://hooks.example.com/", ["HOOKS.example.com."], "https://hooks.example.com/"),
        ("https://bücher.example.org/", HOSTS, "https://xn--bcher-kva.example.org/"),
        ("http://10.0.0.7:9000/cb", ["10.0.0.7"], "http://10.0.0.7:9000/cb"),
        ("http://[::1]:9000/cb", ["::1"], "http://[::1]:9000/cb"),
        ("http://[0:0::1]/", ["[::1]"], "http://[::1]/"),
        ("http://169.254.169.254/", ["169.254.169.254"], "http://169.254.169.254/"),
    ],
)
def test_allowed_urls_come_back_normalised(url: str, allowed: list[str], normalised: str) -> None:
    assert check_callback_url(url, allowed) == normalised


@pytest.mark.parametrize(
    ("url", "allowed", "reason"),
    [
        ("https://other.example.com/", HOSTS, "not on the allowed"),
        ("https://example.org/", HOSTS, "not on the allowed"),  # wildcard is for subdomains
        ("https://evil-example.org/", [*HOSTS, "example.org"], "not on the allowed"),
        ("https://evilexample.org/", [*HOSTS, "example.org"], "not on the allowed"),
        ("https://example.org.evil.net/", [*HOSTS, "example.org"], "not on the allowed"),
        ("https://hooks.example.com.evil.net/", HOSTS, "not on the allowed"),
        ("http://169.254.169.254/latest/meta-data/", HOSTS, "IP address"),
        ("http://[fd00:ec2::254]/", HOSTS, "IP address"),
        ("http://127.0.0.1/", ["*.0.0.1", "localhost"], "IP address"),
        ("http://2130706433/", HOSTS, "not on the allowed"),
        ("http://10.0.0.8/", ["10.0.0.7"], "IP address"),
        ("file:///etc/passwd", HOSTS, "scheme"),
        ("ftp://hooks.example.com/", HOSTS, "scheme"),
        ("javascript:alert(1)", HOSTS, "scheme"),
        ("hooks.example.com/cb", HOSTS, "scheme"),
        ("https://u:p@hooks.example.com/", HOSTS, "credentials"),
        ("https://u@hooks.example.com/", HOSTS, "credentials"),
        ("https://hooks.example.com@evil.net/", HOSTS, "credentials"),
        ("https://hooks.example.com/", [], "disabled"),
        ("https:///cb", HOSTS, "no host"),
        ("https://hooks.example.com:99999/", HOSTS, "cannot be parsed"),
        ("https://hooks.example.com:0/", HOSTS, "port"),
        ("https://hooks.example.com/ x", HOSTS, "whitespace"),
        ("https://hooks.example.com\\@evil.net/", HOSTS, "whitespace"),
        ("https://hooks.example.com/\n", HOSTS, "whitespace"),
        ("https://hooks..example.com/", HOSTS, "invalid host"),
        ("https://ho%6fks.example.com/", HOSTS, "invalid host"),
        ("https://[::1/", HOSTS, "cannot be parsed"),
        ("", HOSTS, "empty"),
        ("https://hooks.example.com/" + "a" * 2100, HOSTS, "longer"),
    ],
)
def test_refused_urls_say_why(url: str, allowed: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_callback_url(url, allowed)


def test_invalid_allowlist_entries_match_nothing() -> None:
    with pytest.raises(ValueError, match="not on the allowed"):
        check_callback_url("https://anything.net/", ["*", "*.", "bad host"])


def test_normalise_allowed_hosts() -> None:
    assert normalise_allowed_hosts(["Hooks.Example.com.", "*.Example.ORG", "[::1]"]) == (
        "hooks.example.com",
        "*.example.org",
        "::1",
    )
    for bad in ("*", "bad host", "*.10.0.0.1", ""):
        with pytest.raises(ValueError):
            normalise_allowed_hosts(["ok.example.com", bad])


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, 2.0, 60.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_s(10_000, 2.0, 3600.0) == 3600.0
    for bad in ((0, 2.0, 60.0), (1, 0.0, 60.0), (1, 2.0, -1.0)):
        with pytest.raises(ValueError):
            backoff_s(*bad)


# --------------------------------------------------------------------------- delivery


@dataclass
class Seen:
    """One request the test server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server that records requests; the path picks the answer."""

    base: str
    seen: list[Seen] = field(default_factory=list)
    release_slow: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            state.seen.append(
                Seen(
                    "POST",
                    self.path,
                    {key.lower(): value for key, value in self.headers.items()},
                    self.rfile.read(length),
                )
            )
            if self.path == "/slow":
                state.release_slow.wait(10)
            status = {"/ok": 204, "/created": 201, "/fail": 500, "/redirect": 307}.get(
                self.path, 404
            )
            self.send_response(status)
            if status == 307:
                self.send_header("location", f"{state.base}/ok")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release_slow.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_delivery_is_signed_and_verifiable(receiver: Receiver) -> None:
    assert deliver(f"{receiver.base}/ok", BODY, SECRET, 5.0) is None
    (request,) = receiver.seen
    assert (request.method, request.path, request.body) == ("POST", "/ok", BODY)
    assert request.headers["content-type"] == "application/json"
    assert verify(request.headers[SIGNATURE_HEADER], request.body, [SECRET], time.time())
    assert not verify(request.headers[SIGNATURE_HEADER], request.body, ["other"], time.time())


def test_any_2xx_is_accepted(receiver: Receiver) -> None:
    assert deliver(f"{receiver.base}/created", BODY, SECRET, 5.0) is None


def test_a_server_error_is_reported(receiver: Receiver) -> None:
    assert deliver(f"{receiver.base}/fail", BODY, SECRET, 5.0) == "HTTP 500"
    assert deliver(f"{receiver.base}/missing", BODY, SECRET, 5.0) == "HTTP 404"


def test_redirects_are_never_followed(receiver: Receiver) -> None:
    assert deliver(f"{receiver.base}/redirect", BODY, SECRET, 5.0) == (
        "HTTP 307 redirect (not followed)"
    )
    with httpx.Client(follow_redirects=True) as client:
        error = deliver(f"{receiver.base}/redirect", BODY, SECRET, 5.0, client=client)
        assert error == "HTTP 307 redirect (not followed)"
        assert not client.is_closed  # the caller's client is left open
    assert [request.path for request in receiver.seen] == ["/redirect", "/redirect"]


def test_transport_errors_are_reported(receiver: Receiver) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: refused
        error = deliver(f"http://127.0.0.1:{closed_port}/", BODY, SECRET, 5.0)
    assert error is not None and error.startswith("ConnectError")
    error = deliver(f"{receiver.base}/slow", BODY, SECRET, 0.2)
    assert error is not None and error.startswith("ReadTimeout")
    assert len(error) <= 200
