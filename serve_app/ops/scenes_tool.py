"""``memeserve lists …`` and ``memeserve reviews export``: the scenes, over the HTTP API.

Unlike ``memeserve library`` these commands talk to a *running* service through its
admin routes (``/v1/lists``, ``/v1/reviews``, ``/v1/reviews/latest``), so every replica
sees a change at once and the scenes log stays the one writer's. The logic here is plain
functions over a :class:`ScenesClient` (the sync
:class:`~serve_app.http.client.MemeServeClient` is one), so tests drive them against a
fake service.

Term files (``lists import NAME FILE``), by suffix:

* ``.txt``: one term per line; blank lines and lines whose first non-blank character
  is ``#`` are skipped (put a hashtag such as ``#话题#`` in a ``.csv`` or ``.jsonl``);
* ``.csv``: columns ``term[,action]``; an optional header row ``term,action``; a row's
  action overrides ``--action``, an empty one keeps it;
* ``.jsonl``: one object a line, ``{"term": …, "action": …}`` (``action`` optional);
  what ``lists export`` writes imports as is (its image lines are skipped).

A term that appears twice keeps its last action. Terms go out in requests of at most
:data:`~serve_app.scenes.events.MAX_TERMS`. A directory instead puts each image in it on
the image list, labelled with its file name.

``reviews export --out FILE`` writes the reviewed set, one JSON line per reviewed image
(near copies counted once, the latest review winning, as the service decides), oldest
first: ``labels`` (the reviewer's), ``before`` (the model's, or null), ``review_id``,
``seq``, ``at``, ``reviewer``, ``request_id`` and ``thumbnail`` (base64 JPEG, or null) —
the next model's training or evaluation file. ``--audit`` writes every review event
instead, newest first. Both page through the service :data:`PAGE_SIZE` rows a request
until a short page, so nothing is capped; the file is written only once all of it is read.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from serve_app.http.client import ApiError, ImageInput, MemeServeClient, RetryPolicy
from serve_app.scenes.events import ACTIONS, LIST_NAME_PATTERN, MAX_TERM_CHARS, MAX_TERMS

API_KEY_ENV = "MEMESERVE_API_KEY"
"""Environment variable the commands take the API key from when ``--api-key`` is not given."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
"""Files of a directory import that are images (as ``memeserve library import`` reads)."""
MAX_LABEL_CHARS = 200
"""An image entry's label at most (the route's limit)."""
PAGE_SIZE = 500
"""Rows asked for per request of a reviews export (the most ``/v1/reviews`` and
``/v1/reviews/latest`` answer with)."""

_LIST_NAME = re.compile(LIST_NAME_PATTERN)
# Errors that are about one image; any other error (no connection, auth, a disabled
# scenes feature, a service still busy after the retries) would fail every image alike.
_PER_IMAGE_STATUSES = frozenset({400, 413, 415, 422})

T = TypeVar("T")


class ScenesClient(Protocol):
    """The admin calls the commands make (:class:`MemeServeClient` implements them)."""

    def lists(self) -> dict[str, dict[str, dict[str, int]]]: ...

    def list_terms(self, name: str) -> dict[str, str]: ...

    def add_terms(self, name: str, action: str, terms: Sequence[str]) -> dict[str, Any]: ...

    def remove_terms(self, name: str, terms: Sequence[str]) -> dict[str, Any]: ...

    def list_images(self, name: str) -> list[dict[str, Any]]: ...

    def add_image(
        self, name: str, image: ImageInput, action: str, label: str | None = None
    ) -> dict[str, Any]: ...

    def remove_image(self, name: str, entry_id: str) -> dict[str, Any]: ...

    def review_audit(
        self, limit: int = 100, before_seq: int | None = None
    ) -> list[dict[str, Any]]: ...

    def reviewed_set(self, limit: int = 100, after_seq: int = 0) -> list[dict[str, Any]]: ...


class InputError(ValueError):
    """What the user gave cannot be used (a list name, an action, a file); one line says why."""


class TermFileError(InputError):
    """A term file that cannot be imported; the message names the file and the line."""


@dataclass(frozen=True)
class TermRow:
    """One term read from a file, with the action it gets and where it was read."""

    term: str
    action: str
    line: int


