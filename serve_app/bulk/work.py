"""The per-item work of a scan, one function per stage, framework-free.

The stages, in order (:mod:`serve_app.ops.scan` runs each over a batch of work rows):

1. :func:`read_and_key` — read the file, validate, decode and fingerprint it with the
   service's own :func:`~serve_app.pipeline.prepare.key_upload` (same limits, same
   client errors: a hostile, truncated or oversize file gets the status the HTTP API
   gives it; a missing file is 404 ``not_found``);
2. :func:`answer_from_library` — a library hit becomes the item's answer, as the
   service answers a hit (cache meta, no engine);
3. :class:`EngineWorker` — the rest: :func:`~serve_app.pipeline.prepare.build_request`
   at level 0, the configured engine, the Structurer's
   :func:`~serve_app.understanding.structuring.structure`; fresh answers the model
   wrote go back to the library;
4. :func:`finish` — the policy decides the risk (as the Ingress does for every answer)
   and the row takes its output shape (:class:`~serve_app.bulk.rows.ScanRow`).

Nothing here raises for one item's problem: it becomes that item's error row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.bulk.rows import (
    ScanRow,
    WorkRow,
    analysed_row,
    error_row,
    fail,
    needs_engine,
)
from serve_app.bulk.shared_library import StoreItem, store_key
from serve_app.config.models import AppArgs, LevelArgs, PolicyArgs, StructurerUserConfig
from serve_app.engines import Engine, EngineOutput, EngineRequest, create_engine
from serve_app.errors import (
    ClientError,
    MemeServeError,
    NotFound,
    PayloadTooLarge,
    ServerError,
)
from serve_app.library.store import LibraryHit
from serve_app.media.fingerprint import Fingerprinter
from serve_app.media.imaging import decode_image
from serve_app.pipeline.engine_pool import EnginePool
from serve_app.pipeline.prepare import Keyed, Prepared, build_request, key_upload, limits_from
from serve_app.scenes.decide import decide
from serve_app.understanding.context_text import normalise_context
from serve_app.understanding.structuring import structure

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "default"


def request_id_for() -> str:
    """A request id for one item's analysis (``scan-`` and 16 hex digits)."""
    return f"scan-{uuid.uuid4().hex[:16]}"


