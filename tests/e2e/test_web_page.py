"""The web page (`GET /`) in a real browser: Debian's Chromium driven by Playwright.

The service is started as a user starts it (`make run` on a free-port copy of the CPU
profile, see test_make_run.py); the browser is /usr/bin/chromium (`make system-deps`
installs it), never one Playwright downloads. Screenshots go to artifacts/e2e/.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from loadtest.corpus import MemeSpec, meme_bytes
from tests.e2e.browser import (
    PHONE,
    PageWatch,
    chromium,
    require_browser,
    running_service,
    watched_page,
)
from tests.e2e.browser import screenshot as _screenshot
from tests.support.make_run import shipped_profile_on_free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

RESULT_TIMEOUT_MS = 120_000
SVG_AS_JPEG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
ACTIONS_ZH = {"pass": "放行", "throttle": "限流", "tag": "标记复核", "block": "拦截"}


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make run` on a free-port copy of dev-cpu.yaml; stopped with Ctrl-C after the module."""
    require_browser()
    profile = shipped_profile_on_free_port("dev-cpu.yaml", tmp_path_factory.mktemp("web-profile"))
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


def _meme(tmp_path: Path, template: int, name: str = "meme.png") -> tuple[Path, bytes]:
    data = meme_bytes(MemeSpec(template=template, top="你说得对，但是", bottom="阴阳怪气"), "PNG")
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def _evil(tmp_path: Path) -> Path:
    path = tmp_path / "evil.jpg"
    path.write_bytes(SVG_AS_JPEG)
    return path


def _open(page: Page, url: str) -> None:
    page.goto(f"{url}/", wait_until="load")
    from playwright.sync_api import expect

    expect(page.get_by_test_id("service-status")).to_contain_text("服务就绪")


def _analyze(page: Page, image: Path, context: str = "") -> None:
    """Choose the image, type the context, submit and wait for the request to finish."""
    from playwright.sync_api import expect

    page.get_by_test_id("file-input").set_input_files(str(image))
    if context:
        page.get_by_test_id("context").fill(context)
    with page.expect_response(lambda r: r.url.endswith("/v1/memes/analyze"), timeout=120_000):
        page.get_by_test_id("submit").click()
    # The page renders right after the body arrives; the button comes back when done.
    expect(page.get_by_test_id("submit")).to_be_enabled(timeout=RESULT_TIMEOUT_MS)


def test_page_loads_with_no_request_beyond_the_service(watch: PageWatch, service_url: str) -> None:
    from playwright.sync_api import expect

    page = watch.page
    response = page.goto(f"{service_url}/", wait_until="networkidle")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    expect(page).to_have_title("表情包分析 · memeserve")
    expect(page.get_by_test_id("service-status")).to_contain_text("lite")
    for test_id in ("file-input", "context", "submit"):
        expect(page.get_by_test_id(test_id)).to_have_count(1)
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.get_by_test_id("result")).to_be_hidden()
    expect(page.get_by_test_id("submit")).to_be_disabled()  # nothing chosen yet
    # Labels for assistive technology.
    expect(page.get_by_label("上下文（可选）", exact=False)).to_have_count(1)

    assert watch.requests, "the page made no request at all"
    foreign = watch.foreign_requests(service_url)
    assert not foreign, f"requests beyond the service: {foreign}"
    assert not watch.errors, watch.errors


def test_the_api_docs_render_offline_from_the_service_alone(
    watch: PageWatch, service_url: str
) -> None:
    """/docs is Swagger UI with every file served by memeserve: no CDN, works offline."""
    from playwright.sync_api import expect

    page = watch.page
    response = page.goto(f"{service_url}/docs", wait_until="networkidle")
    assert response is not None and response.status == 200
    # Swagger UI rendered the document: one block per operation, the analyze route first.
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=30_000)
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/memes/analyze")
    foreign = watch.foreign_requests(service_url)
    assert not foreign, f"requests beyond the service: {foreign}"
    assert not watch.errors, watch.errors
    _screenshot(page, "docs.png")


