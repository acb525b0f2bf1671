"""The library outlives the app: a restart keeps what was analysed, and what
`memeserve library import` wrote while the app was down is answered after it — on the
SQLite file and on a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest.corpus import MemeSpec, draw_meme, encode
from serve_app.ops.cli import main
from tests.support.app import start_app
from tests.support.redis_server import running_redis

KNOWN = MemeSpec(template=5150, top="尊嘟假嘟", bottom="泰裤辣")
IMPORTED = MemeSpec(template=5151, top="退钱！客服呢", bottom="急了急了")
ANALYSED_ON_IMPORT = MemeSpec(template=5152, top="破防了", bottom="摆烂了")
SIDECAR = {
    "emotion": "anger",
    "intent": "complaint",
    "sarcastic": False,
    "offensiveness": 1,
    "confidence": 0.9,
    "explanation": "用户要求退款并寻找客服，是对商家的真实投诉。",
    "ocr_text": ["退钱！客服呢", "急了急了"],
    "slang": ["急了"],
}


@pytest.fixture(params=["sqlite", "redis"])
def cache_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {"backend": "sqlite", "sqlite_path": str(tmp_path / "library.sqlite3")}
        return
    with running_redis(tmp_path) as url:
        yield {"backend": "redis", "redis_url": url, "redis_prefix": "test:restart:"}


def analyse(base_url: str, data: bytes) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/v1/memes/analyze", files={"image": ("m", data)}, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def write_import_dir(directory: Path) -> None:
    directory.mkdir()
    (directory / "complaint.png").write_bytes(encode(draw_meme(IMPORTED), "PNG"))
    (directory / "complaint.json").write_text(json.dumps(SIDECAR, ensure_ascii=False), "utf-8")
    (directory / "no-sidecar.webp").write_bytes(encode(draw_meme(ANALYSED_ON_IMPORT), "WEBP"))
    (directory / "notes.txt").write_text("not an image", "utf-8")
    (directory / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def test_restart_keeps_the_library_and_takes_imports(
    cache_args: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {"cache": cache_args}
    app = start_app(args)
    base_url = next(app)
    first = analyse(base_url, encode(draw_meme(KNOWN), "PNG"))
    assert first["meta"]["cache"]["hit"] is False
    app.close()  # serve.shutdown + ray.shutdown: every replica and its memory is gone

    config = tmp_path / "profile.yaml"
    application = {"name": "memeserve", "import_path": "deployments.app:build_app", "args": args}
    config.write_text(yaml.safe_dump({"applications": [application]}), "utf-8")
    imports = tmp_path / "known-memes"
    write_import_dir(imports)
    # The broken file is reported and makes the exit status non-zero; the rest is stored.
    assert main(["library", "import", str(imports), "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "imported 2 (1 analysed by the lite engine)" in captured.out
    assert "broken.jpg" in captured.err
    assert main(["library", "stats", "--config", str(config)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 3 and stats["by_source"] == {"service": 1, "import": 2}

    app = start_app(args)
    base_url = next(app)
    try:
        again = analyse(base_url, encode(draw_meme(KNOWN), "JPEG", quality=70))
        assert again["meta"]["cache"]["hit"] is True
        assert again["explanation"] == first["explanation"]
        imported = analyse(base_url, encode(draw_meme(IMPORTED), "JPEG", quality=85))
        assert imported["meta"]["cache"]["match"] == "near"
        assert (imported["emotion"], imported["intent"]) == ("anger", "complaint")
        assert imported["explanation"] == SIDECAR["explanation"]
        assert imported["risk"]["level"] != "none"  # recomputed by the structurer's rules
        on_import = analyse(base_url, encode(draw_meme(ANALYSED_ON_IMPORT), "PNG"))
        assert on_import["meta"]["cache"]["hit"] is True
        assert on_import["meta"]["engine"] == "lite"
    finally:
        app.close()

    export = tmp_path / "library.jsonl"
    assert main(["library", "export", "--config", str(config), "--out", str(export)]) == 0
    lines = [json.loads(line) for line in export.read_text("utf-8").splitlines()]
    assert len(lines) == 3
    assert {line["source"] for line in lines} == {"service", "import"}
