"""The web demo in a real browser: headless Debian chromium driven by Playwright (never `playwright install`).

Open the page, pick a class, click Generate, wait for the gallery's images, save a screenshot, and check
that no request left the machine. Skips when chromium or playwright is absent (CI installs both, .ci/run).
Set VAR_ENGINE_SCREENSHOT=PATH to keep the screenshot (the README's serve/screenshot.png is made so).
"""
import os
import shutil
import socket
from urllib.parse import urlparse

import pytest

pytest.importorskip("gradio", reason="the web demo needs the 'serve' extra: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("VAR_ENGINE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no chromium executable (apt-get install -y chromium, or set VAR_ENGINE_CHROMIUM)",
                allow_module_level=True)

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # Gradio's queue on pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps"]


@pytest.fixture(scope="module")
def url():
    from var_engine import Pipeline
    from var_engine_serve.app import ServeSettings, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(Pipeline.from_pretrained(), ServeSettings(port=port), block=False)
    yield app.local_url
    app.close()


def test_pick_a_class_generate_and_screenshot(url, tmp_path):
    hosts = set()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: hosts.add(urlparse(r.url).hostname) if r.url.startswith("http") else None)
            # the page holds a heartbeat stream open (per-session state), so wait for the app, not network idle
            page.goto(url, wait_until="load", timeout=60_000)
            page.locator("#generate").wait_for(timeout=60_000)
            page.locator("#class input").click()
            page.get_by_role("option", name="7", exact=True).click()
            page.get_by_role("button", name="Generate", exact=True).click()
            images = page.locator("#gallery img")
            sync_api.expect(images).to_have_count(8, timeout=60_000)
            previews = page.locator("#previews img")
            sync_api.expect(previews).to_have_count(7, timeout=30_000)  # one per scale
            for i in range(8):
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth") == 32
            captions = page.locator("#gallery").inner_text()
            assert "7" in captions
            shot = tmp_path / "screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5_000
            if os.environ.get("VAR_ENGINE_SCREENSHOT"):
                shutil.copy(shot, os.environ["VAR_ENGINE_SCREENSHOT"])
            page.get_by_role("tab", name="Edit").click()  # the other tabs render their controls
            sync_api.expect(page.locator("#editor canvas").first).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Subject").click()
            sync_api.expect(page.get_by_role("button", name="Tune", exact=True)).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {sorted(h for h in hosts if h)}"
