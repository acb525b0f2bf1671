"""``memeserve scan`` before Ray: bad input and options are one clear line; nothing to do
starts nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from serve_app.bulk.parts import part_name, run_stamp, write_part
from serve_app.bulk.rows import error_row
from serve_app.ops.cli import main
from tests.support.paths import ROOT

CONFIG = str(ROOT / "autoscale_configs" / "dev-cpu.yaml")


def test_a_bad_manifest_line_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "a.png"}\n{"id": "b"}\n', encoding="utf-8")
    code = main(["scan", str(manifest), "--out", str(tmp_path / "out"), "--config", CONFIG])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"error: {manifest}: line 2: path: Field required"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_options_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    code = main(["scan", str(tmp_path), "--out", str(tmp_path / "out"), *option])
    assert code == 2 and message in capsys.readouterr().err


def test_a_bad_profile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("applications:\n  - args: {engine: {kind: quantum}}\n", encoding="utf-8")
    code = main(["scan", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(profile)])
    assert code == 2 and "kind" in capsys.readouterr().err


def test_when_everything_is_done_nothing_is_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png"):
        (source / name).write_bytes(b"not really a png")
    out = tmp_path / "out"
    out.mkdir()
    rows = [
        error_row(
            item_id=name,
            path=str(source / name),
            status=400,
            code="bad_input",
            message="corrupt",
            model="m",
            scanned_at="t",
        )
        for name in ("a.png", "b.png")
    ]
    write_part(out, part_name(run_stamp()), rows)
    (out / ".tmp-part-killed.jsonl").write_text("{}\n", encoding="utf-8")

    code = main(["scan", str(source), "--out", str(out), "--config", CONFIG])

    assert code == 0
    assert not ray.is_initialized()
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert (summary["items"], summary["skipped"], summary["written"]) == (2, 2, 0)
    assert not (out / ".tmp-part-killed.jsonl").exists()
    printed = capsys.readouterr().out
    assert "2 items, 2 already done, 0 to scan" in printed and "skipped (already done)" in printed
