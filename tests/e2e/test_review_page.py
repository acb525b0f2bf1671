"""The moderators' review page (`GET /review`) in a real browser, against the real service.

`make run` on a free-port copy of dev-cpu.yaml with two API keys (one with the admin
scope, one that may only analyse) and its own library and scenes files. Memes with an
offensive caption are analysed over HTTP first, so the page has decisions to review.
Every check waits on the page's state or the API's answer, never on time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from loadtest.corpus import MemeSpec, meme_bytes
from tests.e2e.browser import (
    PHONE,
    PageWatch,
    chromium,
    require_browser,
    running_service,
    screenshot,
    watched_page,
)
from tests.support.make_run import shipped_profile_on_free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

ADMIN_KEY = "review-page-test-admin-key"
READ_KEY = "review-page-test-analyze-only-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
REVIEWER = "审核员小王"
# 傻逼 / 脑残: offensiveness 3 and 2 in serve_app/understanding/data/slang_lexicon.yaml.
ACCEPT_CAPTION = ("你就是个傻逼", "别说话")
CORRECT_CAPTION = ("你是真的傻逼", "脑残")
PLANTED = "<img src=x onerror=alert(1)>"
CONTEXT = f"评论区原话：{PLANTED}"
ACTIONS_ZH = {"pass": "放行", "throttle": "限流", "tag": "标记复核", "block": "拦截"}
EMOTIONS_ZH = {"anger": "愤怒", "neutral": "中性", "sarcasm": "讽刺", "disgust": "厌恶"}
INTENTS_ZH = {"offensive": "冒犯", "expressive": "表达", "other": "其他"}
CORRECTED = {"emotion": "neutral", "intent": "other", "sarcastic": False, "offensiveness": 0}


def _with_keys(profile: Path, directory: Path) -> Path:
    """The profile with an admin and an analyse-only key and fresh library/scenes files."""
    document = yaml.safe_load(profile.read_text("utf-8"))
    args = document["applications"][0]["args"]
    args["cache"]["sqlite_path"] = str(directory / "library.sqlite3")
    args.setdefault("scenes", {})["sqlite_path"] = str(directory / "scenes.sqlite3")
    args.setdefault("security", {})["api_keys"] = [
        {
            "name": "moderator",
            "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
            "scopes": ["analyze", "admin"],
        },
        {
            "name": "web-tier",
            "sha256": hashlib.sha256(READ_KEY.encode()).hexdigest(),
            "scopes": ["analyze"],
        },
    ]
    profile.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return profile


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_browser()
    directory = tmp_path_factory.mktemp("review-profile")
    profile = _with_keys(shipped_profile_on_free_port("dev-cpu.yaml", directory), directory)
    with running_service(profile) as url:
        yield url


@pytest.fixture(scope="module")
def browser(service_url: str) -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def watch(browser: Browser) -> Iterator[PageWatch]:
    with watched_page(browser) as watch:
        yield watch


@dataclass(frozen=True)
class Analysed:
    """One meme analysed over HTTP before the page is opened."""

    image: bytes
    body: dict[str, Any]

    @property
    def request_id(self) -> str:
        return str(self.body["request_id"])


def _analyse(url: str, image: bytes, key: str, text: str | None = CONTEXT) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/memes/analyze",
        files={"image": ("meme.png", image)},
        data={"text": text} if text is not None else {},
        headers={"authorization": f"Bearer {key}"},
        timeout=120,
    )


@pytest.fixture(scope="module")
def memes(service_url: str) -> dict[str, Analysed]:
    """Two offensive memes (each with the planted markup as context), analysed by the
    analyse-only key: one to accept, one to correct."""
    analysed = {}
    for name, template, (top, bottom) in (
        ("accept", 31, ACCEPT_CAPTION),
        ("correct", 33, CORRECT_CAPTION),
    ):
        image = meme_bytes(MemeSpec(template=template, top=top, bottom=bottom), "PNG")
        response = _analyse(service_url, image, READ_KEY)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["offensiveness"] >= 2, body
        assert body["risk"]["action"] != "pass", body
        analysed[name] = Analysed(image, body)
    return analysed


def _open(page: Page, url: str) -> None:
    """Open the page and wait until its first load of the decisions has answered."""
    from playwright.sync_api import expect

    response = page.goto(f"{url}/review", wait_until="load")
    assert response is not None and response.status == 200, (
        response and f"{response.status}: {response.text()[:300]}"
    )
    expect(page.get_by_test_id("decisions")).to_have_attribute(
        "data-state", re.compile("ready|error")
    )


def _use_key(page: Page, key: str) -> None:
    """Type the key and press 使用; returns once the list and the audit have loaded."""
    from playwright.sync_api import expect

    page.get_by_test_id("admin-key").fill(key)
    with page.expect_request(lambda r: "/v1/decisions" in r.url) as request:
        page.get_by_test_id("save-key").click()
    assert request.value.headers.get("authorization") == f"Bearer {key}"
    state = re.compile("ready|error")
    expect(page.get_by_test_id("decisions")).to_have_attribute("data-state", state)
    expect(page.get_by_test_id("audit")).to_have_attribute("data-state", state)


def _card(page: Page, request_id: str) -> Locator:
    return page.locator(f'[data-testid="decision"][data-request-id="{request_id}"]')


def _admin_reviews(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/reviews?limit=20", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["reviews"])


def test_page_loads_with_no_request_beyond_the_service(watch: PageWatch, service_url: str) -> None:
    from playwright.sync_api import expect

    page = watch.page
    response = page.goto(f"{service_url}/review", wait_until="load")
    assert response is not None and response.status == 200, (
        response and f"{response.status}: {response.text()[:300]}"
    )
    assert response.headers["content-type"].startswith("text/html")
    expect(page).to_have_title("内容复核 · memeserve")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    for test_id in ("admin-key", "reviewer", "filter", "decisions", "audit"):
        expect(page.get_by_test_id(test_id)).to_have_count(1)
    expect(page.get_by_test_id("admin-key")).to_have_attribute("type", "password")
    expect(page.get_by_test_id("decisions")).to_have_attribute(
        "data-state", re.compile("ready|error")
    )

    # The same Content-Security-Policy as the analysis page, header and <meta> alike.
    index = httpx.get(f"{service_url}/", timeout=30)
    assert response.headers.get("content-security-policy") == index.headers.get(
        "content-security-policy"
    )
    meta = 'meta[http-equiv="Content-Security-Policy"]'
    csp = page.locator(meta).get_attribute("content")
    index_csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', index.text)
    assert index_csp is not None and csp == index_csp.group(1)

    assert watch.requests, "the page made no request at all"
    assert not watch.foreign_requests(service_url), watch.foreign_requests(service_url)
    assert not watch.errors, watch.errors


def test_without_a_key_or_with_an_analyse_only_key_the_page_says_why(
    watch: PageWatch, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-status", "401")
    expect(error).to_contain_text("需要管理员密钥")
    expect(page.get_by_test_id("decision")).to_have_count(0)

    _use_key(page, READ_KEY)
    expect(error).to_have_attribute("data-status", "403")
    expect(error).to_contain_text("此密钥没有管理权限")
    expect(page.get_by_test_id("decision")).to_have_count(0)
    expect(page.get_by_test_id("audit-entry")).to_have_count(0)
    assert not watch.errors, watch.errors


def test_the_admin_sees_the_decision_with_its_thumbnail_and_the_context_as_text(
    watch: PageWatch, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    analysed = memes["accept"]
    _open(page, service_url)
    _use_key(page, ADMIN_KEY)
    expect(page.get_by_test_id("error")).to_be_hidden()
    card = _card(page, analysed.request_id)
    expect(card).to_have_count(1)

    thumbnail = card.get_by_test_id("thumbnail")
    expect(thumbnail).to_be_visible()
    assert (thumbnail.get_attribute("src") or "").startswith("data:image/")
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")
    # The planted markup is shown as text: no element made of it, no script run.
    expect(card.get_by_test_id("context")).to_have_text(CONTEXT)
    expect(card.locator("img")).to_have_count(1)
    assert not watch.dialogs, watch.dialogs

    body = analysed.body
    expect(card.get_by_test_id("request-id")).to_contain_text(analysed.request_id)
    action = body["risk"]["action"]
    expect(card.get_by_test_id("action")).to_have_attribute("data-value", action)
    expect(card.get_by_test_id("action")).to_contain_text(ACTIONS_ZH[action])
    expect(card.get_by_test_id("policy")).to_contain_text(body["risk"].get("policy", "default"))
    expect(card.get_by_test_id("label-emotion")).to_have_text(EMOTIONS_ZH[body["emotion"]])
    expect(card.get_by_test_id("label-intent")).to_have_text(INTENTS_ZH[body["intent"]])
    expect(card.get_by_test_id("label-offensiveness")).to_contain_text(
        f"{body['offensiveness']} / 3"
    )
    expect(card.get_by_test_id("ocr")).to_contain_text(ACCEPT_CAPTION[0])
    expect(card.get_by_test_id("explanation")).to_have_text(body["explanation"])
    expect(card).to_have_attribute("data-reviewed", "false")

    # The default list asks without an `actions` parameter, 全部 with actions=all.
    with page.expect_response(lambda r: "/v1/decisions" in r.url) as listed:
        page.get_by_test_id("filter").select_option("all")
    assert "actions=all" in listed.value.url and listed.value.status == 200
    expect(page.get_by_test_id("decisions")).to_have_attribute("data-state", "ready")
    expect(_card(page, analysed.request_id)).to_have_count(1)

    # The key is kept for this tab: a reload signs in by itself.
    with page.expect_request(lambda r: "/v1/decisions" in r.url) as again:
        page.reload(wait_until="load")
    assert again.value.headers.get("authorization") == f"Bearer {ADMIN_KEY}"
    assert "actions=" not in again.value.url
    expect(_card(page, analysed.request_id)).to_have_count(1)
    assert not watch.foreign_requests(service_url), watch.foreign_requests(service_url)
    assert not watch.dialogs and not watch.errors, (watch.dialogs, watch.errors)


def test_accept_marks_the_card_reviewed_and_the_audit_lists_it(
    watch: PageWatch, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    analysed = memes["accept"]
    _open(page, service_url)
    _use_key(page, ADMIN_KEY)
    page.get_by_test_id("reviewer").fill(REVIEWER)
    card = _card(page, analysed.request_id)
    path = f"/v1/decisions/{analysed.request_id}/accept"
    with page.expect_response(lambda r: r.url.endswith(path)) as accepted:
        card.get_by_test_id("accept").click()
    assert accepted.value.status == 201, accepted.value.text()
    assert accepted.value.request.post_data_json == {"reviewer": REVIEWER}
    expect(card).to_have_attribute("data-reviewed", "true")
    expect(card.get_by_test_id("review-status")).to_contain_text("已复核")
    expect(card.get_by_test_id("review-status")).to_contain_text(REVIEWER)

    entry = page.locator(f'[data-testid="audit-entry"][data-request-id="{analysed.request_id}"]')
    expect(entry.first).to_be_visible()
    expect(entry.first).to_contain_text(REVIEWER)
    reviews = [r for r in _admin_reviews(service_url) if r["request_id"] == analysed.request_id]
    assert reviews and reviews[0]["reviewer"] == REVIEWER, reviews
    assert reviews[0]["after"]["emotion"] == analysed.body["emotion"], reviews

    unknown = httpx.post(
        f"{service_url}/v1/decisions/no-such-request/accept", json={}, headers=ADMIN, timeout=30
    )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["message"], unknown.text
    assert not watch.errors, watch.errors


def test_a_correction_is_audited_and_answers_the_next_analysis(
    watch: PageWatch, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    analysed = memes["correct"]
    _open(page, service_url)
    _use_key(page, ADMIN_KEY)
    page.get_by_test_id("reviewer").fill(REVIEWER)
    card = _card(page, analysed.request_id)
    card.get_by_test_id("correct").click()
    card.get_by_test_id("emotion").select_option("neutral")
    card.get_by_test_id("intent").select_option("other")
    card.get_by_test_id("offensiveness").select_option("0")
    card.get_by_test_id("sarcastic").set_checked(False)
    card.get_by_test_id("note").fill("只是朋友间开玩笑")
    with page.expect_response(lambda r: r.url.endswith("/v1/reviews")) as posted:
        card.get_by_test_id("submit-correction").click()
    assert posted.value.status == 201, posted.value.text()
    assert posted.value.request.post_data_json == {
        "request_id": analysed.request_id,
        "labels": CORRECTED,
        "reviewer": REVIEWER,
        "note": "只是朋友间开玩笑",
    }
    expect(card).to_have_attribute("data-reviewed", "true")
    expect(card.get_by_test_id("correction")).to_be_hidden()
    expect(card.get_by_test_id("review-status")).to_contain_text("中性 · 其他 · 冒犯 0")

    entry = page.locator(
        f'[data-testid="audit-entry"][data-request-id="{analysed.request_id}"]'
    ).first
    change = entry.get_by_test_id("audit-change")
    body = analysed.body
    before = f"{EMOTIONS_ZH[body['emotion']]} · {INTENTS_ZH[body['intent']]}"
    expect(change).to_contain_text(f"{before} · 冒犯 {body['offensiveness']}")
    expect(change).to_contain_text("→")
    expect(change).to_contain_text("中性 · 其他 · 冒犯 0 · 非反讽")
    expect(entry).to_contain_text(REVIEWER)
    expect(entry).to_contain_text("只是朋友间开玩笑")
    review = next(r for r in _admin_reviews(service_url) if r["request_id"] == analysed.request_id)
    assert review["after"] == CORRECTED, review
    assert review["before"]["emotion"] == analysed.body["emotion"], review

    # The reviewer's labels are now the answer for this image, with or without context.
    for text in (CONTEXT, None):
        response = _analyse(service_url, analysed.image, ADMIN_KEY, text)
        assert response.status_code == 200, response.text
        body = response.json()
        labels = {k: body[k] for k in CORRECTED}
        assert labels == CORRECTED, (text, body)
        assert body["risk"]["decided_by"] == "review", (text, body["risk"])
    assert not watch.errors, watch.errors


def test_phone_width_has_no_horizontal_scroll(
    browser: Browser, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    with watched_page(browser, PHONE) as phone:
        page = phone.page
        _open(page, service_url)
        _use_key(page, ADMIN_KEY)
        card = _card(page, memes["correct"].request_id)
        expect(card).to_be_visible()
        card.get_by_test_id("correct").click()
        expect(card.get_by_test_id("submit-correction")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the review page scrolls sideways on a phone ({width}px)"
        screenshot(page, "review-page-phone.png")
        assert not phone.errors, phone.errors


def test_screenshot_of_the_review_page(
    watch: PageWatch, service_url: str, memes: dict[str, Analysed]
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    _use_key(page, ADMIN_KEY)
    expect(page.get_by_test_id("decision").first).to_be_visible()
    expect(page.get_by_test_id("audit-entry").first).to_be_visible()
    screenshot(page, "review-page.png")
    assert not watch.errors, watch.errors
