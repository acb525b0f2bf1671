"""``memeserve scan INPUT --out OUT``: offline bulk analysis on Ray Data, resumable.

A platform re-judges the memes it already holds after a model update. The scan runs
the service's own code under the service's own config (``--config``, a Serve profile:
its ``args``, the Structurer's and the LoadController's user_config) as a Ray Data
pipeline over the input (:mod:`serve_app.bulk.items`), minus the ids already committed
in OUT (:mod:`serve_app.bulk.parts`):

1. **read** (tasks): read each file, validate, decode and fingerprint it
   (:func:`~serve_app.bulk.work.read_and_key`);
2. **lookup** (tasks calling ONE library actor, a
   :class:`~serve_app.bulk.shared_library.ScanLibrary`): the library the service
   uses answers repeats; copies of a meme still pending in this scan wait for the
   next pass;
3. **engine** (an actor pool of ``--concurrency`` actors, each creating and starting
   the configured engine once): level 0's request, the engine, the Structurer's
   structuring; fresh answers are stored in the library at level 0;
4. **write** (tasks): the ``default`` policy decides the risk, and every block becomes
   one committed JSONL and one Parquet part (temporary name, then ``os.replace``).

Ray: an embedded local instance (``address="local"``, never a stray cluster) unless
``RAY_ADDRESS`` is set (``ray job submit`` sets it), then that cluster, unchanged. The
Ray-free pieces live in :mod:`serve_app.bulk`; this module only wires them to Ray Data.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from serve_app.bulk.items import ScanItem, list_input
from serve_app.bulk.parts import clean_uncommitted, committed_ids, part_name, run_stamp, write_part
from serve_app.bulk.rows import WORK_FIELDS, WorkRow, new_work_row
from serve_app.bulk.shared_library import LookupQuery, ScanLibrary, StoreItem
from serve_app.bulk.summary import ScanSummary, write_summary
from serve_app.bulk.work import (
    EngineWorker,
    answer_from_library,
    finish,
    read_and_key,
)
from serve_app.config.models import AppArgs, LevelArgs, PolicyArgs, StructurerUserConfig
from serve_app.media.fingerprint import Fingerprinter
from serve_app.ops.library_tool import load_profile

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("autoscale_configs/dev-cpu.yaml")
TASK_CPUS = 0.25
"""CPU reservation of the read, lookup and write tasks (fractional: a 2-core box schedules)."""
LIBRARY_CPUS = 0.1
"""CPU reservation of the library actor (lookups are fractions of a millisecond)."""

_WORK_TYPES = {"data": pa.binary(), "fingerprint": pa.binary(), "status": pa.int32()}
WORK_SCHEMA = pa.schema(
    [pa.field(name, _WORK_TYPES.get(name, pa.string())) for name in WORK_FIELDS]
)
"""The columns of a block between stages (:class:`~serve_app.bulk.rows.WorkRow`)."""

WRITTEN_SCHEMA = pa.schema(
    [
        pa.field("status", pa.int32()),
        pa.field("error_code", pa.string()),
        pa.field("cache_match", pa.string()),
    ]
)


@dataclass(frozen=True)
class ScanOptions:
    """The options of ``memeserve scan``."""

    source: Path
    """A directory of images, or a ``.jsonl`` / ``.parquet`` manifest."""
    out: Path
    """The output folder (created; parts already there are skipped)."""
    config: Path = DEFAULT_CONFIG
    """The Serve profile whose args, Structurer and LoadController config the scan uses."""
    concurrency: int = 2
    """Engine actors (each with its own engine)."""
    batch_size: int = 32
    """Items per block: one part per block, one engine batch per block."""
    num_cpus: int | None = None
    """CPUs of the embedded local Ray (default: this machine's); ignored on a cluster."""
    engine_cpus: float = 0.5
    """CPU reservation of each engine actor."""
    engine_gpus: float = 0.0
    """GPU reservation of each engine actor (GPU engines)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.engine_cpus < 0 or self.engine_gpus < 0:
            raise ValueError("--engine-cpus and --engine-gpus must not be negative")


# ---------------------------------------------------------------------------- stages


def _rows(batch: pa.Table) -> list[WorkRow]:
    rows: list[WorkRow] = batch.to_pylist()
    return rows


def _table(rows: list[WorkRow]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=WORK_SCHEMA)


@lru_cache(maxsize=1)
def _fingerprinter() -> Fingerprinter:
    return Fingerprinter()


def read_stage(batch: pa.Table, *, args: AppArgs) -> pa.Table:
    """Stage 1 over a block of items (``id``, ``path``, ``text``): read and key each."""
    fingerprinter = _fingerprinter()
    rows = [
        read_and_key(
            new_work_row(item["id"], item["path"], item["text"]),
            args=args,
            fingerprinter=fingerprinter,
        )
        for item in batch.to_pylist()
    ]
    return _table(rows)


def lookup_stage(batch: pa.Table, *, library: Any) -> pa.Table:
    """Stage 2: one call to the library actor per block; hits answered, copies deferred."""
    rows = _rows(batch)
    keyed = [i for i, row in enumerate(rows) if row["fingerprint"] is not None]
    if not keyed:
        return _table(rows)
    queries = [
        LookupQuery(
            id=rows[i]["id"],
            path=rows[i]["path"],
            text=rows[i]["text"],
            fingerprint=rows[i]["fingerprint"] or b"",
            scope=rows[i]["scope"] or "",
        )
        for i in keyed
    ]
    answers = ray.get(library.lookup.remote(queries))
    deferred: set[int] = set()
    for index, answer in zip(keyed, answers, strict=True):
        if answer == "defer":
            deferred.add(index)
        elif answer != "miss":
            rows[index] = answer_from_library(rows[index], answer)
    return _table([row for i, row in enumerate(rows) if i not in deferred])


class EngineStage:
    """Stage 3, one per actor of the pool: an :class:`EngineWorker` started once."""

    def __init__(
        self,
        args: AppArgs,
        structurer: StructurerUserConfig,
        level: LevelArgs,
        library: Any | None,
    ) -> None:
        store: Callable[[list[StoreItem]], object] | None = None
        if library is not None:

            def store(items: list[StoreItem]) -> object:
                return ray.get(library.store.remote(items))

        self._worker = EngineWorker(args, structurer, level, store)
        self._worker.start()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Answer a block's misses with the engine."""
        return _table(self._worker.analyse(_rows(batch)))


def write_stage(batch: pa.Table, *, out: str, run: str, model: str, policy: PolicyArgs) -> pa.Table:
    """Stage 4: judge and write one block as one committed part; what was written."""
    rows = [finish(row, model=model, policy=policy) for row in _rows(batch)]
    if rows:
        write_part(Path(out), part_name(run), rows)
    return pa.Table.from_pylist(
        [
            {"status": row.status, "error_code": row.error_code, "cache_match": row.cache_match}
            for row in rows
        ],
        schema=WRITTEN_SCHEMA,
    )


# --------------------------------------------------------------------------- driver


def connect(num_cpus: int | None) -> bool:
    """Join ``RAY_ADDRESS`` if set, else start an embedded local Ray; True if started here."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        # "local": a Ray instance of its own, never one that happens to run on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    return True


def _blocks(items: list[ScanItem], batch_size: int) -> list[pa.Table]:
    schema = pa.schema(
        [pa.field("id", pa.string()), pa.field("path", pa.string()), pa.field("text", pa.string())]
    )
    records = [item.as_record() for item in items]
    count = max(1, math.ceil(len(records) / batch_size))
    return [
        pa.Table.from_pylist(records[i * batch_size : (i + 1) * batch_size], schema=schema)
        for i in range(count)
    ]


def _one_pass(
    items: list[ScanItem],
    options: ScanOptions,
    *,
    args: AppArgs,
    structurer: StructurerUserConfig,
    level: LevelArgs,
    library: Any | None,
    run: str,
    summary: ScanSummary,
) -> None:
    ds: ray.data.Dataset = ray.data.from_arrow(_blocks(items, options.batch_size))
    ds = ds.map_batches(
        functools.partial(read_stage, args=args),
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=TASK_CPUS,
    )
    if library is not None:
        ds = ds.map_batches(
            functools.partial(lookup_stage, library=library),
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=TASK_CPUS,
        )
    ds = ds.map_batches(
        EngineStage,
        fn_constructor_kwargs={
            "args": args,
            "structurer": structurer,
            "level": level,
            "library": library,
        },
        batch_size=None,
        batch_format="pyarrow",
        # A fixed pool of --concurrency actors (``compute``: ``concurrency=`` is deprecated).
        compute=ray.data.ActorPoolStrategy(size=options.concurrency),
        num_cpus=options.engine_cpus,
        num_gpus=options.engine_gpus or None,
    )
    ds = ds.map_batches(
        functools.partial(
            write_stage,
            out=str(options.out.absolute()),
            run=run,
            model=args.engine.model_name,
            policy=PolicyArgs(),
        ),
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=TASK_CPUS,
    )
    for written in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(written, pa.Table)
        for row in written.to_pylist():
            summary.count(row["status"], row["error_code"], row["cache_match"])


def run_scan(options: ScanOptions, *, echo: Callable[[str], object] = print) -> ScanSummary:
    """Scan ``options.source`` into ``options.out``; the summary (also in summary.json).

    Raises ``ValueError`` (a :class:`~serve_app.bulk.items.ManifestError` among them)
    for a bad profile or input, before anything is started.
    """
    started = time.monotonic()
    profile = load_profile(options.config)
    args = profile.args
    items = list_input(options.source)
    options.out.mkdir(parents=True, exist_ok=True)
    clean_uncommitted(options.out)
    done = committed_ids(options.out)
    todo = [item for item in items if item.id not in done]
    summary = ScanSummary(items=len(items), skipped=len(items) - len(todo))
    echo(
        f"memeserve scan: {len(items)} items, {summary.skipped} already done, "
        f"{len(todo)} to scan with the {args.engine.kind} engine ({args.engine.model_name})"
    )
    started_ray = False
    library: Any | None = None
    try:
        if todo:
            starting = time.monotonic()
            started_ray = connect(options.num_cpus)
            if args.cache.enabled:
                actor_class: Any = ray.remote(ScanLibrary)
                library = actor_class.options(num_cpus=LIBRARY_CPUS).remote(args.cache)
                loaded = ray.get(library.open.remote())
                echo(f"memeserve scan: library {args.cache.backend} with {loaded} entries")
            summary.startup_s = time.monotonic() - starting
            run = run_stamp()
            level = profile.controller.level(0)
            while todo:
                summary.passes += 1
                if library is not None:
                    ray.get(library.begin_pass.remote())
                _one_pass(
                    todo,
                    options,
                    args=args,
                    structurer=profile.structurer,
                    level=level,
                    library=library,
                    run=run,
                    summary=summary,
                )
                deferred = ray.get(library.take_deferred.remote()) if library is not None else []
                todo = [ScanItem(id=q.id, path=q.path, text=q.text) for q in deferred]
                if todo:
                    echo(f"memeserve scan: {len(todo)} copies of earlier items, scanned again")
            if library is not None:
                ray.get(library.close.remote())
    finally:
        if started_ray:
            ray.shutdown()
    summary.wall_s = time.monotonic() - started
    write_summary(options.out, summary)
    return summary


def main_scan(options: ScanOptions) -> int:
    """The CLI's ``scan``: run, print the summary table; 2 for a bad profile or input."""
    try:
        summary = run_scan(options)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.table())
    print(f"summary: {options.out / 'summary.json'}")
    return 0