def utc_now() -> str:
    """The current time, ISO 8601 in UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _internal(what: str, exc: BaseException) -> ServerError:
    """An unexpected failure as a 500 row: logged with its traceback, a plain message."""
    logger.error("%s failed unexpectedly", what, exc_info=exc)
    return ServerError(f"{what} failed unexpectedly ({type(exc).__name__})")


def read_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; :class:`NotFound` if it is missing, :class:`PayloadTooLarge` if
    it is over ``max_bytes`` (from its size, before reading it)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PayloadTooLarge(f"image is {size} bytes; the limit is {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except IsADirectoryError:
        raise NotFound(f"not a file: {path}") from None
    except PermissionError:
        raise NotFound(f"cannot read {path}: permission denied") from None


def read_and_key(row: WorkRow, *, args: AppArgs, fingerprinter: Fingerprinter) -> WorkRow:
    """Stage 1: the file read, validated, decoded and fingerprinted (or the row's error)."""
    try:
        data = read_file(Path(row["path"]), args.limits.max_bytes)
        keyed = key_upload(data, row["text"], args=args, fingerprinter=fingerprinter)
    except MemeServeError as exc:
        return fail(row, exc)
    except Exception as exc:  # never a crash: one bad item is one error row
        return fail(row, _internal(f"reading {row['id']!r}", exc))
    keyed_row = row.copy()
    keyed_row["data"] = data
    keyed_row["fingerprint"] = keyed.key.fingerprint.to_bytes()
    keyed_row["scope"] = keyed.key.scope
    return keyed_row


def from_library(hit: LibraryHit, request_id: str, preprocess_ms: float) -> dict[str, Any]:
    """A stored analysis as this item's answer, as the service answers a hit
    (``serve_app.http.service.from_cache`` and ``finish``): cache meta, no engine time."""
    result = dict(hit.analysis)
    meta = dict(result["meta"])
    meta["cache"] = {"hit": True, "match": hit.match, "distance": hit.distance}
    meta["timings_ms"] = {
        "preprocess": round(preprocess_ms, 2),
        "engine": 0.0,
        "structure": 0.0,
        "total": round(preprocess_ms, 2),
    }
    meta["degradation_level"] = hit.level
    meta["usage"] = None  # the stored answer's tokens were spent by another request
    result["meta"] = meta
    result["request_id"] = request_id
    return result


def answer_from_library(row: WorkRow, hit: LibraryHit) -> WorkRow:
    """Stage 2: a library hit is the item's answer; the bytes are no longer needed."""
    answered = row.copy()
    answered["data"] = None
    answered["analysis"] = json.dumps(from_library(hit, request_id_for(), 0.0), ensure_ascii=False)
    answered["cache_match"] = hit.match
    return answered


def keyed_from_row(row: WorkRow, args: AppArgs) -> Keyed:
    """The keyed upload of a row stage 1 read (decoded again: images do not travel)."""
    if row["data"] is None or row["fingerprint"] is None or row["scope"] is None:
        raise ValueError(f"row {row['id']!r} was not read and keyed")
    started = time.perf_counter()
    return Keyed(
        decoded=decode_image(row["data"], limits_from(args)),
        context=normalise_context(row["text"]),
        key=store_key(row["fingerprint"], row["scope"]),
        started=started,
    )


StoreFn = Callable[[list[StoreItem]], object]
"""Stores fresh analyses in the scan's library (a call to the library's actor)."""


class EngineWorker:
    """Stage 3: one engine, created and started once, for every batch it is given.

    The engine is driven as the VLM pool drives it (:class:`~serve_app.engines.Engine`:
    ``await start()`` once, ``await generate_batch(requests)`` per batch, which batching
    engines run as one model call) on this worker's own event loop. ``engine`` replaces
    the one ``args.engine`` names (tests).
    """

    def __init__(
        self,
        args: AppArgs,
        structurer: StructurerUserConfig,
        row: LevelArgs,
        store: StoreFn | None,
        *,
        engine: Engine | None = None,
    ) -> None:
        self.args = args
        self.structurer = structurer
        self.row = row
        self._store = store
        self._loop = asyncio.new_event_loop()
        self.engine: Engine = engine if engine is not None else create_engine(args.engine)
        self._started = False

    def start(self) -> None:
        """Load the engine (may take long); idempotent."""
        if not self._started:
            self._loop.run_until_complete(self.engine.start())
            self._started = True
            logger.info("scan engine %s started: %s", self.engine.name, self.engine.model)

    def close(self) -> None:
        """Release the engine and the loop; safe to call twice."""
        if self._loop.is_closed():
            return
        if self._started:
            self._loop.run_until_complete(self.engine.shutdown())
        self._loop.close()

    def analyse(self, rows: list[WorkRow]) -> list[WorkRow]:
        """Every row that needs the engine answered (or failed); the others as they were."""
        self.start()
        out = list(rows)
        prepared: dict[int, Prepared] = {}
        for index, row in enumerate(rows):
            if not needs_engine(row):
                out[index] = _without_bytes(row)
                continue
            try:
                keyed = keyed_from_row(row, self.args)
                prepared[index] = build_request(
                    keyed, request_id=request_id_for(), args=self.args, row=self.row
                )
            except MemeServeError as exc:
                out[index] = fail(row, exc)
            except Exception as exc:
                out[index] = fail(row, _internal(f"preparing {row['id']!r}", exc))
        if not prepared:
            return out
        indices = list(prepared)
        requests = [prepared[i].request for i in indices]
        results = self._generate(requests)
        to_store: list[StoreItem] = []
        for index, result in zip(indices, results, strict=True):
            row = rows[index]
            if isinstance(result, BaseException):
                error = result if isinstance(result, MemeServeError) else None
                out[index] = fail(row, error or _internal(f"the engine on {row['id']!r}", result))
                continue
            try:
                analysis, from_model = self._structure(result, prepared[index])
            except Exception as exc:
                out[index] = fail(row, _internal(f"structuring {row['id']!r}", exc))
                continue
            answered = _without_bytes(row)
            answered["analysis"] = json.dumps(analysis, ensure_ascii=False)
            out[index] = answered
            if from_model and row["fingerprint"] is not None and row["scope"] is not None:
                to_store.append(StoreItem(row["fingerprint"], row["scope"], analysis))
        if to_store and self._store is not None and self.args.cache.enabled:
            self._store(to_store)
        return out

    def _generate(self, requests: list[EngineRequest]) -> list[EngineOutput | BaseException]:
        try:
            return self._loop.run_until_complete(self.engine.generate_batch(requests))
        except Exception as exc:  # the engine broke its rule; every item of the batch fails
            return [exc for _ in requests]

    def _structure(self, output: EngineOutput, prepared: Prepared) -> tuple[dict[str, Any], bool]:
        """The Structurer's analysis of ``output`` (as deployments.structurer does)."""
        started = time.perf_counter()
        output = EnginePool.served(output, prepared.request)
        context = prepared.structure_context(prepared.request.request_id)
        structured = structure(output, context, self.structurer)
        analysis = structured.analysis
        analysis.meta.timings_ms.structure = round((time.perf_counter() - started) * 1000.0, 2)
        return analysis.model_dump(mode="json"), structured.from_model


def _without_bytes(row: WorkRow) -> WorkRow:
    copy = row.copy()
    copy["data"] = None
    return copy


def finish(
    row: WorkRow,
    *,
    model: str,
    policy: PolicyArgs,
    policy_name: str = DEFAULT_POLICY,
    scanned_at: str | None = None,
) -> ScanRow:
    """Stage 4: the output row; an analysis judged by ``policy`` (risk level and action)."""
    when = scanned_at or utc_now()
    if row["status"] == 200 and row["analysis"] is not None:
        try:
            analysis = decide(json.loads(row["analysis"]), policy_name, policy)
            match = row["cache_match"]
            return analysed_row(
                item_id=row["id"],
                path=row["path"],
                analysis=analysis,
                cache_match="exact" if match == "exact" else "near" if match == "near" else None,
                scanned_at=when,
            )
        except Exception as exc:
            row = fail(row, _internal(f"judging {row['id']!r}", exc))
    if row["status"] == 200:  # no answer and no error: a stage dropped it
        row = fail(row, _internal(f"scanning {row['id']!r}", RuntimeError("no answer")))
    return error_row(
        item_id=row["id"],
        path=row["path"],
        status=row["status"],
        code=row["error_code"] or ClientError.code,
        message=row["error_message"] or "",
        model=model,
        scanned_at=when,
    )