@dataclass
class TermImportReport:
    """What a term import sent: terms per action, and how many requests it took."""

    sent: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    @property
    def total(self) -> int:
        """Distinct terms sent."""
        return sum(self.sent.values())


@dataclass
class ImageImportReport:
    """What a directory import did, file by file."""

    added: dict[str, str] = field(default_factory=dict)
    """File name → the entry id the service gave it."""
    failed: dict[str, str] = field(default_factory=dict)
    """File name → why it was not added."""


# -- names and terms --------------------------------------------------------------------


def check_list_name(name: str) -> str:
    """``name`` when the service accepts it as a list name, else :class:`InputError`."""
    if not _LIST_NAME.match(name):
        raise InputError(
            f"list name {name!r} must be lower-case letters, digits and _ . - "
            f"(pattern {LIST_NAME_PATTERN})"
        )
    return name


def check_action(action: str) -> str:
    """``action`` when it is one of :data:`~serve_app.scenes.events.ACTIONS` (else
    :class:`InputError`)."""
    if action not in ACTIONS:
        raise InputError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    return action


def _row(path: Path, line: int, term: object, action: object, default_action: str) -> TermRow:
    """A validated row; :class:`TermFileError` naming ``path:line`` otherwise."""
    where = f"{path}:{line}"
    if not isinstance(term, str) or not term.strip():
        raise TermFileError(f"{where}: the term is missing or blank")
    term = term.strip()
    if len(term) > MAX_TERM_CHARS:
        raise TermFileError(
            f"{where}: the term is {len(term)} characters (at most {MAX_TERM_CHARS})"
        )
    if action is None or (isinstance(action, str) and not action.strip()):
        action = default_action
    if not isinstance(action, str) or action.strip().lower() not in ACTIONS:
        raise TermFileError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    return TermRow(term, action.strip().lower(), line)


def parse_txt(path: Path, text: str, default_action: str) -> list[TermRow]:
    """One term per line; blank lines and ``#`` comment lines are skipped."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            rows.append(_row(path, number, stripped, None, default_action))
    return rows


def parse_csv(path: Path, text: str, default_action: str) -> list[TermRow]:
    """Rows ``term[,action]``; an optional ``term,action`` header; blank rows skipped."""
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for index, raw in enumerate(reader):
            number = reader.line_num
            cells = [cell.strip() for cell in raw]
            if not any(cells):
                continue
            if index == 0 and cells[0].lower() == "term":
                continue  # the header
            if any(cells[2:]):
                raise TermFileError(
                    f"{path}:{number}: {len(cells)} columns; expected term[,action]"
                )
            action = cells[1] if len(cells) > 1 else None
            rows.append(_row(path, number, cells[0], action, default_action))
    except csv.Error as exc:
        raise TermFileError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
    return rows


def parse_jsonl(path: Path, text: str, default_action: str) -> list[TermRow]:
    """Objects ``{"term", "action"?}``, one a line; lines of another ``kind`` are skipped."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise TermFileError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise TermFileError(f'{path}:{number}: expected an object {{"term", "action"}}')
        if item.get("kind", "term") != "term":
            continue  # an image line of `lists export`
        rows.append(_row(path, number, item.get("term"), item.get("action"), default_action))
    return rows


_PARSERS: dict[str, Callable[[Path, str, str], list[TermRow]]] = {
    ".txt": parse_txt,
    ".csv": parse_csv,
    ".jsonl": parse_jsonl,
}


def read_term_file(path: Path, default_action: str) -> list[TermRow]:
    """The terms of a ``.txt``, ``.csv`` or ``.jsonl`` file (UTF-8, a BOM is fine).

    Raises :class:`TermFileError` (naming the line where there is one) for an
    unsupported suffix, a file that cannot be read, a bad row, or a file with no terms.
    """
    check_action(default_action)
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        raise TermFileError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .txt, .csv, "
            ".jsonl, or a directory of images"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TermFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise TermFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows = parser(path, text, default_action)
    if not rows:
        raise TermFileError(f"{path}: no terms in the file")
    return rows


