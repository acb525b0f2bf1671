"""The bare-Serve anchor of ``make bench``: Ray Serve's floor for a cache hit.

One ``@serve.deployment`` with a FastAPI ingress and nothing else: ``POST
/v1/memes/analyze`` reads the multipart ``image`` (and ``text``) with python-multipart as
our Ingress does, hashes the bytes as the library's upload key does
(:func:`exact_key`: blake2b-128, as ``serve_app.library.store.upload_key``), looks the
key up in a dict and returns the stored answer. The answers are real analyses captured
from the service, so the response sizes match. No tracing, no access log, no other hop.

:func:`anchor_document` is the Serve config that :func:`loadtest.harness.inprocess.
serve_in_process` deploys: its own application name, a fractional CPU, a free port.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class
# on the ingress methods, or it takes `request` for a query parameter.
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application

from serve_app.config.check import REPLICA_LOOP_ENV

logger = logging.getLogger(__name__)

APP_NAME = "bare_anchor"
ANALYZE = "/v1/memes/analyze"


def exact_key(data: bytes, text: str | None) -> str:
    """The byte-identical key: blake2b-128 of the upload, then the request's text."""
    return f"{hashlib.blake2b(data, digest_size=16).hexdigest()}:{text or ''}"


def stored_answers(pairs: list[tuple[bytes, str | None, dict[str, Any]]]) -> dict[str, str]:
    """{exact key: the answer's JSON text} for (upload, text, answer) triples."""
    return {
        exact_key(data, text): json.dumps(answer, separators=(",", ":"))
        for data, text, answer in pairs
    }


api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=8,
    logging_config={"enable_access_log": False, "log_level": "WARNING"},
)
@serve.ingress(api)
class BareAnchor:
    """Parse the upload, hash it, answer from a dict."""

    def __init__(self, answers_path: str) -> None:
        raw = json.loads(Path(answers_path).read_text("utf-8"))
        self._answers: dict[str, str] = dict(raw)

    @api.get("/readyz")
    async def readyz(self) -> dict[str, str]:
        return {"status": "ready"}

    @api.post(ANALYZE)
    async def analyze(self, request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=8)
        try:
            image = form.get("image")
            if image is None or isinstance(image, str):
                return JSONResponse({"error": "image is required"}, status_code=400)
            data = await image.read()
            text = form.get("text")
            key = exact_key(data, text if isinstance(text, str) else None)
        finally:
            await form.close()
        answer = self._answers.get(key)
        if answer is None:
            return JSONResponse({"error": "not stored"}, status_code=404)
        return Response(answer, media_type="application/json")


def build(args: dict[str, Any]) -> Application:
    """The application; ``args["answers_path"]`` is the JSON file of :func:`stored_answers`."""
    return BareAnchor.bind(str(args["answers_path"]))  # type: ignore[attr-defined]


def anchor_document(answers_path: Path) -> dict[str, Any]:
    """The Serve config document of the anchor (one application, route prefix ``/``),
    under the Serve settings the shipped profiles give their replicas, so that the ratio
    compares our code with Serve's floor and not two modes of Serve."""
    return {
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "loadtest.bare_serve:build",
                "args": {"answers_path": str(answers_path)},
                "runtime_env": {"env_vars": dict(REPLICA_LOOP_ENV)},
            }
        ]
    }