def test_upload_shows_the_analysis_desktop_and_phone(
    watch: PageWatch, browser: Browser, service_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    image, data = _meme(tmp_path, template=3)
    _open(page, service_url)
    page.get_by_test_id("file-input").set_input_files(str(image))
    expect(page.get_by_test_id("preview")).to_be_visible()
    expect(page.get_by_test_id("file-name")).to_contain_text("meme.png")
    _analyze(page, image, context="这图太真实了，评论区已经吵起来了")

    expect(page.get_by_test_id("error")).to_be_hidden()
    result = page.get_by_test_id("result")
    expect(result).to_be_visible()
    expect(page.get_by_test_id("emotion")).to_contain_text("讽刺")
    expect(page.get_by_test_id("emotion")).to_contain_text("sarcasm")
    expect(page.get_by_test_id("ocr")).to_contain_text("你说得对")
    expect(page.get_by_test_id("slang")).to_contain_text("你说得对但是")
    expect(page.get_by_test_id("explanation")).not_to_be_empty()
    risk = page.get_by_test_id("risk")
    action = page.get_by_test_id("risk-action").get_attribute("data-value")
    assert action in ACTIONS_ZH, action
    expect(risk).to_contain_text(ACTIONS_ZH[action])
    meta = page.get_by_test_id("meta")
    for text in ("lite", "memeserve-lite@lite-1", "600 × 600", "ms"):
        expect(meta).to_contain_text(text)
    request_id = result.get_attribute("data-request-id")
    assert request_id and request_id in meta.inner_text()

    # What the page shows is what the JSON API says about the same bytes.
    api = httpx.post(
        f"{service_url}/v1/memes/analyze",
        files={"image": ("meme.png", data)},
        data={"text": "这图太真实了，评论区已经吵起来了"},
        timeout=120,
    )
    assert api.status_code == 200, api.text
    body = api.json()
    assert body["emotion"] == "sarcasm"
    expect(page.get_by_test_id("emotion")).to_contain_text(body["emotion_zh"])
    assert body["risk"]["action"] == action
    expect(page.get_by_test_id("intent")).to_contain_text(body["intent"])
    percent = math.floor(body["confidence"] * 100 + 0.5)  # JavaScript's Math.round
    expect(page.get_by_test_id("confidence")).to_have_text(f"{percent}%")
    _screenshot(page, "web_page_result.png")

    phone = PageWatch(browser, PHONE)
    try:
        _open(phone.page, service_url)
        _analyze(phone.page, image, context="这图太真实了，评论区已经吵起来了")
        expect(phone.page.get_by_test_id("emotion")).to_contain_text("讽刺")
        expect(phone.page.get_by_test_id("meta")).to_contain_text("命中")  # a cache hit now
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"
        _screenshot(phone.page, "web_page_phone.png")
        assert not phone.errors, phone.errors
    finally:
        phone.context.close()
    assert not watch.errors, watch.errors


def test_svg_named_jpg_is_refused_with_415(
    watch: PageWatch, service_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    _analyze(page, _evil(tmp_path))

    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("415")
    expect(error).to_contain_text("unsupported_media_type")
    expect(error).to_contain_text("不支持的文件类型")
    expect(error).to_contain_text("request_id")
    expect(page.get_by_test_id("result")).to_be_hidden()
    assert not watch.dialogs, f"the SVG's script ran: {watch.dialogs}"
    assert not watch.errors, watch.errors
    _screenshot(page, "web_page_refusal.png")


def test_a_good_upload_after_a_refusal_works_again(
    watch: PageWatch, service_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    _analyze(page, _evil(tmp_path))
    expect(page.get_by_test_id("error")).to_contain_text("415")

    image, _ = _meme(tmp_path, template=11, name="again.png")
    _analyze(page, image)
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(page.get_by_test_id("result")).to_be_visible()
    expect(page.get_by_test_id("emotion")).to_contain_text("讽刺")
    expect(page.get_by_test_id("ocr")).to_contain_text("你说得对")
    assert not watch.dialogs and not watch.errors, (watch.dialogs, watch.errors)


def test_drop_and_paste_choose_the_image(
    watch: PageWatch, service_url: str, tmp_path: Path
) -> None:
    """Drag-and-drop onto the zone and Ctrl-V of an image both choose it (synthetic events)."""
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    _, data = _meme(tmp_path, template=21)
    encoded = base64.b64encode(data).decode("ascii")
    make_transfer = """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        return transfer;
    }"""
    dropped = page.evaluate_handle(make_transfer, [encoded, "dropped.png"])
    page.get_by_test_id("drop-zone").dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.get_by_test_id("file-name")).to_contain_text("dropped.png")
    expect(page.get_by_test_id("preview")).to_be_visible()

    page.evaluate(
        """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer}));
    }""",
        [encoded, "pasted.png"],
    )
    expect(page.get_by_test_id("file-name")).to_contain_text("pasted.png")
    with page.expect_response(lambda r: r.url.endswith("/v1/memes/analyze")) as response:
        page.get_by_test_id("submit").click()
    assert response.value.status == 200
    expect(page.get_by_test_id("emotion")).to_contain_text("讽刺", timeout=RESULT_TIMEOUT_MS)
    assert not watch.errors, watch.errors


def _answer_with_error(
    status: int, code: str, headers: dict[str, str] | None = None
) -> Callable[[Route], None]:
    """A route handler that answers as the service does on an error."""
    error = {"code": code, "message": f"server says {code}", "request_id": f"r-{status}"}

    def handler(route: Route) -> None:
        route.fulfill(status=status, headers=headers or {}, json={"error": error})

    return handler


def test_every_error_status_gets_its_own_message(
    watch: PageWatch, service_url: str, tmp_path: Path
) -> None:
    """The page's side of the error contract, with the service's answers replaced in the browser."""
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    image, _ = _meme(tmp_path, template=4)
    page.get_by_test_id("file-input").set_input_files(str(image))
    error = page.get_by_test_id("error")
    cases = [
        (400, "bad_input", "损坏"),
        (401, "unauthorized", "身份验证"),
        (403, "forbidden", "无权"),
        (413, "payload_too_large", "图片过大"),
        (415, "unsupported_media_type", "JPEG、PNG、GIF、WebP、BMP"),
        (422, "invalid_request", "请求无效"),
        (502, "engine_error", "引擎"),
        (504, "deadline_exceeded", "超时"),
        (418, "teapot", "意外"),
    ]
    for status, code, words in cases:
        page.route("**/v1/memes/analyze", _answer_with_error(status, code))
        page.get_by_test_id("submit").click()
        expect(error).to_contain_text(f"HTTP {status}")
        for text in (code, words, f"server says {code}", f"r-{status}"):
            expect(error).to_contain_text(text)
        expect(page.get_by_test_id("submit")).to_be_enabled()
        page.unroute("**/v1/memes/analyze")

    # Shedding: the Retry-After seconds are shown and the button waits them out.
    for status in (429, 503):
        shed = _answer_with_error(status, "unavailable", {"Retry-After": "2"})
        page.route("**/v1/memes/analyze", shed)
        page.get_by_test_id("submit").click()
        expect(error).to_contain_text(f"HTTP {status}")
        expect(error).to_contain_text("2 秒后重试")
        expect(page.get_by_test_id("submit")).to_be_disabled()
        expect(page.get_by_test_id("submit")).to_be_enabled(timeout=5_000)
        page.unroute("**/v1/memes/analyze")

    def fail(route: Route) -> None:
        route.abort("connectionrefused")

    page.route("**/v1/memes/analyze", fail)
    page.get_by_test_id("submit").click()
    expect(error).to_contain_text("网络错误")
    page.unroute("**/v1/memes/analyze")
    assert not watch.errors, watch.errors


def test_server_strings_are_shown_as_text_never_markup(
    watch: PageWatch, service_url: str, tmp_path: Path
) -> None:
    """Explanation, OCR lines and slang are untrusted: markup in them stays literal text."""
    from playwright.sync_api import expect

    page = watch.page
    _open(page, service_url)
    image, data = _meme(tmp_path, template=6)
    real = httpx.post(
        f"{service_url}/v1/memes/analyze", files={"image": ("m.png", data)}, timeout=120
    ).json()
    payload = "<img src=x onerror=alert(1)><b>粗</b>"
    real["explanation"] = payload
    real["evidence"] = {"ocr_text": [f"<script>alert(2)</script>{payload}"], "slang": [payload]}
    real["meta"]["warnings"] = [payload]
    page.route(
        "**/v1/memes/analyze",
        lambda route: route.fulfill(status=200, content_type="application/json", json=real),
    )
    _analyze(page, image)
    expect(page.get_by_test_id("explanation")).to_have_text(payload)
    expect(page.get_by_test_id("ocr")).to_contain_text("<script>alert(2)</script>")
    expect(page.get_by_test_id("slang")).to_contain_text(payload)
    expect(page.get_by_test_id("meta")).to_contain_text(payload)
    expect(page.locator("[data-testid=result] img, [data-testid=result] b")).to_have_count(0)
    page.wait_for_timeout(300)
    assert not watch.dialogs, watch.dialogs
    assert not any("foreign" in u or u.endswith("/x") for u in watch.requests), watch.requests
    assert not watch.errors, watch.errors