def terms_by_action(rows: Iterable[TermRow]) -> dict[str, list[str]]:
    """action → its terms, in file order; a term listed twice keeps its last action."""
    final: dict[str, str] = {}
    for row in rows:
        final[row.term] = row.action
    grouped: dict[str, list[str]] = {}
    for term, action in final.items():
        grouped.setdefault(action, []).append(term)
    return grouped


def chunked(items: Sequence[T], size: int = MAX_TERMS) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError("size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_terms(
    client: ScenesClient,
    name: str,
    rows: Iterable[TermRow],
    *,
    chunk_size: int = MAX_TERMS,
    progress: Callable[[str, int], None] | None = None,
) -> TermImportReport:
    """Add ``rows`` to term list ``name``, one request per action and chunk of terms.

    ``progress(action, count)`` is called after each request. An :class:`ApiError`
    propagates; the requests before it have been applied.
    """
    check_list_name(name)
    report = TermImportReport()
    for action, terms in terms_by_action(rows).items():
        for chunk in chunked(terms, chunk_size):
            client.add_terms(name, action, chunk)
            report.requests += 1
            report.sent[action] = report.sent.get(action, 0) + len(chunk)
            if progress is not None:
                progress(action, len(chunk))
    return report


def remove_terms(
    client: ScenesClient, name: str, terms: Iterable[str], *, chunk_size: int = MAX_TERMS
) -> int:
    """Take ``terms`` off term list ``name`` (absent ones are ignored); how many were sent."""
    check_list_name(name)
    cleaned = list(dict.fromkeys(term.strip() for term in terms))
    if not cleaned or any(not term for term in cleaned):
        raise InputError("terms must not be blank")
    for chunk in chunked(cleaned, chunk_size):
        client.remove_terms(name, chunk)
    return len(cleaned)


# -- images -----------------------------------------------------------------------------


