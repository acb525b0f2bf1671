"""A job outlives the app: submitted to one that does no job work, finished by the next.

The first app has ``jobs.workers: 0`` (nothing is analysed), so its open jobs are also
what the per-key limit counts; the second, on the same SQLite file, resumes them.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.corpus import MemeSpec, meme_bytes
from tests.support.app import start_app


def _args(directory: Path, workers: int) -> dict[str, Any]:
    return {
        "cache": {"sqlite_path": str(directory / "library.db")},
        "jobs": {
            "sqlite_path": str(directory / "jobs.db"),
            "workers": workers,
            "max_open_jobs": 2,
            "poll_s": 0.1,
        },
    }


def _job(count: int, start: int) -> dict[str, Any]:
    items = [
        {
            "id": f"i{n}",
            "image_base64": base64.b64encode(
                meme_bytes(MemeSpec(template=start + n, top="重启", bottom=str(n)))
            ).decode(),
        }
        for n in range(count)
    ]
    return {"items": items}


def test_unfinished_jobs_resume_after_a_restart_and_open_jobs_are_limited() -> None:
    directory = Path(tempfile.mkdtemp(prefix="memeserve-jobs-"))
    for url in start_app(_args(directory, workers=0), {"enabled": False}):
        with httpx.Client(base_url=url, timeout=60) as client:
            first = client.post("/v1/jobs", json=_job(5, 80))
            second = client.post("/v1/jobs", json=_job(2, 90))
            assert first.status_code == second.status_code == 202
            third = client.post("/v1/jobs", json=_job(1, 95))
            assert third.status_code == 429, third.text
            assert "retry-after" in third.headers
            locations = [first.headers["location"], second.headers["location"]]
            assert client.get(locations[0]).json()["state"] == "queued"
    for url in start_app(_args(directory, workers=2), {"enabled": False}):
        with httpx.Client(base_url=url, timeout=60) as client:
            for location, total in zip(locations, (5, 2), strict=True):
                deadline = time.monotonic() + 120
                view = client.get(location, params={"limit": 10}).json()
                while view["state"] != "done":
                    assert time.monotonic() < deadline, view
                    time.sleep(0.2)
                    view = client.get(location, params={"limit": 10}).json()
                assert view["total"] == view["done"] == total
                assert [r["id"] for r in view["results"]] == [f"i{n}" for n in range(total)]
                assert all(r["status"] == 200 for r in view["results"])
            # With both finished, the key may open jobs again.
            assert client.post("/v1/jobs", json=_job(1, 96)).status_code == 202
