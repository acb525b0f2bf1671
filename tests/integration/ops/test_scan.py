"""``memeserve scan`` end to end: the CLI as a subprocess on Ray Data, the lite engine.

One small corpus for the module (≤ 12 files: the lite engine's OCR takes ~150 ms per
image here): distinct memes, a byte-identical copy, a re-encoded copy, an SVG named
.jpg and a truncated JPEG; a JSONL manifest adds a missing path. Each scan uses a
library file of its own under the test's temporary folder, never ``.memeserve/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from loadtest.harness.processes import descendants, session_members, signal_all, wait_gone
from serve_app.bulk.parts import committed_parts, read_rows
from tests.support.hostile import svg_xxe, truncated_jpeg
from tests.support.paths import ROOT

SCAN_TIMEOUT_S = 240.0
POLL_S = 0.1
MEMES = [
    MemeSpec(template=501, top="你说得对，但是", bottom="破防了"),
    MemeSpec(template=502, top="笑死我了", bottom="绝绝子"),
    MemeSpec(template=503, top="蚌埠住了", bottom="我真的会谢"),
    MemeSpec(template=504, top="就这？", bottom="摆烂了"),
    MemeSpec(template=505, top="退钱！客服呢", bottom="急了急了"),
]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mixed directory: 5 memes, 2 copies, 2 hostile files."""
    root = tmp_path_factory.mktemp("scan-corpus") / "in"
    for index, spec in enumerate(MEMES):
        folder = "sub/" if index % 2 else ""
        _write(root / f"{folder}meme{index}.jpg", meme_bytes(spec, "JPEG", quality=88))
    _write(root / "copies/same-as-meme0.jpg", (root / "meme0.jpg").read_bytes())
    _write(root / "copies/meme1-q60.jpg", meme_bytes(MEMES[1], "JPEG", quality=60))
    _write(root / "evil.jpg", svg_xxe())
    _write(root / "cut.jpg", truncated_jpeg())
    return root


def _profile(folder: Path) -> Path:
    """The CPU profile with the library in ``folder`` (never .memeserve/)."""
    document = yaml.safe_load((ROOT / "autoscale_configs/dev-cpu.yaml").read_text("utf-8"))
    args = document["applications"][0]["args"]
    args["cache"]["sqlite_path"] = str(folder / "library.sqlite3")
    args["scenes"]["sqlite_path"] = str(folder / "scenes.sqlite3")
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def _command(source: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serve_app.ops.cli",
        "scan",
        str(source),
        "--out",
        str(out),
        "--config",
        str(config),
        "--num-cpus",
        "2",
        *extra,
    ]


