"""Listing a scan's input: a directory tree, JSONL and Parquet manifests, bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve_app.bulk.items import ManifestError, ScanItem, list_input


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_directory_tree_lists_images_with_posix_relative_ids(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for name in ("b.png", "a/c.JPG", "a/z/d.webp", "e.gif", "f.jpeg", "g.bmp"):
        _touch(root / name)
    for name in ("notes.txt", "a/meta.json", ".hidden.png", ".cache/h.png", "a/.x/i.png"):
        _touch(root / name)

    items = list_input(root)

    assert [item.id for item in items] == [
        "a/c.JPG",
        "a/z/d.webp",
        "b.png",
        "e.gif",
        "f.jpeg",
        "g.bmp",
    ]
    assert items[1].path == str((root / "a" / "z" / "d.webp").absolute())
    assert all(item.text is None for item in items)


def test_an_empty_directory_has_no_items(tmp_path: Path) -> None:
    assert list_input(tmp_path) == []


def test_a_jsonl_manifest_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    elsewhere = _touch(tmp_path / "elsewhere" / "abs.png")
    manifest = tmp_path / "lists" / "manifest.jsonl"
    manifest.parent.mkdir()
    lines = [
        {"id": "one", "path": "img/1.png", "text": "你说得对，但是"},
        {"id": "two", "path": str(elsewhere)},
        {"id": "three", "path": "../missing.png", "text": None},
    ]
    manifest.write_text(
        "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n",
        encoding="utf-8",
    )

    items = list_input(manifest)

    assert items == [
        ScanItem(id="one", path=str(manifest.parent / "img" / "1.png"), text="你说得对，但是"),
        ScanItem(id="two", path=str(elsewhere)),
        ScanItem(id="three", path=str(tmp_path / "missing.png")),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"line 2: not JSON"),
        ('{"id": "b"}', r"line 2: path: Field required"),
        ('{"id": "b", "path": "b.png", "colour": "red"}', r"line 2: colour: Extra inputs"),
        ('{"id": 7, "path": "b.png"}', r"line 2: id: Input should be a valid string"),
        ('{"id": "", "path": "b.png"}', r"line 2: id: String should have at least 1"),
        ('["b", "b.png"]', r"line 2: expected an object with id and path"),
        ('{"id": "a", "path": "again.png"}', r"line 2: id 'a' repeats line 1"),
    ],
)
def test_a_bad_manifest_line_is_a_clear_error_naming_it(
    tmp_path: Path, line: str, expected: str
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "a.png"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=expected) as info:
        list_input(manifest)
    assert str(manifest) in str(info.value)


def test_a_parquet_manifest_with_and_without_text(tmp_path: Path) -> None:
    with_text = tmp_path / "with.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b"], "path": ["a.png", "/abs/b.png"], "text": ["破防了", None]}),
        with_text,
    )
    without = tmp_path / "without.parquet"
    pq.write_table(pa.table({"id": ["c"], "path": ["c.png"]}), without)

    assert list_input(with_text) == [
        ScanItem(id="a", path=str(tmp_path / "a.png"), text="破防了"),
        ScanItem(id="b", path="/abs/b.png"),
    ]
    assert list_input(without) == [ScanItem(id="c", path=str(tmp_path / "c.png"))]


def test_a_bad_parquet_row_names_the_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", None], "path": ["a.png", "b.png"]}), manifest)
    with pytest.raises(ManifestError, match=r"row 2: id: Input should be a valid string"):
        list_input(manifest)


def test_a_file_that_is_not_parquet_is_a_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_text("id,path\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        list_input(manifest)


def test_an_input_that_is_neither_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such directory or manifest"):
        list_input(tmp_path / "nowhere")
    csv = _touch(tmp_path / "list.csv")
    with pytest.raises(ManifestError, match=r"not a manifest \(\.jsonl, \.parquet\)"):
        list_input(csv)