def image_files(directory: Path) -> list[Path]:
    """The image files directly in ``directory`` (by suffix), by name."""
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def import_images(
    client: ScenesClient,
    name: str,
    directory: Path,
    action: str,
    label: str | None = None,
    *,
    progress: Callable[[str, str | None], None] | None = None,
) -> ImageImportReport:
    """Put every image of ``directory`` on image list ``name`` with ``action``.

    Each entry's label is ``label`` or else the file's name. An image the service refuses
    (undecodable, too large) is recorded in ``failed`` and the import goes on; an error
    that would fail every image (unreachable, 401/403, scenes disabled) propagates; a
    directory with no image file is an :class:`InputError`.
    ``progress(file_name, entry_id_or_None)`` is called after each file.
    """
    check_list_name(name)
    check_action(action)
    paths = image_files(directory)
    if not paths:
        raise InputError(f"{directory}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    report = ImageImportReport()
    for path in paths:
        entry_label = (label if label is not None else path.name)[:MAX_LABEL_CHARS]
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.failed[path.name] = f"cannot read: {exc.strerror or exc}"
        else:
            try:
                answer = client.add_image(name, data, action, entry_label)
            except ApiError as exc:
                if exc.status not in _PER_IMAGE_STATUSES:
                    raise
                report.failed[path.name] = f"{exc.code}: {exc.message}"
            else:
                report.added[path.name] = str(answer["entry_id"])
        if progress is not None:
            progress(path.name, report.added.get(path.name))
    return report


# -- export and stats -------------------------------------------------------------------


def _write_line(out: TextIO, record: Mapping[str, Any]) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def export_lists(client: ScenesClient, out: TextIO, name: str | None = None) -> int:
    """Write list ``name`` (every list when None) as JSON lines; how many were written.

    Terms: ``{"list", "kind": "term", "term", "action"}``; images: ``{"list", "kind":
    "image", "entry_id", "action", "label"}``; list by list (by name), terms first.
    """
    names = [check_list_name(name)] if name is not None else sorted(client.lists())
    count = 0
    for list_name in names:
        for term, action in client.list_terms(list_name).items():
            _write_line(out, {"list": list_name, "kind": "term", "term": term, "action": action})
            count += 1
        for entry in client.list_images(list_name):
            _write_line(
                out,
                {
                    "list": list_name,
                    "kind": "image",
                    "entry_id": entry["entry_id"],
                    "action": entry["action"],
                    "label": entry.get("label"),
                },
            )
            count += 1
    return count


def stats_table(stats: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """``GET /v1/lists`` as a text table: per list, terms and images by action, and totals."""
    if not stats:
        return "no lists"
    header = ["list", "terms", *ACTIONS, "images", *ACTIONS]
    rows: list[list[str]] = []
    for list_name in sorted(stats):
        cells = [list_name]
        for kind in ("terms", "images"):
            counts = stats[list_name].get(kind, {})
            cells.append(str(sum(counts.values())))
            cells.extend(str(counts.get(action, 0)) for action in ACTIONS)
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    group = 1 + len(ACTIONS)  # "terms"/"images" and their actions

    def render(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        for start in (1, 1 + group):
            parts.append(" ".join(cells[i].rjust(widths[i]) for i in range(start, start + group)))
        return "   ".join(parts).rstrip()

    return "\n".join(render(cells) for cells in [header, *rows])


class PagingError(RuntimeError):
    """A full page whose last ``seq`` does not move on: paging would never end."""

    def __init__(self, route: str, seq: object, bound: int | None) -> None:
        super().__init__(f"{route} answered a page ending at seq {seq!r} when paging from {bound}")


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= PAGE_SIZE:
        raise InputError(f"page size must be between 1 and {PAGE_SIZE}")


def export_reviews(client: ScenesClient, out: TextIO, *, page_size: int = PAGE_SIZE) -> int:
    """The whole reviewed set as JSON lines, oldest first; how many lines.

    One line per reviewed image as ``GET /v1/reviews/latest`` answers it (near copies
    counted once, with their latest review — the service decides): ``review_id``,
    ``seq``, ``at``, ``reviewer``, ``labels`` (the reviewer's), ``before`` (the model's, or
    None), ``request_id``, ``thumbnail`` (base64 JPEG, or None) — the training and
    evaluation file. Pages of ``page_size`` go on after the last row's ``seq`` until a
    short page. An image reviewed again while the export runs can appear twice, its
    later review last.
    """
    _check_page_size(page_size)
    count, after = 0, 0
    while True:
        rows = client.reviewed_set(page_size, after_seq=after)
        for row in rows:
            _write_line(out, row)
        count += len(rows)
        if len(rows) < page_size:
            return count
        last = rows[-1]["seq"]
        if not isinstance(last, int) or last <= after:
            raise PagingError("/v1/reviews/latest", last, after)
        after = last


def export_audit(client: ScenesClient, out: TextIO, *, page_size: int = PAGE_SIZE) -> int:
    """The whole review audit as JSON lines, newest first; how many lines.

    Each line is an audit row as ``GET /v1/reviews`` answers it: ``review_id``, ``seq``,
    ``at``, ``reviewer``, ``key``, ``request_id``, ``before`` (the model's labels),
    ``after`` (the reviewer's) and ``note``; every review event, so an image reviewed
    twice has two lines. Pages of ``page_size`` go back before the last row's ``seq``
    until a short page; reviews made while the export runs are not in it.
    """
    _check_page_size(page_size)
    count, before = 0, None
    while True:
        rows = client.review_audit(page_size, before_seq=before)
        for row in rows:
            _write_line(out, row)
        count += len(rows)
        if len(rows) < page_size:
            return count
        last = rows[-1]["seq"]
        if not isinstance(last, int) or (before is not None and last >= before):
            raise PagingError("/v1/reviews", last, before)
        before = last


# -- the commands -----------------------------------------------------------------------


def describe_error(exc: ApiError, url: str, timeout_s: float) -> str:
    """One line for an :class:`ApiError`, with a hint where the fix is on our side."""
    if exc.code == "timeout" and exc.status == 0:
        return f"no answer from {url} within --timeout {timeout_s:g} s"
    if exc.code == "unreachable" and exc.status == 0:
        return f"cannot reach {url}: {exc.message}"
    if exc.status == 401:
        return f"{exc} — pass --api-key or set {API_KEY_ENV}"
    if exc.status == 403:
        return f"{exc} — these routes need a key with the admin scope"
    return str(exc)


def _client(args: argparse.Namespace) -> MemeServeClient:
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return MemeServeClient(
        args.url,
        timeout_s=args.timeout,
        retry=RetryPolicy(retries=args.retries),
        api_key=api_key or None,
    )


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _run(args: argparse.Namespace, command: Callable[[MemeServeClient], int]) -> int:
    """``command`` with a client for ``args``; usage errors → 2, service errors → 1."""
    try:
        with _client(args) as client:
            return command(client)
    except ApiError as exc:
        _error(describe_error(exc, args.url, args.timeout))
        return 1
    except PagingError as exc:
        _error(str(exc))
        return 1
    except InputError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:  # the --out file
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        return 2


def _write_out(path: Path | None, write: Callable[[TextIO], int]) -> int:
    """``write`` to stdout, or to ``path`` once it has all succeeded (no half file).

    The lines wait in a temporary file (not in memory: a reviews export with its
    thumbnails can be large), copied to ``path`` at the end; ``path`` is opened as any
    file would be, so a symlink, a pipe or ``/dev/stdout`` works.
    """
    if path is None:
        return write(sys.stdout)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        count = write(spool)
        spool.seek(0)
        with path.open("w", encoding="utf-8") as out:
            shutil.copyfileobj(spool, out)
    return count


def _lists_import(args: argparse.Namespace, client: MemeServeClient) -> int:
    name = check_list_name(args.name)
    source: Path = args.file
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if source.is_dir():
        report = import_images(client, name, source, args.action, args.label)
        for file_name, reason in report.failed.items():
            _error(f"{file_name}: {reason}")
        print(
            f"added {len(report.added)} images to list {name} as {args.action}, "
            f"failed {len(report.failed)}"
        )
        return 1 if report.failed else 0
    if args.label is not None:
        raise InputError("--label applies to a directory of images, not to a term file")
    rows = read_term_file(source, args.action)

    def progress(action: str, count: int) -> None:
        print(f"sent {count} {action} terms", file=sys.stderr, flush=True)

    terms = import_terms(client, name, rows, progress=progress)
    by_action = ", ".join(f"{action}: {count}" for action, count in terms.sent.items())
    print(
        f"imported {terms.total} terms into list {name} ({by_action}) in {terms.requests} requests"
    )
    return 0


def _lists_export(args: argparse.Namespace, client: MemeServeClient) -> int:
    name = None if args.name is None else check_list_name(args.name)
    count = _write_out(args.out, lambda out: export_lists(client, out, name))
    print(f"exported {count} entries", file=sys.stderr)
    return 0


def _lists_stats(args: argparse.Namespace, client: MemeServeClient) -> int:
    print(stats_table(client.lists()))
    return 0


def _lists_remove(args: argparse.Namespace, client: MemeServeClient) -> int:
    name = check_list_name(args.name)
    if not args.terms and not args.images:
        raise InputError("name at least one TERM or --image ENTRY_ID to remove")
    if args.terms:
        count = remove_terms(client, name, args.terms)
        print(f"removed {count} terms from list {name} (absent ones are ignored)")
    for entry_id in args.images:
        client.remove_image(name, entry_id)
        print(f"removed image {entry_id} from list {name}")
    return 0


_LISTS_COMMANDS: dict[str, Callable[[argparse.Namespace, MemeServeClient], int]] = {
    "import": _lists_import,
    "export": _lists_export,
    "stats": _lists_stats,
    "remove": _lists_remove,
}


def run_lists(args: argparse.Namespace) -> int:
    """``memeserve lists import | export | stats | remove`` (``args.lists_command`` says which)."""
    command = _LISTS_COMMANDS[args.lists_command]
    return _run(args, lambda client: command(args, client))


def run_reviews(args: argparse.Namespace) -> int:
    """``memeserve reviews export [--audit]``: the reviewed set (or the audit) as JSON lines."""

    def export(client: MemeServeClient) -> int:
        if args.audit:
            count = _write_out(args.out, lambda out: export_audit(client, out))
            print(f"exported {count} audit rows to {args.out}", file=sys.stderr)
        else:
            count = _write_out(args.out, lambda out: export_reviews(client, out))
            print(f"exported {count} reviewed images to {args.out}", file=sys.stderr)
        return 0

    return _run(args, export)
