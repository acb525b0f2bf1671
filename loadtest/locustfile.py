"""Locust load test of memeserve: the traffic mixes of a web tier, and load shapes.

Run it through ``python -m loadtest.run_loadtest`` (``make loadtest``), which starts
the service, polls ``/v1/status`` and writes the report; or by hand::

    MEMESERVE_SHAPE=step locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000

User classes (one per traffic mix; ``weight`` sets their share of the users):

* :class:`FreshMemes` — new memes (a seeded corpus per user), multipart ``/v1/memes/analyze``.
* :class:`TransformedRepeats` — memes it sent once, re-sent re-encoded, rescaled, cropped,
  padded or watermarked (``loadtest/transforms.py``): answered by the fingerprint library.
* :class:`ContextText` — memes with a comment or danmaku as ``text`` context.
* :class:`BatchCalls` — ``/v1/memes/analyze/batch`` with 2-4 items.
* :class:`StreamCalls` — ``/v1/memes/analyze/stream``; the SSE events are read and checked.

Every 200 body is validated against the wire schema
(``serve_app.understanding.analysis``); a body that
does not validate is a failure. 429 and 503 are the service shedding load: they are
failures named by their status (``shed 429`` / ``shed 503``) so Locust's failure table
counts them by status, and one without ``Retry-After`` is a separate failure
(``... without Retry-After``). Requests are named by route so statistics group by route.
Image bytes are drawn when a user starts (drawing is CPU work the service needs too).

Choosing the load shape
-----------------------
Locust runs the first non-abstract ``LoadTestShape`` subclass it finds in the locustfile.
Every shape here is declared with ``abstract = True`` except the one that the environment
variable ``MEMESERVE_SHAPE`` names (``step``, ``spike``, ``soak``; ``none`` or unset: no
shape, so ``--users/--spawn-rate/--run-time`` drive the run). A shape's class attributes
are its settings; ``MEMESERVE_SHAPE_PARAMS`` (a JSON object, e.g. ``{"step_users": 2}``)
overrides them. ``MEMESERVE_SEED`` seeds the corpora (default 7). This works headless and
needs no ``--class-picker``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
from typing import Any, ClassVar

from locust import HttpUser, LoadTestShape, between, task
from pydantic import ValidationError

from loadtest.corpus import CAPTIONS, corpus, draw_meme, encode, meme_bytes
from loadtest.harness.http import ANALYZE, BATCH, SHED_STATUSES, STREAM
from loadtest.transforms import INFORMATIVE_TRANSFORMS, TRANSFORMS, apply
from serve_app.http.wire import BatchResponse
from serve_app.understanding.analysis import Analysis

SHAPES = ("step", "spike", "soak")

SHAPE = os.environ.get("MEMESERVE_SHAPE", "none").strip().lower() or "none"
if SHAPE not in (*SHAPES, "none"):
    raise ValueError(f"MEMESERVE_SHAPE={SHAPE!r}: expected one of step, spike, soak, none")
SEED = int(os.environ.get("MEMESERVE_SEED", "7"))
CORPUS_SIZE = 20
REPEAT_TRANSFORMS = tuple(name for name in TRANSFORMS if name not in INFORMATIVE_TRANSFORMS)

# Comment/danmaku-like context: captions plus the decorations viewers add.
_DECORATIONS = (
    "",
    "哈哈哈哈",
    "2333",
    "？？？",
    "+1",
    "前排",
    "。。。",
    "！！",
    " 笑不活了",
    "doge",
)

_user_numbers = itertools.count()


def context_text(rng: random.Random) -> str:
    """A comment or danmaku: a caption with a random decoration, sometimes repeated."""
    text = rng.choice(CAPTIONS) + rng.choice(_DECORATIONS)
    return text * 2 if rng.random() < 0.15 else text


def shed_or_unexpected(response: Any) -> str:
    """The failure message for a non-200 response (shedding named by its status)."""
    status = response.status_code
    if status in SHED_STATUSES:
        if response.headers.get("Retry-After"):
            return f"shed {status}"
        return f"shed {status} without Retry-After"
    return f"HTTP {status}: {response.text[:200]}"


def check_analysis(body: Any) -> str | None:
    """``None`` when ``body`` is a valid :class:`Analysis`, else the failure message."""
    try:
        Analysis.model_validate(body)
    except ValidationError as exc:
        return f"schema: Analysis invalid ({exc.error_count()} errors)"
    return None


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """``(event, data)`` pairs of a ``text/event-stream`` body (data parsed as JSON)."""
    events: list[tuple[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            try:
                events.append((name, json.loads("\n".join(data))))
            except json.JSONDecodeError:
                events.append((name, None))
    return events


def check_stream(events: list[tuple[str, Any]]) -> str | None:
    """``None`` when the events are ``accepted``, ``cache``, ``delta``*, ``result``; else why not.

    A final ``error`` event whose status is 429/503 is reported as shedding.
    """
    names = [name for name, _ in events]
    if len(names) < 2 or names[0] != "accepted":
        return f"stream: bad event order {names[:6]}"
    last, data = events[-1]
    # An error may end the stream at any point after `accepted`: admission refuses before
    # the cache lookup (accepted, error), an engine failure after deltas.
    middle = names[1:-1]
    if last != "error" and (len(names) < 3 or names[1] != "cache"):
        return f"stream: bad event order {names[:6]}"
    if middle and middle[0] != "cache":
        return f"stream: bad event order {names[:6]}"
    if any(name != "delta" for name in middle[1:]):
        return f"stream: unexpected events {middle[1:][:6]}"
    if last == "error":
        status = data.get("status") if isinstance(data, dict) else None
        if status in SHED_STATUSES:
            return f"shed {status}"
        return f"stream: error event {status}"
    if last != "result":
        return f"stream: last event {last!r}"
    return check_analysis(data)


class MemeUser(HttpUser):
    """Common set-up: a per-user RNG and helpers that check and name responses."""

    abstract = True
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        """Seed this user's random choices (distinct per user, reproducible per run)."""
        self.number = next(_user_numbers)
        self.rng = random.Random(f"{SEED}:{type(self).__name__}:{self.number}")

    def analyze(self, data: bytes, filename: str, text: str | None) -> dict[str, Any] | None:
        """Multipart analyze; returns the validated body or ``None`` (failure recorded)."""
        with self.client.post(
            ANALYZE,
            files={"image": (filename, data)},
            data={"text": text} if text else None,
            name=ANALYZE,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(shed_or_unexpected(resp))
                return None
            try:
                body = resp.json()
            except ValueError:
                resp.failure("schema: body is not JSON")
                return None
            problem = check_analysis(body)
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return body


class FreshMemes(MemeUser):
    """New memes, one never sent before per request (JPEG, caption as drawn)."""

    weight = 4
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        """Draw this user's corpus."""
        super().on_start()
        self.specs = iter(corpus(10_000, seed=SEED * 1000 + 100 + self.number))
        self.ready = [self._draw() for _ in range(CORPUS_SIZE)]

    def _draw(self) -> tuple[bytes, str]:
        spec = next(self.specs)
        return meme_bytes(spec, "JPEG", quality=self.rng.randint(70, 92)), spec.top

    @task
    def fresh(self) -> None:
        """POST a meme this user has not sent (drawn on demand once the corpus is used up)."""
        data, _ = self.ready.pop() if self.ready else self._draw()
        self.analyze(data, "meme.jpg", None)


class TransformedRepeats(MemeUser):
    """Memes re-shared in another form: each original once, then transformed copies."""

    weight = 3
    wait_time = between(1.0, 3.0)
    originals_per_user = 5
    copies_per_original = 4

    def on_start(self) -> None:
        """Draw the originals and their transformed copies."""
        super().on_start()
        specs = corpus(self.originals_per_user, seed=SEED * 1000 + 500 + self.number)
        self.originals: list[bytes] = []
        self.copies: list[bytes] = []
        for index, spec in enumerate(specs):
            image = draw_meme(spec)
            self.originals.append(encode(image, "JPEG", quality=88))
            for copy in range(self.copies_per_original):
                name = self.rng.choice(REPEAT_TRANSFORMS)
                copied = apply(name, image, seed=SEED + index * 31 + copy)
                fmt = "PNG" if self.rng.random() < 0.5 else "JPEG"
                self.copies.append(
                    encode(copied, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
                )
        self.rng.shuffle(self.copies)
        self.sent = 0

    @task
    def repeat(self) -> None:
        """The originals first (so the library knows them), then copies round-robin."""
        if self.originals:
            self.analyze(self.originals.pop(), "original.jpg", None)
            return
        data = self.copies[self.sent % len(self.copies)]
        self.sent += 1
        self.analyze(data, "copy.png", None)


class ContextText(MemeUser):
    """Memes posted with a comment or danmaku as context (same image, varying text)."""

    weight = 2
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        """Draw a few memes; the context text varies per request."""
        super().on_start()
        specs = corpus(8, seed=SEED * 1000 + 800 + self.number)
        self.memes = [meme_bytes(spec, "PNG") for spec in specs]

    @task
    def with_context(self) -> None:
        """POST a meme with a caption-based comment as ``text``."""
        self.analyze(self.rng.choice(self.memes), "meme.png", context_text(self.rng))


class BatchCalls(MemeUser):
    """A client analysing several memes per call through the batch route."""

    weight = 1
    wait_time = between(2.0, 4.0)

    def on_start(self) -> None:
        """Draw this user's corpus as base64."""
        super().on_start()
        specs = corpus(CORPUS_SIZE, seed=SEED * 1000 + 300 + self.number)
        self.items = [
            base64.b64encode(meme_bytes(spec, "JPEG", quality=85)).decode("ascii") for spec in specs
        ]

    @task
    def batch(self) -> None:
        """POST 2-4 items; check the response's schema, order and per-item outcomes."""
        count = self.rng.randint(2, 4)
        items = [
            {
                "id": f"u{self.number}-{index}",
                "image_base64": image,
                "text": context_text(self.rng) if self.rng.random() < 0.5 else None,
            }
            for index, image in enumerate(self.rng.sample(self.items, count))
        ]
        with self.client.post(
            BATCH, json={"items": items}, name=BATCH, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(shed_or_unexpected(resp))
                return
            try:
                body = BatchResponse.model_validate(resp.json())
            except (ValueError, ValidationError) as exc:
                resp.failure(f"schema: BatchResponse invalid ({type(exc).__name__})")
                return
            if [item.id for item in body.items] != [item["id"] for item in items]:
                resp.failure("schema: batch items out of order")
                return
            for item in body.items:
                if item.status == 200 and item.result is None:
                    resp.failure("schema: batch item 200 without result")
                    return
                if item.status != 200 and item.status not in SHED_STATUSES:
                    resp.failure(f"batch item HTTP {item.status}")
                    return
            resp.success()


class StreamCalls(MemeUser):
    """A client reading the analysis as server-sent events."""

    weight = 1
    wait_time = between(2.0, 4.0)

    def on_start(self) -> None:
        """Draw this user's corpus."""
        super().on_start()
        specs = corpus(CORPUS_SIZE, seed=SEED * 1000 + 700 + self.number)
        self.memes = [(meme_bytes(spec, "PNG"), spec.top) for spec in specs]

    @task
    def stream(self) -> None:
        """POST to the stream route, read every event, validate the final result.

        The body is read in full before Locust records the request, so the response
        time is the whole stream's, not the time to the first byte.
        """
        data, _ = self.rng.choice(self.memes)
        text = context_text(self.rng) if self.rng.random() < 0.5 else None
        with self.client.post(
            STREAM,
            files={"image": ("meme.png", data)},
            data={"text": text} if text else None,
            name=STREAM,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(shed_or_unexpected(resp))
                return
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                resp.failure("schema: stream is not text/event-stream")
                return
            problem = check_stream(parse_sse(resp.text))
            if problem:
                resp.failure(problem)
            else:
                resp.success()


# ----------------------------------------------------------------------------- shapes


def _params(name: str) -> dict[str, Any]:
    """``MEMESERVE_SHAPE_PARAMS`` when ``name`` is the chosen shape, else nothing."""
    if name != SHAPE:
        return {}
    raw = os.environ.get("MEMESERVE_SHAPE_PARAMS", "").strip()
    return json.loads(raw) if raw else {}


class _Shape(LoadTestShape):
    """Applies ``MEMESERVE_SHAPE_PARAMS`` to the chosen shape's class attributes."""

    abstract = True
    key: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        for attribute, value in _params(self.key).items():
            if not hasattr(type(self), attribute):
                raise ValueError(f"{type(self).__name__} has no setting {attribute!r}")
            setattr(self, attribute, value)


class StepLoad(_Shape):
    """``steps`` steps of ``step_users`` more users, ``step_duration_s`` each; then stop."""

    abstract = SHAPE != "step"
    key = "step"
    step_users = 2
    step_duration_s = 25.0
    steps = 3
    spawn_rate = 2.0

    def tick(self) -> tuple[int, float] | None:
        """Users for the current step, or ``None`` after the last one."""
        step = int(self.get_run_time() // self.step_duration_s)
        if step >= self.steps:
            return None
        return (step + 1) * self.step_users, self.spawn_rate


class SpikeLoad(_Shape):
    """``base_users``; ``spike_users`` from ``spike_at_s`` for ``spike_duration_s``; stop."""

    abstract = SHAPE != "spike"
    key = "spike"
    base_users = 2
    spike_users = 8
    spike_at_s = 20.0
    spike_duration_s = 20.0
    total_s = 60.0
    spawn_rate = 8.0

    def tick(self) -> tuple[int, float] | None:
        """The base or the spike user count, or ``None`` after ``total_s``."""
        now = self.get_run_time()
        if now >= self.total_s:
            return None
        spiking = self.spike_at_s <= now < self.spike_at_s + self.spike_duration_s
        return (self.spike_users if spiking else self.base_users), self.spawn_rate


class SoakLoad(_Shape):
    """A steady ``users`` for ``duration_s`` (reached at ``spawn_rate``); then stop."""

    abstract = SHAPE != "soak"
    key = "soak"
    users = 4
    duration_s = 300.0
    spawn_rate = 1.0

    def tick(self) -> tuple[int, float] | None:
        """The constant user count, or ``None`` after ``duration_s``."""
        if self.get_run_time() >= self.duration_s:
            return None
        return self.users, self.spawn_rate
