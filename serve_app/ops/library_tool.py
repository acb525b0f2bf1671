"""``memeserve library import | stats | export``: the known-meme library, offline.

The commands open the backend that a Serve config file names (``args.cache``), so
they act on the same SQLite file or Redis keys as the running service; a running
FingerprintStore picks imported entries up within ``cache.sync_period_s``.

``import DIR`` fingerprints every image in DIR under the config's model and prompt
version. An image with a sidecar ``NAME.json`` is stored with that analysis: the
sidecar passes through the Structurer's parser like model output (closed label sets,
risk tier, output filter), so an import can never store what the service could not
have answered. An image without one is analysed by the config's engine, in process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from serve_app.config.check import load_yaml, user_config_of
from serve_app.config.models import AppArgs, ControllerUserConfig, StructurerUserConfig
from serve_app.engines import Engine, EngineOutput, create_engine
from serve_app.errors import ClientError
from serve_app.library.backends import LibraryBackend, LibraryRecord
from serve_app.library.store import FingerprintLibrary
from serve_app.pipeline.prepare import Prepared, build_request, key_upload
from serve_app.understanding.structuring import structure

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


@dataclass(frozen=True)
class Profile:
    """What the library commands need from a Serve config file."""

    args: AppArgs
    controller: ControllerUserConfig
    structurer: StructurerUserConfig


def load_profile(path: Path) -> Profile:
    """The first memeserve application of ``path``; ``ValueError`` naming the problem."""
    document, problems = load_yaml(path)
    if problems:
        raise ValueError(str(problems[0]))
    applications = (document or {}).get("applications") or []
    if not applications:
        raise ValueError(f"{path}: no applications")
    application = applications[0]
    return Profile(
        args=AppArgs.model_validate(application.get("args") or {}),
        controller=user_config_of(application, "LoadController", ControllerUserConfig),
        structurer=user_config_of(application, "Structurer", StructurerUserConfig),
    )


@dataclass
class ImportReport:
    """What an import did, file by file."""

    stored: list[str] = field(default_factory=list)
    analysed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _images(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _sidecar_output(path: Path, model: str) -> EngineOutput | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return None
    text = sidecar.read_text("utf-8")
    # Accept what `export` writes and what the service returns: take the analysis out.
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("analysis"), dict):
        text = json.dumps(parsed["analysis"], ensure_ascii=False)
    return EngineOutput(text=text, engine="import", model=model, elapsed_ms=0.0)


def import_directory(
    directory: Path,
    profile: Profile,
    library: FingerprintLibrary,
    *,
    context: str | None = None,
) -> ImportReport:
    """Store an analysis for every image in ``directory`` (see the module docstring)."""
    args = profile.args
    report = ImportReport()
    row = profile.controller.level(0)
    engine: Engine | None = None
    loop = asyncio.new_event_loop()
    try:
        for index, path in enumerate(_images(directory)):
            name = path.name
            try:
                keyed = key_upload(
                    path.read_bytes(), context, args=args, fingerprinter=library.fingerprinter
                )
                prepared = build_request(keyed, request_id=f"import-{index}", args=args, row=row)
                output = _sidecar_output(path, args.engine.model_name)
                if output is None:
                    if engine is None:
                        engine = create_engine(args.engine)
                        loop.run_until_complete(engine.start())
                    output = loop.run_until_complete(engine.generate(prepared.request))
                    report.analysed.append(name)
                analysis = _structured(output, prepared, profile)
            except (ClientError, OSError, ValueError) as exc:
                report.failed[name] = str(exc)
                continue
            if library.store(keyed.key, analysis, level=row.level, source="import"):
                report.stored.append(name)
            else:
                report.kept.append(name)
    finally:
        if engine is not None:
            loop.run_until_complete(engine.shutdown())
        loop.close()
    return report


def _structured(output: EngineOutput, prepared: Prepared, profile: Profile) -> dict[str, Any]:
    context = prepared.structure_context(prepared.request.request_id)
    structured = structure(output, context, profile.structurer)
    if not structured.from_model:
        raise ValueError("the analysis is not a JSON object the structurer can read")
    return structured.analysis.model_dump(mode="json")


def all_records(backend: LibraryBackend, batch: int = 1000) -> Iterator[LibraryRecord]:
    """Every record of ``backend``, oldest first."""
    cursor = 0
    while True:
        records, cursor = backend.load_since(cursor, batch)
        yield from records
        if len(records) < batch:
            return


def export_records(backend: LibraryBackend, out: TextIO) -> int:
    """Write every record as one JSON line; returns how many."""
    count = 0
    for record in all_records(backend):
        line = {
            "entry_id": record.entry_id,
            "exact_key": record.exact_key,
            "scope": record.scope,
            "level": record.level,
            "stored_at": record.stored_at,
            "source": record.source,
            "fingerprint": base64.b64encode(record.fingerprint).decode("ascii"),
            "analysis": record.analysis,
        }
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        count += 1
    return count


def library_stats(backend: LibraryBackend) -> dict[str, Any]:
    """Entries by model, level and source, plus the backend's own figures."""
    by_model: Counter[str] = Counter()
    by_level: Counter[int] = Counter()
    by_source: Counter[str] = Counter()
    oldest = newest = None
    for record in all_records(backend):
        by_model[record.scope.split(":", 1)[1]] += 1
        by_level[record.level] += 1
        by_source[record.source] += 1
        oldest = record.stored_at if oldest is None else min(oldest, record.stored_at)
        newest = record.stored_at if newest is None else max(newest, record.stored_at)
    return {
        "backend": backend.stats(),
        "entries": sum(by_level.values()),
        "by_model_and_prompt": dict(by_model),
        "by_level": {str(level): n for level, n in sorted(by_level.items())},
        "by_source": dict(by_source),
        "oldest": oldest,
        "newest": newest,
    }
