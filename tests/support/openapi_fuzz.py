"""Schemathesis over the OpenAPI document a running app serves: the shared fuzzing.

Used by ``tests/integration/http/test_openapi_contract*.py`` (an open profile, and one
with API keys and CORS on). Every operation the document lists is fuzzed with
schema-valid and schema-invalid requests; the contract: no response is a 5xx, and every
response's status, content type and body match the document. Unknown paths and methods
are sent too (:func:`fuzz_unknown_routes`): each must be a JSON 4xx.
"""

from __future__ import annotations

import base64
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from loadtest.corpus import MemeSpec, meme_bytes
from serve_app.http.client import SseParser

# Per operation and generation mode; bodiless GETs have nothing to vary and stop early.
MAX_EXAMPLES = 100
CALL_TIMEOUT_S = 120.0
# Read whole event streams (schemathesis stops at 20 events by default).
MAX_STREAM_EVENTS = 10_000
# A failure's report (with its curl command) is cut here: uploads make long commands.
MAX_REPORT_CHARS = 4_000
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Schema-violating requests must be refused (4xx). Not for the stream route: a body that
# decodes as an image only past its header is reported in an ``error`` event, by design.
NEGATIVE_CHECKS: list[CheckFunction] = [*CHECKS, negative_data_rejection]
IN_BAND_ERRORS = {"POST /v1/memes/analyze/stream"}


@dataclass
class Tally:
    """What the run saw: cases and statuses per operation, and each distinct failure."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    # (operation, kind of failure) -> the first report of it, and how often it happened.
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    failure_counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def fail(self, label: str, kind: str, report: str) -> None:
        key = (label, kind)
        self.failure_counts[key] += 1
        self.failures.setdefault(key, report[:MAX_REPORT_CHARS])

    def summary(self) -> str:
        total: Counter[int] = Counter()
        for counts in self.statuses.values():
            total.update(counts)
        lines = [
            f"schemathesis: {len(self.cases)} operations, {sum(self.cases.values())} cases, "
            f"statuses {dict(sorted(total.items()))}"
        ]
        for label in sorted(self.cases):
            statuses = dict(sorted(self.statuses[label].items()))
            lines.append(f"  {label}: {self.cases[label]} cases, statuses {statuses}")
        return "\n".join(lines)

    def failure_report(self) -> str:
        parts = [
            f"=== {label}: {kind} (seen {self.failure_counts[label, kind]} times) ===\n{report}"
            for (label, kind), report in self.failures.items()
        ]
        return f"{len(self.failures)} distinct contract failures\n\n" + "\n\n".join(parts)


def load_schema(base_url: str) -> schemathesis.BaseSchema:
    """The served document, with an explicit config (no schemathesis.toml lookup)."""
    config = schemathesis.Config.from_dict(
        {
            "max-stream-events": MAX_STREAM_EVENTS,
            # Refusals are 4xx: a caller deadline under the floor is a 400 at the edge,
            # a Serve-proxy timeout is the JSON 504 (serve_app.http.edge), never a 408.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": list(NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES)
                }
            },
        }
    )
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=30)


def component_validator(document: dict[str, Any], name: str) -> jsonschema.Validator:
    """A validator for ``#/components/schemas/<name>`` of the served document."""
    wrapper = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(wrapper)


def sse_events(text: str) -> list[tuple[str, Any]]:
    parser = SseParser()
    events = []
    for line in [*text.splitlines(), ""]:
        event = parser.feed(line)
        if event is not None:
            events.append((event.event, event.data))
    return events


