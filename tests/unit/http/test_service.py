"""The ingress's request flow over handle-shaped fakes: what reaches the other deployments.

The fakes implement the part of ``DeploymentHandle`` the flow uses (``.method.remote()``
returning an awaitable with ``cancel()``, ``.options(stream=True)``), so these tests see
exactly which downstream calls a request made and which were cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image

from serve_app.config.models import AppArgs, ControllerUserConfig
from serve_app.http.service import IngressService
from serve_app.load.degradation import LevelState
from serve_app.media.fingerprint import Fingerprinter
from serve_app.pipeline.prepare import Prepared, build_request, key_upload
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
        self.controller = type("C", (), {})()
        self.controller.report = Method(lambda *_: LevelState.initial())
        self.controller.status = Method(lambda: {"level": 0})

    def service(self) -> IngressService:
        return IngressService(
            ARGS,
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
