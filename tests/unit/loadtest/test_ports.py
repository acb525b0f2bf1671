"""Free ports for started services: outside the ranges Ray and the kernel hand out, and a
service whose chosen port was taken before the proxy bound it is started again elsewhere."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from loadtest.harness import ports, service
from loadtest.harness.ports import RAY_WORKER_PORTS_END, free_port
from loadtest.harness.service import ServiceStartError, start_service

# The line Serve's proxy logged in the CI run that lost a module to a taken port.
PROXY_BIND_FAILURE = "RuntimeError: Failed to bind to address '127.0.0.1:39745'."


def _ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_are_bindable_and_outside_rays_and_the_kernels_ranges() -> None:
    ephemeral = _ephemeral_start()
    chosen = {free_port() for _ in range(50)}
    for port in chosen:
        assert RAY_WORKER_PORTS_END < port < ephemeral
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    assert len(chosen) > 1, "drawn at random, not one fixed port"


def test_a_listening_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        draws = iter([taken] * 5 + [taken + 1])
        monkeypatch.setattr(ports.random.SystemRandom, "randint", lambda *_: next(draws))
        assert free_port() == taken + 1


def test_an_unusable_quiet_range_falls_back_to_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squeezed = tmp_path / "ip_local_port_range"
    squeezed.write_text("15000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", squeezed)
    port = free_port()
    assert port >= _ephemeral_start()


def _fake_starts(monkeypatch: pytest.MonkeyPatch, failures: list[ServiceStartError]) -> list[int]:
    """Replace the one real start with one that fails as told, then succeeds; return the ports."""
    seen: list[int] = []
    pending = list(failures)

    def start_once(document: dict[str, Any], **_: Any) -> str:
        seen.append(document["http_options"]["port"])
        if pending:
            raise pending.pop(0)
        return "started"

    monkeypatch.setattr(service, "_start_once", start_once)
    return seen


def test_a_taken_port_is_replaced_and_the_service_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _fake_starts(monkeypatch, [ServiceStartError("taken", port_taken=True)])
    assert start_service({"applications": []}) == "started"
    assert len(seen) == 2 and seen[0] != seen[1]


def test_other_start_failures_and_named_ports_are_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _fake_starts(monkeypatch, [ServiceStartError("did not deploy")])
    with pytest.raises(ServiceStartError, match="did not deploy"):
        start_service({"applications": []})
    assert len(seen) == 1
    seen = _fake_starts(monkeypatch, [ServiceStartError("taken", port_taken=True)])
    with pytest.raises(ServiceStartError, match="taken"):
        start_service({"applications": []}, port=free_port())
    assert len(seen) == 1


def test_a_port_taken_every_time_gives_up_after_the_last_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = [ServiceStartError("taken", port_taken=True) for _ in range(service.PORT_TRIES)]
    seen = _fake_starts(monkeypatch, taken)
    with pytest.raises(ServiceStartError):
        start_service({"applications": []})
    assert len(seen) == service.PORT_TRIES


def test_the_proxys_bind_failure_is_recognised_in_its_log() -> None:
    assert service.PORT_TAKEN.search(f"(ProxyActor pid=1) {PROXY_BIND_FAILURE}")
    assert not service.PORT_TAKEN.search("Deploying app 'memeserve' failed")