def stream_problems(document: dict[str, Any], body: str) -> list[str]:
    """What is wrong with a 200 event stream: event order, and payloads vs the document."""
    analysis = component_validator(document, "Analysis")
    error = component_validator(document, "ErrorBody")
    events = sse_events(body)
    names = [name for name, _ in events]
    problems = []
    if not names or names[0] != "accepted" or names[-1] not in {"result", "error"}:
        problems.append(f"events out of order: {names}")
    for name, data in events:
        if name == "result":
            problems += [f"result event: {e.message}" for e in analysis.iter_errors(data)]
        elif name == "error":
            if not isinstance(data, dict) or not isinstance(data.get("status"), int):
                problems.append(f"error event without a status: {data!r}")
                continue
            rest = {k: v for k, v in data.items() if k != "status"}
            problems += [f"error event: {e.message}" for e in error.iter_errors(rest)]
            if data["status"] >= 500:
                problems.append(f"error event with a server status: {data!r}")
    return problems


def run_case(
    case: Case,
    base_url: str,
    session: requests.Session,
    document: dict[str, Any],
    tally: Tally,
    checks: list[CheckFunction] = CHECKS,
) -> schemathesis.Response | None:
    """Send one case and run the checks; failures are recorded, not raised (no shrinking)."""
    label = case.operation.label
    tally.cases[label] += 1
    try:
        response = case.call(base_url=base_url, session=session, timeout=CALL_TIMEOUT_S)
    except requests.RequestException as exc:
        curl = case.as_curl_command(base_url=base_url)
        tally.fail(label, type(exc).__name__, f"request failed: {exc!r}\n{curl}")
        return None
    tally.statuses[label][response.status_code] += 1
    if case.media_type == "multipart/form-data":
        # Every multipart field is text on the wire: a generated "boolean" ``text`` arrives as
        # the string "true", which the schema allows, so it is no schema violation to refuse.
        checks = [check for check in checks if check is not negative_data_rejection]
    try:
        case.validate_response(response, checks=checks, transport_kwargs={"base_url": base_url})
    except FailureGroup as exc:
        kinds = sorted({f"{failure.code} {failure.title}" for failure in exc.exceptions})
        tally.fail(label, ", ".join(kinds), str(exc))
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code == 200 and content_type.startswith("text/event-stream"):
        problems = stream_problems(document, response.text)
        if response.stream_cut_short:
            problems.append("the stream did not end within the request timeout")
        if problems:
            curl = case.as_curl_command(base_url=base_url)
            tally.fail(label, "stream events", f"{problems}\n{response.text}\n{curl}")
    return response


