"""/dashboard and /docs in a real browser: headless Chromium driven by Playwright.

A real server (``python -m service``) runs on a loopback port with an API key; the browser
opens the pages, enters the key once, and must show live numbers from the server. Every
request the browser makes is intercepted: one that leaves 127.0.0.1 fails the test (the pages
must work offline, with no CDN). Console errors (a refused CSP, a script error) fail it too.

Needs Debian's ``chromium`` and the ``playwright`` package; ``scripts/install_browser.sh``
installs both. Without them the test is skipped with that reason (pytest prints it: -rs).
Set MONOLITH_TEST_SCREENSHOTS=DIR to keep a screenshot of each page.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.conftest import run_server, unit_rows
from vqvae.api import Monolith

INSTALL = "run scripts/install_browser.sh (apt-get install chromium; pip install playwright)"
CHROMIUM = os.environ.get("MONOLITH_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = "browser-test-key"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

sync_api = pytest.importorskip("playwright.sync_api", reason=f"the playwright package is not installed: {INSTALL}")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium browser at {CHROMIUM}: {INSTALL}", allow_module_level=True)


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"MONOLITH_API_KEY": KEY, "MONOLITH_LOAD_TEXT_MODEL": "false", "MONOLITH_BATCH_WAIT_MS": "1"}
    with run_server(tmp_path_factory.mktemp("browser"), env) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser context and page that records foreign requests and console errors."""

    def __init__(self, browser: object, base: str) -> None:
        self.base = base
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(base_url=base)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, route: object) -> None:
        url = route.request.url
        if urlsplit(url).hostname not in LOCAL_HOSTS:
            self.foreign.append(url)
            route.abort()
        else:
            route.continue_()

    def enter_key(self) -> None:
        self.page.wait_for_selector("#key-form")
        self.page.fill("#api-key", KEY)
        self.page.click("#key-form button[type=submit]")

    def check_clean(self) -> None:
        assert self.foreign == [], f"requests left the machine: {self.foreign}"
        # A 401 shown before the key is entered is the page working as meant, not an error.
        real = [e for e in self.errors if "401" not in e]
        assert real == [], f"console errors: {real}"

    def shot(self, name: str) -> None:
        folder = os.environ.get("MONOLITH_TEST_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: object, locked_server: str) -> Iterator[Page]:
    p = Page(browser, locked_server)
    try:
        yield p
    finally:
        p.close()


def api(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {KEY}"})


def poll(page: Page, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until ``expression`` is truthy in the page. (Playwright's wait_for_function evaluates
    a string with eval, which the pages' Content-Security-Policy refuses, as it should.)"""
    deadline = time.monotonic() + timeout_s
    while not page.page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout_s} s: {expression}"
        time.sleep(0.1)


def vectors_counted(page: Page) -> int:
    return int(page.page.get_attribute("#traffic-counted", "data-vectors"))


def test_dashboard_shows_live_numbers_after_the_key(page: Page, locked_server: str, monolith: Monolith) -> None:
    with api(locked_server) as http:
        assert http.put("/collections/browser-notes").status_code in (200, 201)
        items = [{"id": f"n{i}", "embedding": row} for i, row in enumerate(unit_rows(37, seed=81).tolist())]
        assert http.post("/collections/browser-notes/items", json={"items": items}).status_code == 200
        http.post("/encode", json={"embeddings": unit_rows(300, seed=82).tolist()})
        before = http.get("/codebook/health").json()

    page.page.goto("/dashboard")
    page.enter_key()
    page.page.wait_for_selector("body[data-loaded=true]")
    p = page.page
    # The model card, from /model.
    assert p.text_content("#model-sha256") == monolith.sha256
    assert p.text_content("#model-bytes-per-vector") == str(monolith.config.bytes_per_vector)
    # Traffic health: the vectors counted so far, its status and drift, per head.
    counted = vectors_counted(page)
    assert counted >= max(h["total"] for h in before["heads"]) > 0
    assert p.get_attribute("#traffic-status", "data-status") == "insufficient_data"  # < 20 per code yet
    assert p.get_attribute("#reference-status", "data-status") == "healthy"
    assert p.get_attribute("#drift-status", "data-status") in {"ok", "drifted", "insufficient_data"}
    assert p.locator("#heads tbody tr").count() == monolith.config.num_heads
    first = p.locator("#heads tbody tr").first.locator("td")
    assert re.fullmatch(r"\d+/256", first.nth(1).text_content())
    assert re.fullmatch(r"\d\.\d\d", first.nth(2).text_content())
    # Both rank–frequency plots, served by the service itself.
    for img in ("#plot-traffic", "#plot-reference"):
        poll(page, f"document.querySelector('{img}').naturalWidth > 0")
    # Collections with their sizes.
    row = p.locator("#collection-table tbody tr[data-collection='browser-notes'] td")
    assert row.nth(0).text_content() == "browser-notes" and row.nth(1).text_content() == "37"
    assert re.fullmatch(r"[\d.]+ B · \d+ B", row.nth(3).text_content()) and row.nth(4).text_content() == "int8"
    assert row.nth(5).text_content() == "generic"  # not fitted: the server's checkpoint's codes
    page.shot("dashboard")

    # Live: more traffic, one refresh, a larger count.
    with api(locked_server) as http:
        http.post("/encode", json={"embeddings": unit_rows(250, seed=83).tolist()})
    p.click("#refresh")
    poll(page, f"Number(document.querySelector('#traffic-counted').dataset.vectors) >= {counted + 250}")
    page.check_clean()


def test_dashboard_shows_no_data_without_the_key(page: Page, monolith: Monolith) -> None:
    page.page.goto("/dashboard")
    page.page.wait_for_selector("#key-form")
    assert page.page.is_hidden("#content")
    html = page.page.content()
    assert monolith.sha256 not in html
    page.page.fill("#api-key", "wrong-key")
    page.page.click("#key-form button[type=submit]")
    page.page.wait_for_selector("#key-form")  # asked again: the wrong key shows nothing
    assert "wrong API key" in page.page.text_content("#auth")
    assert page.page.is_hidden("#content")
    page.check_clean()


def test_docs_render_swagger_ui_from_local_files(page: Page, monolith: Monolith) -> None:
    seen: list[str] = []
    page.page.on("request", lambda req: seen.append(req.url))
    page.page.goto("/docs")
    assert page.page.locator(".opblock").count() == 0  # no schema without the key
    page.enter_key()
    p = page.page
    p.wait_for_selector(".swagger-ui .info .title")
    assert "Monolith" in p.text_content(".swagger-ui .info .title")
    for path in ("/encode", "/decode", "/codebook/health", "/collections"):
        assert p.locator(f".opblock-summary-path[data-path='{path}']").count() >= 1, path
    assert any(u.endswith("/swagger-ui/swagger-ui-bundle.js") for u in seen)
    # "Try it out" on GET /model sends the key entered once: 200 with the checkpoint's checksum.
    op = p.locator(".opblock-get:has(.opblock-summary-path[data-path='/model'])").first
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for()
    assert status.text_content().strip() == "200"
    assert monolith.sha256 in op.locator(".live-responses-table tr.response pre").first.text_content()
    page.shot("docs")
    page.check_clean()


def test_without_a_server_key_the_pages_need_none(browser: object, server: str, monolith: Monolith) -> None:
    page = Page(browser, server)
    try:
        page.page.goto("/dashboard")
        page.page.wait_for_selector("body[data-loaded=true]")
        assert page.page.is_hidden("#auth") and page.page.is_hidden("#forget-key")
        assert page.page.text_content("#model-sha256") == monolith.sha256
        assert page.page.text_content("#model-text-model") != "off (embeddings only)"  # this one embeds texts
        page.page.goto("/docs")
        page.page.wait_for_selector(".swagger-ui .info .title")
        page.check_clean()
    finally:
        page.close()
