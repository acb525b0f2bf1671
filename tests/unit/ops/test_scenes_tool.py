"""``memeserve lists`` / ``reviews export`` against a local HTTP server faking the routes.

:class:`FakeScenesService` implements the admin routes' behaviour (terms and images
stored per list, counts by action, the audit newest first and the reviewed set oldest
first with their paging, the route's validation and error bodies, bearer keys with an
admin scope) behind a real ``ThreadingHTTPServer``, so the tool, the client and the
command line run exactly as against the service. Which review of an image is its latest
is the service's business: the fake serves the reviewed set's rows as they are given.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from PIL import Image

from serve_app.http.client import ApiError, MemeServeClient, RetryPolicy
from serve_app.ops.cli import main
from serve_app.ops.scenes_tool import (
    InputError,
    PagingError,
    TermFileError,
    TermRow,
    chunked,
    export_audit,
    export_lists,
    export_reviews,
    import_images,
    import_terms,
    read_term_file,
    remove_terms,
    stats_table,
    terms_by_action,
)

ACTIONS = ("block", "review", "pass")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ADMIN_KEY = "admin-secret"
READER_KEY = "reader-secret"


class RouteError(Exception):
    """An error the fake answers with, in the service's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class FakeScenesService:
    """The scenes admin routes, in memory, as ``scenes_routes`` and ``ScenesState`` behave."""

    keys: dict[str, set[str]] = field(default_factory=dict)
    """Bearer token → scopes; empty: an open service."""
    terms: dict[str, dict[str, str]] = field(default_factory=dict)
    images: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    """Oldest first, as appended."""
    reviewed: list[dict[str, Any]] = field(default_factory=list)
    """The reviewed set's rows (``GET /v1/reviews/latest``), served by ``seq``."""
    fail_review_page: int | None = None
    """Answer the review routes' request number N (from 1) with a 503."""
    review_pages: int = 0
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    """(method, path, JSON body or form fields) of every request that got past auth."""
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.seq += 1
            try:
                self._authorize(headers.get("authorization"))
                return 200, self._route(method, target, headers, body)
            except RouteError as exc:
                error = {"code": exc.code, "message": exc.message, "request_id": f"r{self.seq}"}
                return exc.status, {"error": error}

    def add_review(self, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        """A review in the audit (there is no route to write one in this tool's scope)."""
        self.seq += 1
        self.audit.append(
            {
                "review_id": f"rv{self.seq}",
                "seq": self.seq,
                "at": 1_700_000_000.0 + self.seq,
                "reviewer": "alice",
                "key": "ops",
                "request_id": f"req{self.seq}",
                "before": before,
                "after": after,
                "note": None,
            }
        )

    def add_reviewed(
        self,
        labels: dict[str, Any],
        before: dict[str, Any] | None = None,
        thumbnail: str | None = "/9j/4AAQSkZJRg==",
    ) -> dict[str, Any]:
        """A row of the reviewed set (the service's latest review of one image)."""
        self.seq += 1
        row = {
            "review_id": f"rv{self.seq}",
            "seq": self.seq,
            "at": 1_700_000_000.0 + self.seq,
            "reviewer": "alice",
            "labels": labels,
            "before": before,
            "request_id": f"req{self.seq}",
            "thumbnail": thumbnail,
        }
        self.reviewed.append(row)
        return row

    def review_calls(self, path: str) -> list[dict[str, Any]]:
        """The query parameters of each request to ``path``."""
        return [params for method, p, params in self.calls if (method, p) == ("GET", path)]

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        out = {}
        for name in sorted({*self.terms, *self.images}):
            terms = list(self.terms.get(name, {}).values())
            images = [e["action"] for e in self.images.get(name, {}).values()]
            out[name] = {
                "terms": {a: terms.count(a) for a in ACTIONS},
                "images": {a: images.count(a) for a in ACTIONS},
            }
        return out

    # -- the routes ------------------------------------------------------------------------

    def _authorize(self, authorization: str | None) -> None:
        if not self.keys:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise RouteError(401, "unauthorized", "send the API key as 'Authorization: Bearer'")
        scopes = self.keys.get(authorization.removeprefix("Bearer "))
        if scopes is None:
            raise RouteError(403, "forbidden", "the API key is not accepted")
        if "admin" not in scopes:
            raise RouteError(403, "forbidden", "this API key has no admin scope")

    def _route(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        url = urlsplit(target)
        path = unquote(url.path)
        if (method, path) == ("GET", "/v1/lists"):
            self.calls.append((method, path, None))
            return {"lists": self.stats()}
        if method == "GET" and path in ("/v1/reviews", "/v1/reviews/latest"):
            return {"reviews": self._reviews(path, parse_qs(url.query))}
        match = re.fullmatch(r"/v1/lists/([^/]+)/(terms|images)(/remove)?", path)
        if match is None:
            raise RouteError(404, "not_found", f"no route {method} {path}")
        name, kind, remove = match.groups()
        if not NAME.match(name):
            raise RouteError(422, "invalid_request", f"list name {name!r} is invalid")
        if method == "GET" and not remove:
            self.calls.append((method, path, None))
            if kind == "terms":
                return {"list": name, "terms": dict(self.terms.get(name, {}))}
            entries = [dict(e) for e in self.images.get(name, {}).values()]
            return {"list": name, "images": entries}
        if method != "POST":
            raise RouteError(405, "method_not_allowed", method)
        if kind == "images" and not remove:
            return self._add_image(name, headers, body)
        payload = json.loads(body)
        self.calls.append((method, path, payload))
        if kind == "terms":
            terms = self._terms(payload.get("terms"))
            if remove:
                stored = self.terms.get(name, {})
                for term in terms:
                    stored.pop(term, None)
                if not stored:
                    self.terms.pop(name, None)
            else:
                action = self._action(payload.get("action"))
                self.terms.setdefault(name, {}).update(dict.fromkeys(terms, action))
            return {"seq": self.seq, "kind": f"terms.{'remove' if remove else 'add'}"}
        entry = self.images.get(name, {}).pop(str(payload.get("entry_id")), None)
        if entry is not None and not self.images[name]:
            del self.images[name]
        return {"seq": self.seq, "kind": "images.remove"}

    def _add_image(self, name: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            field_name = part.get_param("name", header="content-disposition")
            assert isinstance(field_name, str)
            fields[field_name] = part.get_content()
        image = fields.pop("image", None)
        self.calls.append(("POST", f"/v1/lists/{name}/images", fields))
        if not isinstance(image, bytes):
            raise RouteError(422, "invalid_request", "multipart field 'image' is required")
        try:
            Image.open(io.BytesIO(image)).verify()
        except Exception:
            raise RouteError(415, "unsupported_media_type", "not a decodable image") from None
        action = self._action(fields.get("action"))
        label = fields.get("label")
        if label is not None and len(label) > 200:
            raise RouteError(422, "invalid_request", "label: at most 200 characters")
        entry_id = hashlib.blake2b(image, digest_size=8).hexdigest()
        entries = self.images.setdefault(name, {})
        entries.pop(entry_id, None)
        entries[entry_id] = {
            "entry_id": entry_id,
            "action": action,
            "label": label,
            "by": "anonymous",
            "at": 1_700_000_000.0 + self.seq,
        }
        return {"entry_id": entry_id, "seq": self.seq, "kind": "images.add"}

    def _reviews(self, path: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """``/v1/reviews`` (newest first, below ``before_seq``) or ``/v1/reviews/latest``
        (oldest first, above ``after_seq``), at most ``limit`` rows."""
        try:
            params = {name: int(values[-1]) for name, values in query.items()}
        except ValueError:
            raise RouteError(422, "invalid_request", "query values must be integers") from None
        self.calls.append(("GET", path, params))
        self.review_pages += 1
        if self.review_pages == self.fail_review_page:
            raise RouteError(503, "unavailable", "the scenes store is busy")
        limit = params.get("limit", 100)
        if not 1 <= limit <= 500:
            raise RouteError(422, "invalid_request", "limit must be between 1 and 500")
        if path == "/v1/reviews":
            before = params.get("before_seq")
            rows = [r for r in self.audit[::-1] if before is None or r["seq"] < before]
        else:
            after = params.get("after_seq", 0)
            rows = [r for r in sorted(self.reviewed, key=lambda r: r["seq"]) if r["seq"] > after]
        return rows[:limit]

    @staticmethod
    def _action(action: object) -> str:
        if action not in ACTIONS:
            raise RouteError(422, "invalid_request", f"action: {action!r} is not allowed")
        return str(action)

    @staticmethod
    def _terms(terms: object) -> list[str]:
        if not isinstance(terms, list) or not 1 <= len(terms) <= 10_000:
            raise RouteError(422, "invalid_request", "terms: 1 to 10000 strings")
        if any(not isinstance(t, str) or not 1 <= len(t) <= 100 for t in terms):
            raise RouteError(422, "invalid_request", "terms: 1 to 100 characters each")
        cleaned = list(dict.fromkeys(t.strip() for t in terms))
        if any(not t for t in cleaned):
            raise RouteError(422, "invalid_request", "terms must not be blank")
        return cleaned


def _handler(service: FakeScenesService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = service.answer(self.command, self.path, headers, body)
            data = json.dumps(answer, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Served:
    url: str
    service: FakeScenesService

    def client(self, api_key: str | None = None) -> MemeServeClient:
        return MemeServeClient(
            self.url, timeout_s=10, retry=RetryPolicy(retries=0), api_key=api_key
        )


def _serve(service: FakeScenesService) -> Iterator[Served]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_address[1]}", service)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def served() -> Iterator[Served]:
    """An open service (no keys)."""
    yield from _serve(FakeScenesService())


@pytest.fixture
def served_with_keys() -> Iterator[Served]:
    """A service with keys: one admin, one without the admin scope."""
    yield from _serve(FakeScenesService(keys={ADMIN_KEY: {"admin"}, READER_KEY: {"analyze"}}))


@pytest.fixture
def closed_url() -> str:
    """A local address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def png(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (24, 24), colour).save(path)
    return path


# -- term files -----------------------------------------------------------------------------


def test_txt_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", "# spam words\n\n  加微信  \n\t# indented comment\n代开发票\n")
    rows = read_term_file(path, "block")
    assert rows == [TermRow("加微信", "block", 3), TermRow("代开发票", "block", 5)]


def test_csv_rows_override_the_default_action(tmp_path: Path) -> None:
    text = "term,action\n加微信,review\n代开发票,\n\n刷单, PASS \n单列\n"
    rows = read_term_file(write(tmp_path / "t.csv", text), "block")
    assert [(r.term, r.action, r.line) for r in rows] == [
        ("加微信", "review", 2),
        ("代开发票", "block", 3),
        ("刷单", "pass", 5),
        ("单列", "block", 6),
    ]


def test_a_bad_csv_action_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "加微信,block\n代开发票,ban\n")
    with pytest.raises(TermFileError) as error:
        read_term_file(path, "block")
    assert str(error.value) == f"{path}:2: action 'ban' is not one of block, review, pass"


def test_a_csv_with_extra_columns_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "a,block,\nb,block,oops\n")
    with pytest.raises(TermFileError, match=r"t\.csv:2: 3 columns; expected term\[,action\]"):
        read_term_file(path, "block")


def test_jsonl_terms_and_an_export_file_import(tmp_path: Path) -> None:
    lines = [
        {"term": "加微信"},
        {"term": "刷单", "action": "review"},
        {"list": "old", "kind": "term", "term": "#话题#", "action": "pass"},
        {"list": "old", "kind": "image", "entry_id": "ab", "action": "block", "label": "x"},
    ]
    path = write(tmp_path / "t.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = read_term_file(path, "block")
    assert [(r.term, r.action) for r in rows] == [
        ("加微信", "block"),
        ("刷单", "review"),
        ("#话题#", "pass"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"term": "a"}\n{"term": "b",\n', r"t\.jsonl:2: not valid JSON"),
        ('{"term": "a"}\n["b"]\n', r"t\.jsonl:2: expected an object"),
        ('{"action": "block"}\n', r"t\.jsonl:1: the term is missing or blank"),
        ('{"term": "a", "action": 3}\n', r"t\.jsonl:1: action 3 is not one of"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TermFileError, match=message):
        read_term_file(write(tmp_path / "t.jsonl", text), "block")


@pytest.mark.parametrize("name", ["t.txt", "t.csv", "t.jsonl"])
def test_a_file_with_no_terms_is_an_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "" if name != "t.txt" else "# only a comment\n\n")
    with pytest.raises(TermFileError, match="no terms in the file"):
        read_term_file(path, "block")


def test_an_overlong_term_and_an_unknown_suffix_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "t.txt", "ok\n" + "长" * 101 + "\n")
    with pytest.raises(TermFileError, match=r"t\.txt:2: the term is 101 characters"):
        read_term_file(path, "block")
    with pytest.raises(TermFileError, match=r"unsupported file type '\.xlsx'"):
        read_term_file(write(tmp_path / "t.xlsx", "a"), "block")
    with pytest.raises(InputError, match="action 'ban'"):
        read_term_file(write(tmp_path / "u.txt", "a"), "ban")


def test_a_repeated_term_keeps_its_last_action() -> None:
    rows = [TermRow("a", "block", 1), TermRow("b", "review", 2), TermRow("a", "pass", 3)]
    assert terms_by_action(rows) == {"pass": ["a"], "review": ["b"]}
    assert [list(c) for c in chunked([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


# -- against the service --------------------------------------------------------------------


def test_25000_terms_go_out_in_3_requests(served: Served) -> None:
    rows = [TermRow(f"词{i}", "block", i + 1) for i in range(25_000)]
    seen: list[int] = []
    with served.client() as client:
        report = import_terms(client, "spam", rows, progress=lambda _a, n: seen.append(n))
    posts = [body for method, path, body in served.service.calls if method == "POST"]
    assert [len(body["terms"]) for body in posts] == [10_000, 10_000, 5_000]
    assert seen == [10_000, 10_000, 5_000]
    assert (report.requests, report.sent) == (3, {"block": 25_000})
    assert served.service.stats()["spam"]["terms"] == {"block": 25_000, "review": 0, "pass": 0}


def test_a_csv_import_sends_one_request_per_action(served: Served, tmp_path: Path) -> None:
    rows = read_term_file(write(tmp_path / "t.csv", "a,review\nb\nc,pass\nd\n"), "block")
    with served.client() as client:
        report = import_terms(client, "spam", rows)
    assert report.sent == {"review": 1, "block": 2, "pass": 1}
    assert served.service.terms["spam"] == {"a": "review", "b": "block", "c": "pass", "d": "block"}


def test_a_directory_puts_each_image_on_the_list(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "memes"
    folder.mkdir()
    png(folder / "doge.png", (200, 150, 0))
    png(folder / "pepe.PNG", (0, 160, 20))
    write(folder / "broken.jpg", "not an image")
    write(folder / "notes.txt", "ignored: not an image suffix")
    with served.client() as client:
        report = import_images(client, "banned", folder, "block")
        entries = client.list_images("banned")
    assert sorted(report.added) == ["doge.png", "pepe.PNG"]
    assert report.failed == {"broken.jpg": "unsupported_media_type: not a decodable image"}
    assert {(e["label"], e["action"], e["entry_id"]) for e in entries} == {
        ("doge.png", "block", report.added["doge.png"]),
        ("pepe.PNG", "block", report.added["pepe.PNG"]),
    }


def test_an_auth_error_stops_a_directory_import(served_with_keys: Served, tmp_path: Path) -> None:
    png(tmp_path / "a.png", (1, 2, 3))
    png(tmp_path / "b.png", (3, 2, 1))
    with served_with_keys.client(READER_KEY) as client, pytest.raises(ApiError) as error:
        import_images(client, "banned", tmp_path, "block")
    assert error.value.status == 403
    assert served_with_keys.service.calls == []


def test_export_writes_terms_then_images_per_list(served: Served, tmp_path: Path) -> None:
    png(tmp_path / "doge.png", (200, 150, 0))
    with served.client() as client:
        import_terms(client, "spam", [TermRow("加微信", "block", 1), TermRow("刷单", "review", 2)])
        import_terms(client, "ads", [TermRow("代购", "pass", 1)])
        entry_id = import_images(client, "spam", tmp_path, "review").added["doge.png"]
        everything, one = io.StringIO(), io.StringIO()
        assert export_lists(client, everything) == 4
        assert export_lists(client, one, "ads") == 1
    assert [json.loads(line) for line in everything.getvalue().splitlines()] == [
        {"list": "ads", "kind": "term", "term": "代购", "action": "pass"},
        {"list": "spam", "kind": "term", "term": "加微信", "action": "block"},
        {"list": "spam", "kind": "term", "term": "刷单", "action": "review"},
        {
            "list": "spam",
            "kind": "image",
            "entry_id": entry_id,
            "action": "review",
            "label": "doge.png",
        },
    ]
    assert "加微信" in everything.getvalue()  # UTF-8, not \\u escapes
    assert one.getvalue() == '{"list": "ads", "kind": "term", "term": "代购", "action": "pass"}\n'


def test_stats_table(served: Served) -> None:
    with served.client() as client:
        import_terms(client, "spam", [TermRow(f"t{i}", "block", i) for i in range(12)])
        import_terms(client, "spam", [TermRow("x", "review", 1)])
        import_terms(client, "a.b-c", [TermRow("y", "pass", 1)])
        table = stats_table(client.lists())
    assert table.splitlines() == [
        "list    terms block review pass   images block review pass",
        "a.b-c       1     0      0    1        0     0      0    0",
        "spam       13    12      1    0        0     0      0    0",
    ]
    assert stats_table({}) == "no lists"


def test_remove_terms_in_chunks(served: Served) -> None:
    with served.client() as client:
        import_terms(client, "spam", [TermRow(f"t{i}", "block", i) for i in range(5)])
        assert remove_terms(client, "spam", ["t1", " t2 ", "t1", "absent"], chunk_size=2) == 3
        assert client.list_terms("spam") == {"t0": "block", "t3": "block", "t4": "block"}
        with pytest.raises(InputError, match="blank"):
            remove_terms(client, "spam", ["t0", "  "])


LABELS = {"emotion": "joy", "intent": "joke", "sarcastic": False, "offensiveness": 0}


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_reviewed_set_of_1200_images_pages_in_3_calls(served: Served) -> None:
    rows = [served.service.add_reviewed({**LABELS, "offensiveness": i % 4}) for i in range(1200)]
    out = io.StringIO()
    with served.client() as client:
        assert export_reviews(client, out) == 1200
    assert served.service.review_calls("/v1/reviews/latest") == [
        {"limit": 500, "after_seq": 0},
        {"limit": 500, "after_seq": rows[499]["seq"]},
        {"limit": 500, "after_seq": rows[999]["seq"]},
    ]
    assert lines(out.getvalue()) == rows  # every image once, oldest first
    assert served.service.review_calls("/v1/reviews") == []


def test_the_reviewed_set_is_the_services_rows_as_they_are(served: Served) -> None:
    """The tool writes what ``/v1/reviews/latest`` answers: it neither collapses nor
    reorders rows (which review of an image is its latest is the service's decision)."""
    model = {**LABELS, "offensiveness": 3}
    served.service.add_review(model, {**LABELS, "offensiveness": 1})  # image A, then B
    served.service.add_review(None, {**LABELS, "emotion": "anger"})
    served.service.add_review(model, {**LABELS, "offensiveness": 2})  # A again
    image_b = served.service.add_reviewed({**LABELS, "emotion": "anger"}, None, None)
    image_a = served.service.add_reviewed({**LABELS, "offensiveness": 2}, model)
    shared = served.service.add_reviewed({**LABELS, "intent": "insult"}, model)
    shared["request_id"] = image_a["request_id"]  # no de-duplication on the client's side
    out = io.StringIO()
    with served.client() as client:
        assert export_reviews(client, out) == 3
    rows = lines(out.getvalue())
    assert rows == [image_b, image_a, shared]
    assert set(rows[0]) == {
        *("review_id", "seq", "at", "reviewer", "labels", "before", "request_id", "thumbnail")
    }
    assert (rows[0]["before"], rows[0]["thumbnail"]) == (None, None)
    assert (rows[1]["labels"]["offensiveness"], rows[1]["before"]) == (2, model)
    assert rows[1]["thumbnail"] == "/9j/4AAQSkZJRg=="


def test_the_audit_pages_back_newest_first(served: Served) -> None:
    for i in range(1001):
        served.service.add_review(LABELS, {**LABELS, "offensiveness": i % 4})
    seqs = [row["seq"] for row in served.service.audit]
    out = io.StringIO()
    with served.client() as client:
        assert export_audit(client, out) == 1001
    assert served.service.review_calls("/v1/reviews") == [
        {"limit": 500},
        {"limit": 500, "before_seq": seqs[501]},
        {"limit": 500, "before_seq": seqs[1]},
    ]
    rows = lines(out.getvalue())
    assert [row["seq"] for row in rows] == seqs[::-1]
    assert set(rows[0]) == {
        *("review_id", "seq", "at", "reviewer", "key", "request_id", "before", "after", "note")
    }
    assert (rows[0]["before"], rows[0]["after"]) == (LABELS, {**LABELS, "offensiveness": 0})


@pytest.mark.parametrize(("count", "calls"), [(0, 1), (3, 1), (4, 2), (8, 3), (9, 3)])
def test_paging_stops_at_a_short_page(served: Served, count: int, calls: int) -> None:
    for _ in range(count):
        served.service.add_review(None, LABELS)
        served.service.add_reviewed(LABELS)
    reviewed, audit = io.StringIO(), io.StringIO()
    with served.client() as client:
        assert export_reviews(client, reviewed, page_size=4) == count
        assert export_audit(client, audit, page_size=4) == count
        with pytest.raises(InputError, match="between 1 and 500"):
            export_reviews(client, io.StringIO(), page_size=501)
        with pytest.raises(InputError, match="between 1 and 500"):
            export_audit(client, io.StringIO(), page_size=0)
    assert len(served.service.review_calls("/v1/reviews/latest")) == calls
    assert len(served.service.review_calls("/v1/reviews")) == calls
    assert len(reviewed.getvalue().splitlines()) == len(audit.getvalue().splitlines()) == count


@dataclass
class StuckClient:
    """Answers every page with the same full page: paging must not loop forever."""

    page: Sequence[dict[str, Any]]

    def review_audit(self, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        return list(self.page)

    def reviewed_set(self, limit: int = 100, after_seq: int = 0) -> list[dict[str, Any]]:
        return list(self.page)


def test_a_page_that_does_not_move_on_is_an_error() -> None:
    client: Any = StuckClient([{"seq": 5}, {"seq": 7}])
    with pytest.raises(PagingError, match=r"/v1/reviews/latest .* seq 7 when paging from 7"):
        export_reviews(client, io.StringIO(), page_size=2)
    client = StuckClient([{"seq": 7}, {"seq": 5}])
    with pytest.raises(PagingError, match=r"/v1/reviews .* seq 5 when paging from 5"):
        export_audit(client, io.StringIO(), page_size=2)


# -- the command line -----------------------------------------------------------------------


def test_cli_import_stats_export_remove(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", served.url, "--retries", "0"]
    terms = write(tmp_path / "spam.csv", "term,action\n加微信,\n刷单,review\n")
    assert main(["lists", "import", "spam", str(terms), "--action", "block", *url]) == 0
    assert capsys.readouterr().out == (
        "imported 2 terms into list spam (block: 1, review: 1) in 2 requests\n"
    )
    folder = tmp_path / "memes"
    folder.mkdir()
    png(folder / "doge.png", (200, 150, 0))
    argv = ["lists", "import", "banned", str(folder), "--action", "pass", "--label", "ok"]
    assert main([*argv, *url]) == 0
    assert capsys.readouterr().out == "added 1 images to list banned as pass, failed 0\n"
    assert next(iter(served.service.images["banned"].values()))["label"] == "ok"

    assert main(["lists", "stats", *url]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "banned       0     0      0    0        1     0      0    1",
        "spam         2     1      1    0        0     0      0    0",
    ]

    out = tmp_path / "lists.jsonl"
    assert main(["lists", "export", "spam", "--out", str(out), *url]) == 0
    assert capsys.readouterr().err == "exported 2 entries\n"
    assert [json.loads(line)["term"] for line in out.read_text("utf-8").splitlines()] == [
        "加微信",
        "刷单",
    ]
    assert main(["lists", "export", *url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    assert main(["lists", "remove", "spam", "刷单", *url]) == 0
    assert served.service.terms["spam"] == {"加微信": "block"}
    entry_id = next(iter(served.service.images["banned"]))
    assert main(["lists", "remove", "banned", "--image", entry_id, *url]) == 0
    assert "banned" not in served.service.images


def test_cli_reviews_export(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served.service.add_review(None, {"emotion": "anger"})
    served.service.add_review(None, {"emotion": "joy"})
    row = served.service.add_reviewed({"emotion": "joy"}, {"emotion": "anger"})
    out = tmp_path / "reviews.jsonl"
    url = ["--url", served.url]
    assert main(["reviews", "export", "--out", str(out), *url]) == 0
    assert capsys.readouterr().err == f"exported 1 reviewed images to {out}\n"
    assert lines(out.read_text("utf-8")) == [row]

    assert main(["reviews", "export", "--out", str(out), "--audit", *url]) == 0
    assert capsys.readouterr().err == f"exported 2 audit rows to {out}\n"
    assert [r["after"] for r in lines(out.read_text("utf-8"))] == [
        {"emotion": "joy"},
        {"emotion": "anger"},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]


def test_cli_a_failed_page_leaves_no_file(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(600):
        served.service.add_reviewed(LABELS)
    served.service.fail_review_page = 2
    out = tmp_path / "reviews.jsonl"
    out.write_text("the previous export\n", encoding="utf-8")
    argv = ["reviews", "export", "--out", str(out), "--url", served.url, "--retries", "0"]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"error: HTTP 503 unavailable: the scenes store is busy (request r{served.service.seq})\n"
    )
    assert out.read_text("utf-8") == "the previous export\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]


def test_cli_sends_the_key_from_the_environment(
    served_with_keys: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEMESERVE_API_KEY", ADMIN_KEY)
    assert main(["lists", "stats", "--url", served_with_keys.url]) == 0
    assert capsys.readouterr().out == "no lists\n"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            None,
            "error: HTTP 401 unauthorized: send the API key as 'Authorization: Bearer' "
            "(request r1) — pass --api-key or set MEMESERVE_API_KEY",
        ),
        (
            READER_KEY,
            "error: HTTP 403 forbidden: this API key has no admin scope (request r1) "
            "— these routes need a key with the admin scope",
        ),
    ],
    ids=["401", "403"],
)
def test_cli_auth_errors_are_one_line(
    served_with_keys: Served,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str | None,
    expected: str,
) -> None:
    monkeypatch.delenv("MEMESERVE_API_KEY", raising=False)
    argv = ["lists", "stats", "--url", served_with_keys.url, "--retries", "0"]
    assert main(argv if key is None else [*argv, "--api-key", key]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", expected + "\n")


def test_cli_a_422_is_one_line(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lists", "remove", "spam", "长" * 101, "--url", served.url, "--retries", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: HTTP 422 invalid_request: terms: 1 to 100 characters each (request r1)\n"
    )


def test_cli_unreachable_is_one_line(
    closed_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reviews.jsonl"
    argv = ["reviews", "export", "--out", str(out), "--url", closed_url, "--retries", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach {closed_url}: ")
    assert len(err.splitlines()) == 1
    assert not out.exists()  # no half-written export


def test_cli_input_errors_exit_2(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", served.url]
    bad = write(tmp_path / "t.csv", "a,block\nb,ban\n")
    assert main(["lists", "import", "spam", str(bad), "--action", "block", *url]) == 2
    assert capsys.readouterr().err == (
        f"error: {bad}:2: action 'ban' is not one of block, review, pass\n"
    )
    good = write(tmp_path / "t.txt", "a\n")
    assert main(["lists", "import", "Bad Name", str(good), "--action", "block", *url]) == 2
    assert "list name 'Bad Name' must be" in capsys.readouterr().err
    argv = ["lists", "import", "spam", str(good), "--action", "block", "--label", "x", *url]
    assert main(argv) == 2
    assert "--label applies to a directory" in capsys.readouterr().err
    assert main(["lists", "remove", "spam", *url]) == 2
    assert "name at least one TERM" in capsys.readouterr().err
    argv = ["lists", "import", "spam", str(tmp_path / "missing"), "--action", "block", *url]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: no such file or directory\n"
    (tmp_path / "empty").mkdir()
    assert main(["lists", "import", "spam", str(tmp_path / "empty"), "--action", "pass", *url]) == 2
    assert "no image files (.jpg" in capsys.readouterr().err
    assert served.service.calls == []  # nothing reached the service


def test_cli_requires_an_action_for_import(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lists", "import", "spam", "t.txt"])
    assert exit_.value.code == 2
    assert "--action" in capsys.readouterr().err