def fuzz(operation: APIOperation, mode: GenerationMode, send: Callable[[Case], object]) -> None:
    """Send up to MAX_EXAMPLES generated cases of ``mode`` for ``operation``."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        send(data.draw(operation.as_strategy(generation_mode=mode)))

    run()


def small_meme() -> bytes:
    return meme_bytes(MemeSpec(template=5, top="你说得对，但是", bottom="阴阳怪气"))


def valid_cases(schema: schemathesis.BaseSchema, image: bytes) -> Iterator[Case]:
    """Requests that reach the success path of each POST route (fuzzing rarely does)."""
    encoded = base64.b64encode(image).decode("ascii")
    for path in ("/v1/memes/analyze", "/v1/memes/analyze/stream"):
        operation = schema[path]["POST"]
        yield operation.Case(
            body={"image": image, "text": "笑死"}, media_type="multipart/form-data"
        )
        yield operation.Case(body={"image_base64": encoded}, media_type="application/json")
    batch = schema["/v1/memes/analyze/batch"]["POST"]
    items = [
        {"id": "good", "image_base64": encoded, "text": "笑死"},
        {"id": "bad", "image_base64": base64.b64encode(b"not an image").decode("ascii")},
        {"id": "not-base64", "image_base64": "%%%"},
    ]
    yield batch.Case(body={"items": items}, media_type="application/json")


def dangling_refs(document: dict[str, Any], node: Any) -> list[str]:
    """Local ``$ref`` values under ``node`` that point at nothing in ``document``."""
    if isinstance(node, list):
        return [ref for item in node for ref in dangling_refs(document, item)]
    if not isinstance(node, dict):
        return []
    found = [ref for value in node.values() for ref in dangling_refs(document, value)]
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return [ref, *found]
            target = target[part]
    return found


def documented_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``"METHOD /path"`` -> its operation object, as the served document has them."""
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def fuzz_service(
    base_url: str,
    schema: schemathesis.BaseSchema,
    document: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Tally:
    """Fuzz every documented operation (positive and negative cases), then the real-meme
    cases; ``headers`` (an API key) go with every request. The service must be healthy
    afterwards. Failures are in the returned tally, not raised."""
    started = time.monotonic()
    tally = Tally()
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=str)
    documented = documented_operations(document)
    assert sorted(op.label for op in operations) == sorted(documented)
    for operation in operations:
        declared = documented[operation.label].get("requestBody", {}).get("content", {})
        usable = {body.media_type for body in operation.body}
        if set(declared) != usable:
            # Schemathesis drops a body it cannot resolve and would send none at all.
            tally.fail(
                operation.label,
                "unusable request body",
                f"request body media types {sorted(declared)} documented, but schemathesis "
                f"can generate only {sorted(usable)}; references that do not resolve in "
                f"the document: {dangling_refs(document, declared)}",
            )
    with requests.Session() as session:
        session.headers.update(headers or {})

        def sender(checks: list[CheckFunction]) -> Callable[[Case], object]:
            return lambda case: run_case(case, base_url, session, document, tally, checks)

        for operation in operations:
            fuzz(operation, GenerationMode.POSITIVE, sender(CHECKS))
            if operation.body:
                in_band = operation.label in IN_BAND_ERRORS
                fuzz(
                    operation,
                    GenerationMode.NEGATIVE,
                    sender(CHECKS if in_band else NEGATIVE_CHECKS),
                )
        image = small_meme()
        for case in valid_cases(schema, image):
            response = run_case(case, base_url, session, document, tally)
            if response is not None and response.status_code != 200:
                report = f"{response.status_code}: {response.text[:500]}"
                tally.fail(case.operation.label, "a real meme was refused", report)
    print(f"\n{tally.summary()}\n  ({time.monotonic() - started:.1f} s)")

    # Whatever the fuzzing found, it left the service healthy and working.
    with httpx.Client(base_url=base_url, timeout=CALL_TIMEOUT_S, headers=headers) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
        response = client.post("/v1/memes/analyze", files={"image": ("m.png", image)})
        assert response.status_code == 200, response.text
        assert response.json()["emotion"] == "sarcasm", response.text
    return tally


UNKNOWN_METHODS = ["PUT", "PATCH", "DELETE", "TRACE", "PROPFIND"]


def fuzz_unknown_routes(
    base_url: str, tally: Tally, headers: dict[str, str] | None = None, examples: int = 150
) -> None:
    """Paths the document does not have and methods its paths do not take: JSON 4xx each."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(
        path=st.one_of(
            st.from_regex(r"\A/[a-z0-9_\-/.%]{0,40}\Z"),
            st.sampled_from(["/v1/memes/analyze", "/v1/status", "/healthz", "/readyz"]),
        ),
        method=st.sampled_from(["GET", "POST", *UNKNOWN_METHODS]),
    )
    def run(path: str, method: str) -> None:
        label = "unknown routes"
        tally.cases[label] += 1
        try:
            response = httpx.request(
                method, f"{base_url}{path}", headers=headers, timeout=CALL_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            tally.fail(label, type(exc).__name__, f"{method} {path}: {exc!r}")
            return
        tally.statuses[label][response.status_code] += 1
        if response.status_code >= 500:
            tally.fail(label, "server error", f"{method} {path}: {response.text[:300]}")
        elif response.status_code >= 400:
            try:
                error = response.json()["error"]
                assert {"code", "message", "request_id"} <= set(error)
            except (ValueError, KeyError, TypeError, AssertionError):
                tally.fail(
                    label, "not the JSON error body", f"{method} {path}: {response.text[:300]}"
                )

    run()
