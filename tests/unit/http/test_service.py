"""The ingress's request flow over handle-shaped fakes: what reaches the other deployments.

The fakes implement the part of ``DeploymentHandle`` the flow uses (``.method.remote()``
returning an awaitable with ``cancel()``, ``.options(stream=True)``), so these tests see
exactly which downstream calls a request made and which were cancelled.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image

from serve_app.config.models import AppArgs, ControllerUserConfig
from serve_app.http.service import IngressService
from serve_app.library.store import LibraryHit
from serve_app.load.degradation import LevelState
from serve_app.media.fingerprint import Fingerprint, Fingerprinter
from serve_app.pipeline.prepare import Prepared, build_request, key_upload
from serve_app.scenes.lookup import Looked
from tests.support.memes import encoded

ARGS = AppArgs.model_validate({"cache": {"enabled": False}})
IMAGE = encoded(Image.new("RGB", (64, 64), (200, 40, 40)), "PNG")


class Call:
    """One unary call: awaitable once; ``cancel()`` recorded; may never finish."""

    def __init__(self, produce: Callable[[], Any] | None) -> None:
        self._produce = produce
        self.cancelled = False
        self.started = asyncio.Event()

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self) -> Any:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        self.started.set()
        if self._produce is None:
            await asyncio.Event().wait()  # a replica that is still working
        assert self._produce is not None
        return self._produce()


class Method:
    """``handle.method``: ``remote()`` makes a :class:`Call` and remembers it."""

    def __init__(self, produce: Callable[..., Any] | None) -> None:
        self._produce = produce
        self.calls: list[Call] = []

    def remote(self, *args: Any) -> Call:
        produce = self._produce
        call = Call(None if produce is None else (lambda: produce(*args)))
        self.calls.append(call)
        return call


class Deltas:
    """A streaming call: the pool's first item, then text pieces; ``cancel()`` recorded."""

    def __init__(self, pieces: list[Any]) -> None:
        self._pieces = list(pieces)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if not self._pieces:
            raise StopAsyncIteration
        return self._pieces.pop(0)


class StreamingPool:
    """The VLM pool's handle: ``options(stream=True).stream.remote()`` gives :class:`Deltas`."""

    def __init__(self, pieces: list[Any]) -> None:
        self.streams: list[Deltas] = []
        self._pieces = pieces
        self.stream = self
        self.generate = Method(None)
        self.info = Method(lambda: {"kind": "lite", "model": "m"})

    def options(self, **_: Any) -> StreamingPool:
        return self

    def remote(self, *_: Any) -> Deltas:
        deltas = Deltas(self._pieces)
        self.streams.append(deltas)
        return deltas


def prepared_request(data: bytes, text: str | None, request_id: str, deadline: float) -> Prepared:
    keyed = key_upload(data, text, args=ARGS, fingerprinter=Fingerprinter())
    row = ControllerUserConfig().level(0)
    return build_request(keyed, request_id=request_id, args=ARGS, row=row, deadline=deadline)


class Graph:
    """Fakes for every handle the service holds."""

    def __init__(self, *, prepare_finishes: bool, structure_finishes: bool) -> None:
        served = {
            "engine": "lite",
            "model": "m",
            "level": 0,
            "explanation_max_chars": 200,
            "analysed_size": None,
        }
        self.preprocessor = type("P", (), {})()
        self.preprocessor.prepare = Method(
            (lambda data, text, rid, deadline, _upload: prepared_request(data, text, rid, deadline))
            if prepare_finishes
            else None
        )
        self.vlm_pool = StreamingPool([served, '{"emotion": "sarcasm", ', '"explanation": "x"}'])
        self.structurer = type("S", (), {})()
        self.structurer.structure = Method(None if not structure_finishes else lambda *_: {})
        self.store = type("F", (), {})()
        self.store.stats = Method(lambda: {})
        self.store.record_decisions = Method(len)
        self.controller = type("C", (), {})()
        self.controller.report = Method(lambda *_: LevelState.initial())
        self.controller.status = Method(lambda: {"level": 0})

    def service(self, args: AppArgs = ARGS) -> IngressService:
        return IngressService(
            args,
            preprocessor=self.preprocessor,
            vlm_pool=self.vlm_pool,
            structurer=self.structurer,
            store=self.store,
            controller=self.controller,
            source="test",
            replicas=dict,
        )


async def _leave_after(events: AsyncIterator[bytes], waiting_on: Method) -> list[bytes]:
    """Read events until ``waiting_on`` has a call in progress, then leave (cancel)."""
    seen: list[bytes] = []

    async def read() -> None:
        async for event in events:
            seen.append(event)

    task = asyncio.ensure_future(read())
    while not (waiting_on.calls and waiting_on.calls[-1].started.is_set()):
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return seen


