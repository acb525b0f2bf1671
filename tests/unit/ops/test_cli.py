"""The memeserve command line against servers that misbehave: clear errors, no traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from serve_app.ops.cli import main


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "m.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["analyze", "stream"])
def test_a_timeout_is_one_clear_line(
    silent_server: str, image: Path, stream: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["analyze", str(image), "--url", silent_server, "--timeout", "0.3", "--retries", "0"]
    code = main([*argv, "--stream"] if stream else argv)
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"error: no answer from {silent_server} within --timeout 0.3 s"


def test_an_unreachable_service_is_one_clear_line(
    image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = main(["analyze", str(image), "--url", url, "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"error: cannot reach {url}") and "Traceback" not in err
