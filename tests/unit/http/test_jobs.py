"""The Ingress's jobs (serve_app.http.jobs) on the memory store with a real fake service."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest

from serve_app.config.models import AppArgs
from serve_app.errors import SchemaError, ServiceUnavailable, TooManyRequests
from serve_app.http.jobs import Jobs, callback_secrets
from serve_app.http.wire import JobRequest
from serve_app.jobs.signing import SIGNATURE_HEADER, verify
from serve_app.jobs.store import MemoryJobStore
from tests.support.receiver import running_receiver
from tests.support.waiting import until


class FakeScenes:
    def policy(self, name: str | None) -> tuple[str, Any]:
        if name not in (None, "default", "support"):
            raise SchemaError(f"unknown policy {name!r}")
        return name or "default", None


class FakeService:
    """Answers like IngressService.analyze; sheds the first ``shed`` calls with a 503."""

    def __init__(self, shed: int = 0) -> None:
        self.scenes = FakeScenes()
        self.shed = shed
        self.calls: list[tuple[bytes, str | None, str, str | None]] = []

    async def analyze(
        self,
        data: bytes,
        text: str | None,
        request_id: str,
        started: float,
        timeout: float,
        policy: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append((data, text, request_id, policy))
        if self.shed > 0:
            self.shed -= 1
            raise ServiceUnavailable("shedding", retry_after_s=0.05)
        if data == b"bad":
            raise SchemaError("not an image")
        await asyncio.sleep(0)
        return {"request_id": request_id, "echo": data.decode(), "policy": policy}


def _args(**jobs: Any) -> AppArgs:
    base = {"workers": 2, "poll_s": 0.01, "callback_backoff_s": 0.05}
    return AppArgs.model_validate({"jobs": {**base, **jobs}})


def _request(*payloads: bytes, **extra: Any) -> JobRequest:
    items = [
        {"id": f"i{n}", "image_base64": base64.b64encode(p).decode()}
        for n, p in enumerate(payloads)
    ]
    return JobRequest.model_validate({"items": items, **extra})


def test_items_run_through_the_service_and_results_keep_order() -> None:
    async def scenario() -> dict[str, Any]:
        service = FakeService(shed=2)
        jobs = Jobs(_args(), service, MemoryJobStore())
        view = await jobs.submit(_request(b"a", b"bad", b"c", policy="support"), "web")
        assert view["state"] == "queued" and view["location"] == f"/v1/jobs/{view['id']}"
        try:
            await until(lambda: jobs.store.get(view["id"]).state == "done")  # type: ignore[union-attr]
        finally:
            await jobs.stop()
        # Shed items went back to the store and were analysed again, not failed.
        assert len(service.calls) == 5
        assert {call[3] for call in service.calls} == {"support"}
        return await jobs.view(view["id"], "web", offset=0, limit=10)

    done = asyncio.run(scenario())
    assert [r["id"] for r in done["results"]] == ["i0", "i1", "i2"]
    assert [r["status"] for r in done["results"]] == [200, 422, 200]
    assert done["results"][0]["result"]["echo"] == "a"
    assert done["results"][1]["error"]["code"] == "invalid_request"
    assert (done["total"], done["done"], done["failed"]) == (3, 3, 1)


def test_submit_refuses_what_cannot_run() -> None:
    jobs = Jobs(_args(max_items=2, max_open_jobs=1, workers=0), FakeService(), MemoryJobStore())

    def submit(request: JobRequest, owner: str = "web") -> dict[str, Any]:
        return asyncio.run(jobs.submit(request, owner))

    with pytest.raises(SchemaError, match="at most 2"):
        submit(_request(b"a", b"b", b"c"))
    with pytest.raises(SchemaError, match="unknown policy"):
        submit(_request(b"a", policy="nope"))
    with pytest.raises(SchemaError, match="unique"):
        submit(
            JobRequest.model_validate(
                {
                    "items": [
                        {"id": "x", "image_base64": "YQ=="},
                        {"id": "x", "image_base64": "YQ=="},
                    ]
                }
            )
        )
    with pytest.raises(SchemaError, match="callback_url"):
        submit(_request(b"a", callback_url="http://169.254.169.254/"))

    async def open_one() -> None:
        await jobs.submit(_request(b"a"), "web")
        with pytest.raises(TooManyRequests):
            await jobs.submit(_request(b"a"), "web")
        await jobs.submit(_request(b"a"), "other")  # per key

    asyncio.run(open_one())


def test_a_finished_job_is_called_back_signed_and_retried() -> None:
    environ = {"SECRETS": "web=topsecret, other=x"}
    assert callback_secrets(_args(callback_secrets_env="SECRETS").jobs, environ) == {
        "web": "topsecret",
        "other": "x",
    }

    async def scenario(url: str) -> dict[str, Any]:
        args = _args(callback_hosts=["127.0.0.1"], callback_attempts=3)
        jobs = Jobs(args, FakeService(), MemoryJobStore())
        jobs._secrets = {"web": "topsecret"}  # as callback_secrets would read them
        view = await jobs.submit(_request(b"a", callback_url=f"{url}/hook"), "web")
        try:
            await until(
                lambda: (
                    jobs.store.get(view["id"]).callback.state  # type: ignore[union-attr]
                    in ("delivered", "failed")
                )
            )
        finally:
            await jobs.stop()
        return await jobs.view(view["id"], "web", offset=0, limit=0)

    with running_receiver(fail_first=1) as receiver:
        view = asyncio.run(scenario(receiver.url))
        posts = receiver.wait_for(2, 5)
    assert view["callback"]["state"] == "delivered" and view["callback"]["attempts"] == 2
    assert len(posts) == 2 and posts[-1].path == "/hook"
    assert verify(posts[-1].headers[SIGNATURE_HEADER], posts[-1].body, ["topsecret"], time.time())


def test_a_key_without_a_secret_cannot_ask_for_callbacks() -> None:
    jobs = Jobs(_args(callback_hosts=["127.0.0.1"], workers=0), FakeService(), MemoryJobStore())
    with pytest.raises(SchemaError, match="secret"):
        asyncio.run(jobs.submit(_request(b"a", callback_url="http://127.0.0.1:9/x"), "web"))


def test_another_key_sees_no_job() -> None:
    from serve_app.errors import NotFound

    jobs = Jobs(_args(workers=0), FakeService(), MemoryJobStore())

    async def scenario() -> None:
        view = await jobs.submit(_request(b"a"), "web")
        with pytest.raises(NotFound):
            await jobs.view(view["id"], "other", offset=0, limit=0)
        shown = await jobs.view(view["id"], "other", offset=0, limit=0, admin=True)
        assert shown["id"] == view["id"]
        cancelled = await jobs.cancel(view["id"], "web")
        assert cancelled["state"] == "cancelled"

    asyncio.run(scenario())