def test_a_client_leaving_the_stream_during_preprocessing_cancels_that_call() -> None:
    graph = Graph(prepare_finishes=False, structure_finishes=True)
    service = graph.service()

    async def scenario() -> list[bytes]:
        events = service.events(IMAGE, None, "r1", 0.0, time.time() + 30.0)
        return await _leave_after(events, graph.preprocessor.prepare)

    seen = asyncio.run(scenario())
    assert seen[0].startswith(b"event: accepted")
    assert [call.cancelled for call in graph.preprocessor.prepare.calls] == [True]
    assert graph.structurer.structure.calls == []
    assert service.in_flight == 0


def test_a_client_leaving_the_stream_during_structuring_cancels_that_call() -> None:
    graph = Graph(prepare_finishes=True, structure_finishes=False)
    service = graph.service()

    async def scenario() -> list[bytes]:
        events = service.events(IMAGE, None, "r2", 0.0, time.time() + 30.0)
        return await _leave_after(events, graph.structurer.structure)

    seen = asyncio.run(scenario())
    assert any(event.startswith(b"event: delta") for event in seen)
    assert [call.cancelled for call in graph.structurer.structure.calls] == [True]
    assert all(stream.cancelled for stream in graph.vlm_pool.streams)
    assert service.in_flight == 0


def test_a_client_leaving_the_plain_route_cancels_the_pending_call() -> None:
    graph = Graph(prepare_finishes=False, structure_finishes=True)
    service = graph.service()

    async def scenario() -> None:
        task = asyncio.ensure_future(service.analyze(IMAGE, None, "r3", 0.0, 30.0))
        while not graph.preprocessor.prepare.calls:
            await asyncio.sleep(0.005)
        await graph.preprocessor.prepare.calls[0].started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [call.cancelled for call in graph.preprocessor.prepare.calls] == [True]


def test_a_full_queue_downstream_leaves_the_flow_as_a_retryable_service_unavailable() -> None:
    """Job workers and batch items call the flow directly: they must see our error."""
    from ray.serve.exceptions import BackPressureError

    from serve_app.errors import ServiceUnavailable

    def full(*_: Any) -> Any:
        raise BackPressureError(num_queued_requests=2, max_queued_requests=1, retry_after_s=3)

    graph = Graph(prepare_finishes=True, structure_finishes=True)
    graph.structurer.structure = Method(full)
    service = graph.service()
    with pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(service.analyze(IMAGE, None, "r4", 0.0, 30.0))
    assert refused.value.retry_after_s == 3
    assert service.in_flight == 0


def test_with_admission_on_a_request_finding_no_place_waits_its_budget_then_is_refused() -> None:
    from serve_app.config.models import AdmissionArgs
    from serve_app.errors import ServiceUnavailable

    graph = Graph(prepare_finishes=False, structure_finishes=True)  # the first holds its place
    one_place = LevelState(
        level=0,
        row=ControllerUserConfig().level(0),
        period_s=60.0,
        admit=1,
        admission=AdmissionArgs(max_wait_s=0.2, retry_after_s=2),
    )
    graph.controller.report = Method(lambda *_: one_place)
    service = graph.service()

    async def scenario() -> None:
        await service._levels.refresh()
        first = asyncio.ensure_future(service.analyze(IMAGE, None, "r5", 0.0, 30.0))
        while not graph.preprocessor.prepare.calls:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no place in the engine path") as refused:
            await service.analyze(IMAGE, None, "r6", 0.0, 30.0)
        assert 0.15 < time.monotonic() - started < 2.0
        assert refused.value.retry_after_s == 2
        status = await service.status()
        assert status["admission"]["inside"] == 1 and status["admission"]["refused"] == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert status["admission"]["admission"] == "on"

    asyncio.run(scenario())
    assert len(graph.preprocessor.prepare.calls) == 1  # the refused one never reached it


