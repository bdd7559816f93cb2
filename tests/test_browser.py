"""One real-browser end-to-end test of the Tree Lab (Playwright + Debian's chromium).

It starts `python app.py` on a free port, runs a short prompt on the embedded model, checks the
tree, moves the cycle selector (slider and a click on the answer), walks the step-through,
uploads an example trace, and leaves screenshots in artifacts/.

Needs /usr/bin/chromium (`apt-get install -y chromium`; `playwright install` can't download here).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
EXAMPLE = ROOT / "examples" / "traces" / "02-gpu-eagle2-k10-d6-t60.json"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_head_shipped() -> bool:
    sys.path.insert(0, str(ROOT))
    from eagle2.draft import DEFAULT_HEADS

    return all((f / "config.json").exists() for f in DEFAULT_HEADS.values())


@pytest.fixture(scope="module")
def app_url():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (Playwright can't download browsers here)")
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT), EAGLE2_APP_PRELOAD="1")
    if not _default_head_shipped():  # until the trained head ships, the target drafts for itself
        env["EAGLE2_APP_HEAD"] = "self"
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "browser-app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}; see {ARTIFACTS / 'browser-app.log'}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("app.py did not start within 90 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _tree_title(page, plot="#tree-plot") -> str:
    return page.locator(f"{plot} .gtitle").first.text_content(timeout=30_000) or ""


def _wait_title(page, pattern: str, plot="#tree-plot", timeout=30.0) -> str:
    deadline = time.time() + timeout
    title = ""
    while time.time() < deadline:
        try:
            title = page.locator(f"{plot} .gtitle").first.text_content(timeout=2_000) or ""
        except Exception:
            title = ""
        if re.search(pattern, title):
            return title
        time.sleep(0.2)
    raise AssertionError(f"{plot} title {title!r} never matched {pattern!r}")


def test_tree_lab_end_to_end(app_url):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app_url, wait_until="domcontentloaded")
            page.wait_for_selector("#run-btn", timeout=60_000)
            expect(page.locator("#status")).to_contain_text("Example trace", timeout=60_000)  # opened on load

            # 1. run a short prompt on the embedded model
            n_tokens = page.locator("#max-new-tokens input[type=number]")
            n_tokens.fill("24")
            n_tokens.press("Enter")
            page.locator("#prompt textarea").fill("Why is the sky blue?")
            page.locator("#run-btn").click()
            expect(page.locator("#status")).to_contain_text("Done", timeout=120_000)
            expect(page.locator("#status")).not_to_contain_text("rror")
            n_tok = page.locator("#answer .tl-tok").count()
            assert n_tok >= 2
            # every token is coloured by its origin: accepted draft or target (prefill / bonus)
            assert (page.locator("#answer .tl-tok.tl-draft").count()
                    + page.locator("#answer .tl-tok.tl-target").count()) == n_tok
            title0 = _wait_title(page, r"^Cycle 0 ")
            n_boxes0 = page.locator("#tree-plot .annotation").count()
            assert n_boxes0 >= 2  # at least the root and the bonus token
            page.screenshot(path=str(ARTIFACTS / "browser-run.png"), full_page=True)

            # 2. move the cycle selector: the figure changes
            cycle_max = int(page.locator("#cycle input[type=range]").get_attribute("max"))
            assert cycle_max >= 1, "the run needs at least two cycles"
            page.locator("#cycle input[type=range]").focus()
            page.keyboard.press("ArrowRight")
            title1 = _wait_title(page, r"^Cycle 1 ")
            assert title1 != title0
            # ... and a click on a token selects its cycle
            target = min(2, cycle_max)
            page.locator(f'#answer .tl-cyc[data-cycle="{target}"]').first.click()
            _wait_title(page, rf"^Cycle {target} ")
            expect(page.locator(f'#answer .tl-cyc.tl-sel[data-cycle="{target}"]')).to_have_count(1)
            page.locator("#tree-plot").screenshot(path=str(ARTIFACTS / "browser-tree.png"))

            # 3. the step-through: expansion step 1, then the rerank
            page.get_by_role("tab", name="Step-through").click()
            page.locator("#stage").get_by_text("Expand 1", exact=True).click()
            _wait_title(page, r"expansion step 1", plot="#stage-plot")
            page.locator("#stage").get_by_text("Rerank", exact=True).click()
            _wait_title(page, r"rerank", plot="#stage-plot")
            page.screenshot(path=str(ARTIFACTS / "browser-steps.png"), full_page=True)

            # 4. insights
            page.get_by_role("tab", name="Insights").click()
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .gtitle').length >= 4",
                                   timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "browser-insights.png"), full_page=True)

            # 5. upload an example trace: the whole UI switches to it without a model
            page.get_by_role("tab", name="Draft tree").click()
            with page.expect_file_chooser() as chooser:
                page.locator("#upload-trace").click()
            chooser.value.set_files(str(EXAMPLE))
            expect(page.locator("#status")).to_contain_text("Uploaded trace", timeout=30_000)
            _wait_title(page, r"^Cycle 0 · 60 drafted")
            page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)
            assert not errors, f"JavaScript errors: {errors}"
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert time.time() - t0 < 150
