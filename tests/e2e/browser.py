"""What the browser tests of the web pages share: Debian's Chromium driven by Playwright.

The service is started as a user starts it (`make run` on a free-port copy of a profile,
see test_make_run.py); the browser is /usr/bin/chromium (`make system-deps` installs it),
never one Playwright downloads. Screenshots go to artifacts/e2e/.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.make_run import Service, stop_and_check
from tests.support.paths import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

ARTIFACTS = ROOT / "artifacts" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


def require_browser() -> None:
    """Skip without Chromium or Playwright, unless MEMESERVE_REQUIRE_BROWSER=1 (make sets it)."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} is missing (`make system-deps` installs Debian's chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package is missing (`pip install -e '.[dev]'`)")
    if missing:
        reason = "web page browser test: " + "; ".join(missing)
        if os.environ.get("MEMESERVE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def running_service(profile: Path) -> Iterator[str]:
    """`make run CONFIG=profile` until ready; yields its URL, then stops it with Ctrl-C."""
    service = Service(profile)
    try:
        match = service.wait_for_line(r"memeserve: ready in [0-9.]+ s at (http://\S+)", 300)
        url = match.group(1)
        yield url
        stop_and_check(service, url)
    finally:
        service.ensure_stopped()


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """A fresh page plus what it did: requests, script errors, dialogs."""

    def __init__(self, browser: Browser, viewport: ViewportSize) -> None:
        self.context = browser.new_context(viewport=viewport, locale="zh-CN")
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def foreign_requests(self, service_url: str) -> list[str]:
        """The requests that went anywhere but the service (data: and blob: URLs are local)."""
        return [
            u
            for u in self.requests
            if not (u.startswith(f"{service_url}/") or u.startswith(("data:", "blob:")))
        ]


@contextmanager
def watched_page(browser: Browser, viewport: ViewportSize = DESKTOP) -> Iterator[PageWatch]:
    """A :class:`PageWatch` whose browser context is closed afterwards."""
    watch = PageWatch(browser, viewport)
    try:
        yield watch
    finally:
        watch.context.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot under artifacts/e2e/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path
