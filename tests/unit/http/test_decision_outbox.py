"""The Ingress's decisions reach the FingerprintStore in batches, in order, none lost to a
store that fails for a while, and the review routes see this replica's decisions at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import serve_app.http.scenes as scenes_module
from serve_app.config.models import ScenesArgs
from serve_app.http.scenes import DecisionOutbox, Scenes
from tests.support.waiting import until


class Calls:
    """``store.method.remote(...)`` awaited: runs ``produce`` and remembers the arguments."""

    def __init__(self, produce: Any) -> None:
        self.produce = produce
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args or (kwargs,))

        async def answer() -> Any:
            return self.produce(*args, **kwargs)

        return answer()


class Store:
    def __init__(self) -> None:
        self.kept: list[str] = []
        self.failing = False
        self.record_decisions = Calls(self._record)
        self.review = Calls(self._review)
        self.decisions = Calls(lambda limit, actions: [{"request_id": r} for r in self.kept])

    def _record(self, batch: list[tuple[str, dict[str, Any], bytes | None]]) -> int:
        if self.failing:
            raise ConnectionError("store restarting")
        self.kept.extend(request_id for request_id, _, _ in batch)
        return len(batch)

    def _review(self, **target: Any) -> dict[str, Any]:
        if target.get("request_id") not in self.kept:
            return {"error": "no decision", "status": 404}
        return {"review": {"request_id": target["request_id"]}}


def decision(request_id: str) -> tuple[str, dict[str, Any], None]:
    return (request_id, {"action": "allow"}, None)


def test_decisions_go_in_one_call_per_period_and_in_order() -> None:
    store = Store()

    async def scenario() -> DecisionOutbox:
        outbox = DecisionOutbox(store, period_s=0.05)
        for index in range(20):
            outbox.add(decision(f"r{index}"))
        assert store.kept == []  # adding never waits for the store
        await asyncio.sleep(0.15)
        outbox.add(decision("r20"))
        await asyncio.sleep(0.15)
        await outbox.stop()
        return outbox

    outbox = asyncio.run(scenario())
    assert store.kept == [f"r{index}" for index in range(21)]
    assert len(store.record_decisions.calls) == 2
    assert outbox.figures() == {"pending": 0, "sent": 21, "batches": 2, "dropped": 0}


def test_a_full_outbox_sends_before_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes_module, "OUTBOX_FULL", 4)
    store = Store()

    async def scenario() -> None:
        outbox = DecisionOutbox(store, period_s=60)
        for index in range(4):
            outbox.add(decision(f"r{index}"))
        await asyncio.sleep(0.05)
        assert store.kept == ["r0", "r1", "r2", "r3"]
        await outbox.stop()

    asyncio.run(scenario())


def test_a_failing_store_keeps_the_batch_until_it_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scenes_module, "OUTBOX_HELD", 3)
    store = Store()
    store.failing = True

    async def scenario() -> DecisionOutbox:
        outbox = DecisionOutbox(store, period_s=0.02)
        outbox.add(decision("a"))
        outbox.add(decision("b"))
        await asyncio.sleep(0.1)  # several failed tries: still held
        assert outbox.figures()["pending"] == 2 and store.kept == []
        outbox.add(decision("c"))
        outbox.add(decision("d"))  # beyond what is held: the oldest goes
        with pytest.raises(ConnectionError):
            await outbox.flush()
        store.failing = False
        await asyncio.sleep(0.1)
        await outbox.stop()
        return outbox

    outbox = asyncio.run(scenario())
    assert store.kept == ["b", "c", "d"]
    assert outbox.figures()["dropped"] == 1


def test_a_store_that_stays_down_gets_fewer_tries_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scenes_module, "OUTBOX_FULL", 2)
    store = Store()
    store.failing = True

    async def scenario() -> DecisionOutbox:
        outbox = DecisionOutbox(store, period_s=0.25)
        outbox.add(decision("r0"))
        await until(lambda: outbox.failed_tries == 1)
        # Backing off (the next try 0.5 s away): a full outbox, again and again, does not
        # hurry it; without the backoff each of these 20 would send at once.
        for index in range(1, 40):
            outbox.add(decision(f"r{index}"))
            for _ in range(5):
                await asyncio.sleep(0)
        assert len(store.record_decisions.calls) == 1
        monkeypatch.setattr(scenes_module, "OUTBOX_BACKOFF_MAX_S", 0.02)
        await until(lambda: outbox.failed_tries >= 4)
        store.failing = False
        await until(lambda: outbox.figures()["pending"] == 0)
        assert outbox.failed_tries == 0
        await outbox.stop()
        return outbox

    with caplog.at_level("INFO", logger=scenes_module.logger.name):
        outbox = asyncio.run(scenario())
    assert store.kept == [f"r{index}" for index in range(40)]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("recorded again" in r.getMessage() for r in caplog.records)
    assert outbox.figures()["dropped"] == 0


def test_reviews_and_decision_reads_see_this_replicas_decisions_at_once() -> None:
    store = Store()
    scenes = Scenes(ScenesArgs(decisions_flush_s=10), store, preprocessor=None)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        scenes.outbox.add(decision("mine"))
        reviewed = await scenes.accept("mine", "moderator", None)
        listed = await scenes.decisions(10, None)
        await scenes.stop()
        return reviewed, listed

    reviewed, listed = asyncio.run(scenario())
    assert reviewed == {"review": {"request_id": "mine"}}
    assert listed == [{"request_id": "mine"}]


def test_a_review_waits_for_a_decision_another_replica_is_about_to_send() -> None:
    store = Store()
    scenes = Scenes(ScenesArgs(decisions_flush_s=0.05), store, preprocessor=None)

    async def scenario() -> dict[str, Any]:
        async def other_replica_sends() -> None:
            await asyncio.sleep(0.05)
            store.kept.append("theirs")

        sending = asyncio.ensure_future(other_replica_sends())
        reviewed = await scenes.accept("theirs", "moderator", None)
        await sending
        return reviewed

    assert asyncio.run(scenario()) == {"review": {"request_id": "theirs"}}
    assert len(store.review.calls) == 2


def test_an_unknown_request_id_is_still_a_404_after_the_wait() -> None:
    from serve_app.errors import NotFound

    store = Store()
    scenes = Scenes(ScenesArgs(decisions_flush_s=0.01), store, preprocessor=None)
    with pytest.raises(NotFound):
        asyncio.run(scenes.accept("never", "moderator", None))
    assert len(store.review.calls) == 2
