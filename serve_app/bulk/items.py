"""What a scan reads: a directory tree of images, or a JSONL / Parquet manifest.

* a **directory**: every image file below it (by suffix, hidden files and folders
  skipped), its id the path relative to the directory, in POSIX form;
* a **JSONL manifest** (``.jsonl``): one object per line, ``{"id", "path", "text"}``;
* a **Parquet manifest** (``.parquet``): columns ``id``, ``path`` and optionally ``text``.

A manifest's ``path`` is relative to the manifest's folder or absolute; ``text`` (the
context a comment or danmaku gave the meme) is optional. A bad line or row (not JSON,
a missing or unknown field, a repeated id) is a :class:`ManifestError` naming it; a
missing *file* is not: it becomes that item's error row when the scan reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
"""File suffixes a directory scan takes (case-insensitive); the content decides the rest."""

MANIFEST_SUFFIXES = (".jsonl", ".parquet")


class ManifestError(ValueError):
    """The input cannot be listed: a bad manifest line or row, or no such input."""


class ManifestEntry(BaseModel):
    """One line of a manifest, as written."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1, description="The item's id, unique in the manifest.")
    path: str = Field(min_length=1, description="The image: relative to the manifest, or absolute.")
    text: str | None = Field(None, description="Context text the meme came with (optional).")


@dataclass(frozen=True, slots=True)
class ScanItem:
    """One item to analyse (validated on the way in; slots: a listing may be millions)."""

    id: str
    """Unique id of the item in its input."""
    path: str
    """Absolute path of the image file."""
    text: str | None = None
    """Context text, or None."""

    def as_record(self) -> dict[str, str | None]:
        """The item as a row: ``id``, ``path``, ``text``."""
        return {"id": self.id, "path": self.path, "text": self.text}


def list_input(source: Path) -> list[ScanItem]:
    """Every item of ``source`` (a directory, a ``.jsonl`` or a ``.parquet`` manifest).

    Raises :class:`ManifestError` naming the problem (and the line or row).
    """
    if source.is_dir():
        return list_directory(source)
    if not source.exists():
        raise ManifestError(f"{source}: no such directory or manifest")
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl_manifest(source)
    if suffix == ".parquet":
        return read_parquet_manifest(source)
    raise ManifestError(
        f"{source}: not a directory, and not a manifest ({', '.join(MANIFEST_SUFFIXES)})"
    )


def list_directory(root: Path) -> list[ScanItem]:
    """The image files below ``root``, sorted by id (their POSIX path relative to it)."""
    root = root.absolute()
    items: list[ScanItem] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(folder, name)
            items.append(ScanItem(id=path.relative_to(root).as_posix(), path=str(path)))
    items.sort(key=lambda item: item.id)
    return items


def _entries(where: Iterable[tuple[str, Any]], manifest: Path) -> Iterator[ScanItem]:
    """Validated items from (place, raw value) pairs; ids unique; paths resolved."""
    folder = manifest.absolute().parent
    first_seen: dict[str, str] = {}
    for place, raw in where:
        if not isinstance(raw, dict):
            raise ManifestError(f"{manifest}: {place}: expected an object with id and path")
        try:
            entry = ManifestEntry.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(str(part) for part in problem["loc"]) or "<row>"
            raise ManifestError(f"{manifest}: {place}: {field}: {problem['msg']}") from None
        if entry.id in first_seen:
            raise ManifestError(
                f"{manifest}: {place}: id {entry.id!r} repeats {first_seen[entry.id]}"
            )
        first_seen[entry.id] = place
        path = Path(entry.path).expanduser()
        resolved = path if path.is_absolute() else folder / path
        yield ScanItem(id=entry.id, path=os.path.normpath(resolved), text=entry.text)


def read_jsonl_manifest(manifest: Path) -> list[ScanItem]:
    """The items of a JSONL manifest; blank lines are skipped."""

    def lines() -> Iterator[tuple[str, Any]]:
        with manifest.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {number}", json.loads(line)
                except ValueError as exc:
                    raise ManifestError(f"{manifest}: line {number}: not JSON ({exc})") from None

    try:
        return list(_entries(lines(), manifest))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc})") from None


def read_parquet_manifest(manifest: Path) -> list[ScanItem]:
    """The items of a Parquet manifest (columns ``id``, ``path``, optional ``text``)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(manifest)
    except Exception as exc:  # pyarrow raises its own and OS errors for unreadable files
        raise ManifestError(f"{manifest}: not a readable Parquet file ({exc})") from None
    rows = table.to_pylist()
    return list(_entries(((f"row {n}", row) for n, row in enumerate(rows, start=1)), manifest))