def test_status_and_readiness_read_the_pools_last_report_when_the_pool_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A VLM replica holding max_ongoing_requests answers nothing until one ends: status
    and readiness then show what it last reported to the controller, and drop the ask."""
    import serve_app.http.service as service_module

    monkeypatch.setattr(service_module, "ENGINE_ASK_S", 0.05)
    graph = Graph(prepare_finishes=True, structure_finishes=True)
    graph.vlm_pool.info = Method(None)  # queued behind the work it would report
    reported = {"kind": "vllm", "model": "m", "ready": True, "waiting": 3, "reported_s_ago": 0.1}
    graph.controller.engine = Method(lambda: reported)
    graph.controller.state = Method(LevelState.initial)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        service = graph.service()
        return await service.status(), await service.ready()

    status, ready = asyncio.run(scenario())
    assert status["engine"] == reported
    assert ready == {"status": "ready", "engine": "vllm", "model": "m"}
    assert [call.cancelled for call in graph.vlm_pool.info.calls] == [True, True]


def test_status_says_why_when_neither_the_pool_nor_a_report_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import serve_app.http.service as service_module
    from serve_app.errors import ServiceUnavailable

    monkeypatch.setattr(service_module, "ENGINE_ASK_S", 0.05)
    graph = Graph(prepare_finishes=True, structure_finishes=True)
    graph.vlm_pool.info = Method(None)
    graph.controller.engine = Method(lambda: None)  # no fresh report (a replica just started)
    graph.controller.state = Method(LevelState.initial)
    dead = {"kind": "vllm", "model": "m", "ready": False, "error": "vllm engine is dead"}

    async def scenario() -> tuple[dict[str, Any], str, str]:
        service = graph.service()
        status = await service.status()
        with pytest.raises(ServiceUnavailable) as silent:
            await service.ready()
        graph.controller.engine = Method(lambda: dead)
        with pytest.raises(ServiceUnavailable) as unusable:
            await service.ready()
        return status, str(silent.value), str(unusable.value)

    status, silent, unusable = asyncio.run(scenario())
    assert status["engine"]["ready"] is False and status["engine"]["error"] == "TimeoutError"
    assert "did not answer in time" in silent
    assert "vllm engine is dead" in unusable


class Store:
    """The FingerprintStore's handle for resent bytes: lookups, epoch, decisions, writes."""

    def __init__(self, analysis: dict[str, Any], fingerprint: Fingerprint) -> None:
        self.epoch_now = "store-1:0"
        self.hit = LibraryHit(analysis, 0, "exact", 0, fingerprint)
        self.lookups: list[str] = []
        self.decisions: list[tuple[str, bytes | None]] = []
        self.lookup_upload = Method(self._lookup)
        self.answered: dict[str, int] = {}
        self.epoch = Method(self._epoch)
        self.record_decisions = Method(self._record)
        self.scenes_write = Method(self._write)
        self.stats = Method(self._stats)

    def _epoch(self, answered: dict[str, int]) -> str:
        for match, count in answered.items():
            self.answered[match] = self.answered.get(match, 0) + count
        return self.epoch_now

    def _stats(self, answered: dict[str, int]) -> dict[str, Any]:
        self._epoch(answered)
        return {"upload_hits": sum(self.answered.values())}

    def _lookup(self, upload: str, level: int, request_id: str) -> Looked:
        self.lookups.append(request_id)
        return Looked(self.hit, epoch=self.epoch_now)

    def _record(self, batch: list[tuple[str, dict[str, Any], bytes | None]]) -> int:
        self.decisions.extend((request_id, seen) for request_id, _, seen in batch)
        return len(batch)

    def _write(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self.epoch_now = "store-1:1"
        return {"seq": 1}


def test_resent_bytes_are_answered_from_the_ingress_until_the_store_changes() -> None:
    """The hot path: the second identical upload needs no hop to the store, its decision
    still reaches the store with the image; a write through this replica, or a new epoch
    heard from the store, sends the next one back to the store."""
    from tests.unit.bulk.fakes import an_analysis

    args = AppArgs.model_validate({"cache": {"enabled": True, "hot_sync_s": 0.01}})
    fingerprint = Fingerprinter().fingerprint(Image.open(io.BytesIO(IMAGE)).convert("RGB"))
    graph = Graph(prepare_finishes=True, structure_finishes=True)
    store = Store(an_analysis(), fingerprint)
    graph.store = store

    async def scenario() -> list[dict[str, Any]]:
        service = graph.service(args)
        answers = []

        async def one(request_id: str) -> None:
            answers.append(await service.analyze(IMAGE, None, request_id, time.perf_counter(), 5))

        await one("r0")  # the store answers; not kept: no epoch heard yet
        await asyncio.sleep(0.05)
        await one("r1")  # the store answers, at the epoch heard: kept
        await one("r2")
        await one("r3")
        assert store.lookups == ["r0", "r1"]
        await service.scenes.write("terms.add", {"list": "x", "terms": ["y"], "action": "tag"})
        await one("r4")  # this replica's own write: straight back to the store
        await asyncio.sleep(0.05)
        await one("r5")  # kept again at the new epoch
        await one("r6")
        assert store.lookups == ["r0", "r1", "r4", "r5"]
        store.epoch_now = "store-1:2"  # a write through another replica
        await asyncio.sleep(0.05)
        await one("r7")
        assert store.lookups == ["r0", "r1", "r4", "r5", "r7"]
        cache = (await service.status())["cache"]
        assert cache["hot"]["hits"] == 3 and cache["hot"]["epoch"] == "store-1:2"
        # Every hot answer is in the store's figures by the time status shows them.
        assert cache["upload_hits"] == 3 and store.answered == {"exact": 3}
        await service.scenes.outbox.flush()
        return answers

    answers = asyncio.run(scenario())
    assert [a["meta"]["cache"] for a in answers] == [
        {"hit": True, "match": "exact", "distance": 0}
    ] * 8
    # Decisions of hot answers carry the image (the store saw no lookup for them).
    seen = dict(store.decisions)
    assert seen["r2"] == seen["r3"] == seen["r6"] == fingerprint.to_bytes()
    assert {seen[r] for r in ("r0", "r1", "r4", "r5", "r7")} == {None}
