"""The bare-Serve anchor's answer shaping and ``make bench``'s goal ratios (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.bare_serve import APP_NAME, anchor_document, exact_key, stored_answers
from loadtest.bench_latency import EXACT_GOAL, NEAR_GOAL, goals
from serve_app.library.store import upload_key


def test_exact_key_hashes_the_bytes_as_the_library_does() -> None:
    data = b"\xff\xd8 some jpeg bytes"
    assert exact_key(data, "caption").split(":")[0] == upload_key(data, "s").split(":")[0]
    assert exact_key(data, "a") != exact_key(data, "b")
    assert exact_key(data, None) == exact_key(data, "")
    assert exact_key(data, None) != exact_key(data + b"!", None)


def test_stored_answers_map_each_upload_to_its_answer_json() -> None:
    answer = {"emotion": "joy", "meta": {"cache": {"hit": True, "match": "exact"}}}
    stored = stored_answers([(b"one", "t", answer), (b"two", None, {"emotion": "anger"})])
    assert json.loads(stored[exact_key(b"one", "t")]) == answer
    assert json.loads(stored[exact_key(b"two", None)]) == {"emotion": "anger"}
    assert len(stored) == 2


def test_anchor_document_is_one_application_of_its_own(tmp_path: Path) -> None:
    document = anchor_document(tmp_path / "answers.json")
    (app,) = document["applications"]
    assert app["name"] == APP_NAME != "memeserve"
    assert app["import_path"] == "loadtest.bare_serve:build"
    assert app["args"] == {"answers_path": str(tmp_path / "answers.json")}


def test_goals_compare_the_p50s() -> None:
    results = {
        "cache_hit_ms": {"n": 3, "p50": 12.0},
        "anchor_ms": {"n": 3, "p50": 10.0},
        "near_hit_ms": {"n": 3, "p50": 30.0},
    }
    got = goals(results)
    assert got["exact_over_anchor"] == 1.2 and got["exact_over_anchor_met"]
    assert got["near_over_exact"] == 2.5 and not got["near_over_exact_met"]
    assert (got["exact_over_anchor_goal"], got["near_over_exact_goal"]) == (EXACT_GOAL, NEAR_GOAL)


def test_goals_without_anchor_or_near_hits_are_not_met() -> None:
    got = goals({"cache_hit_ms": {"n": 1, "p50": 5.0}, "anchor_ms": None, "near_hit_ms": {"n": 0}})
    assert got["exact_over_anchor"] is None and not got["exact_over_anchor_met"]
    assert got["near_over_exact"] is None and not got["near_over_exact_met"]