def _env(ray_address: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    return env


def _scan(
    source: Path, out: Path, config: Path, *extra: str, ray_address: str | None = None
) -> str:
    done = subprocess.run(
        _command(source, out, config, *extra),
        cwd=ROOT,
        env=_env(ray_address),
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def _summary(out: Path) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads((out / "summary.json").read_text("utf-8"))
    return figures


def _by_id(out: Path) -> dict[str, dict[str, Any]]:
    rows = read_rows(out)
    ids = Counter(row["id"] for row in rows)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    return {row["id"]: row for row in rows}


def _check_mixed_rows(rows: dict[str, dict[str, Any]]) -> None:
    assert set(rows) == {
        "meme0.jpg",
        "sub/meme1.jpg",
        "meme2.jpg",
        "sub/meme3.jpg",
        "meme4.jpg",
        "copies/same-as-meme0.jpg",
        "copies/meme1-q60.jpg",
        "evil.jpg",
        "cut.jpg",
    }
    assert (rows["evil.jpg"]["status"], rows["evil.jpg"]["error_code"]) == (
        415,
        "unsupported_media_type",
    )
    assert (rows["cut.jpg"]["status"], rows["cut.jpg"]["error_code"]) == (400, "bad_input")
    for bad in ("evil.jpg", "cut.jpg"):
        assert rows[bad]["analysis"] is None and rows[bad]["error_message"]
    good = {i: r for i, r in rows.items() if i not in ("evil.jpg", "cut.jpg")}
    for row in good.values():
        assert row["status"] == 200 and row["error_code"] is None
        analysis = json.loads(row["analysis"])
        assert analysis["emotion"] == row["emotion"] and analysis["intent"] == row["intent"]
        assert analysis["risk"]["policy"] == "default"
        assert (row["risk_level"], row["risk_action"]) == (
            analysis["risk"]["level"],
            analysis["risk"]["action"],
        )
        assert row["model"] == "memeserve-lite@lite-1"
    # One engine call per meme: of each pair of copies one was analysed, the other a hit.
    exact_pair = [good["meme0.jpg"]["cache_match"], good["copies/same-as-meme0.jpg"]["cache_match"]]
    assert Counter(exact_pair) == Counter(["exact", None])
    near_pair = [good["sub/meme1.jpg"]["cache_match"], good["copies/meme1-q60.jpg"]["cache_match"]]
    assert None in near_pair and ({"near", "exact"} & set(near_pair))
    for name in ("meme2.jpg", "sub/meme3.jpg", "meme4.jpg"):
        assert good[name]["cache_match"] is None


def test_a_mixed_directory_gives_the_right_rows_and_a_rerun_skips_them(
    corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = _profile(tmp_path)

    printed = _scan(corpus, out, config, "--batch-size", "3", "--concurrency", "2")

    rows = _by_id(out)
    _check_mixed_rows(rows)
    parquet_rows = [
        r
        for part in committed_parts(out)
        for r in pq.read_table(part.with_suffix(".parquet")).to_pylist()
    ]
    assert sorted(parquet_rows, key=lambda r: r["id"]) == sorted(
        rows.values(), key=lambda r: r["id"]
    )
    summary = _summary(out)
    assert summary["items"] == 9 and summary["skipped"] == 0 and summary["written"] == 9
    assert summary["analysed"] == 5
    assert summary["hits"]["exact"] + summary["hits"]["near"] == 2
    assert summary["errors"] == {"bad_input": 1, "unsupported_media_type": 1}
    assert "analysed (engine)" in printed and "items/s" in printed

    parts_before = sorted(p.name for p in out.iterdir())
    _scan(corpus, out, config)
    again = _summary(out)
    assert (again["items"], again["skipped"], again["written"]) == (9, 9, 0)
    assert sorted(p.name for p in out.iterdir()) == parts_before
    assert _by_id(out) == rows


def test_a_manifest_with_a_missing_path_gives_its_row(corpus: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    lines = [
        {"id": "m0", "path": str(corpus / "meme0.jpg"), "text": "客服呢？退钱"},
        {"id": "m2", "path": os.path.relpath(corpus / "meme2.jpg", tmp_path)},
        {"id": "gone", "path": "nowhere/missing.jpg"},
    ]
    manifest.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    out = tmp_path / "out"

    _scan(manifest, out, _profile(tmp_path), "--concurrency", "1")

    rows = _by_id(out)
    assert set(rows) == {"m0", "m2", "gone"}
    assert (rows["gone"]["status"], rows["gone"]["error_code"]) == (404, "not_found")
    assert rows["gone"]["path"] == str(tmp_path / "nowhere" / "missing.jpg")
    assert rows["m0"]["status"] == rows["m2"]["status"] == 200
    assert rows["m2"]["path"] == str(corpus / "meme2.jpg")


@pytest.fixture
def many(tmp_path: Path) -> Path:
    root = tmp_path / "many"
    for index in range(12):
        spec = MemeSpec(template=600 + index, top="前方高能", bottom="尊嘟假嘟")
        _write(root / f"m{index:02d}.jpg", meme_bytes(spec, "JPEG", quality=85, subsampling=2))
    return root


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """SIGKILL the scan and everything it started (its embedded Ray included)."""
    tree = descendants(process.pid)
    tree.update(session_members(process.pid))
    signal_all(list(tree), signal.SIGKILL)
    process.wait(timeout=30)
    left = wait_gone(tree, 30.0)
    assert not left, f"processes of the killed scan still alive: {left}"


def test_a_killed_scan_resumes_and_every_id_is_written_once(many: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = _profile(tmp_path)
    process = subprocess.Popen(
        _command(many, out, config, "--batch-size", "2", "--concurrency", "1"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SCAN_TIMEOUT_S
        while not committed_parts(out):
            assert process.poll() is None, "the scan ended before it committed a part"
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(POLL_S)
    finally:
        _kill_tree(process)
    first = {row["id"] for row in read_rows(out)}
    assert first and len(first) < 12

    _scan(many, out, config, "--batch-size", "2", "--concurrency", "1")

    rows = _by_id(out)
    assert set(rows) == {f"m{index:02d}.jpg" for index in range(12)}
    assert all(row["status"] == 200 for row in rows.values())
    summary = _summary(out)
    assert summary["skipped"] == len(first) and summary["written"] == 12 - len(first)


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """A local Ray cluster of two nodes of 1 CPU each; its address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def test_a_two_node_cluster_runs_the_scan_unchanged(
    corpus: Path, tmp_path: Path, two_nodes: str
) -> None:
    out = tmp_path / "out"
    printed = _scan(
        corpus,
        out,
        _profile(tmp_path),
        "--batch-size",
        "3",
        "--concurrency",
        "2",
        ray_address=two_nodes,
    )
    _check_mixed_rows(_by_id(out))
    assert _summary(out)["written"] == 9
    assert "items/s" in printed
