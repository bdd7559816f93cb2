"""Real-browser end-to-end tests of the Tree Lab (Playwright + Debian's chromium).

One `python app.py` on a free port serves every test here; each test opens its own page. They
run a short prompt on the embedded model and check what a person sees: the first screen at
1280x720, the tree and its cycle selector, the step-through, the insights, traces (upload,
examples, download), a run's views while it streams, bad inputs, and Compare. Screenshots go to
artifacts/.

Needs /usr/bin/chromium (`apt-get install -y chromium`; `playwright install` can't download here).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import model_threads

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
TRACES = ROOT / "examples" / "traces"
GPU_EXAMPLE = TRACES / "02-gpu-eagle2-k10-d6-t60.json"
WIDE = {"width": 1440, "height": 1000}  # wide enough that the settings sidebar starts open

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_head_shipped() -> bool:
    sys.path.insert(0, str(ROOT))
    from eagle2.draft import DEFAULT_HEADS

    return all((f / "config.json").exists() for f in DEFAULT_HEADS.values())


def _start_app(python: str = sys.executable, env: dict | None = None, log_path: Path | None = None,
               timeout: float = 90, **env_extra):
    """Start app.py (with `python`, in `env`: by default this one's, on this checkout) on a free
    port; yields its URL and stops it afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (Playwright can't download browsers here)")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), EAGLE2_APP_PRELOAD="1") if env is None else dict(env)
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", **env_extra)
    if model_threads() == 1:  # another pytest worker has the other core
        env.setdefault("OMP_NUM_THREADS", "1")
    if not _default_head_shipped():  # until the trained head ships, the target drafts for itself
        env["EAGLE2_APP_HEAD"] = "self"
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = log_path or ARTIFACTS / ("browser-app-space.log" if "SPACE_ID" in env_extra else "browser-app.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([python, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"app.py did not start within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def app_url():
    yield from _start_app()


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page_at(browser, app_url, request):
    """page_at(viewport) -> a page on the app, its example trace opened; screenshot on failure."""
    from playwright.sync_api import expect

    opened = []

    def open_page(viewport=WIDE, url=app_url):
        page = browser.new_page(viewport=viewport, accept_downloads=True)
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        opened.append(page)
        page.goto(url, wait_until="domcontentloaded", timeout=90_000)
        page.wait_for_selector("#run-btn", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("Example trace", timeout=60_000)  # opened on load
        page.wait_for_timeout(600)  # the sidebar settles (it starts closed below 1440 px)
        return page

    yield open_page
    for i, page in enumerate(opened):  # the last state of every page, for a look after a failure
        page.screenshot(path=str(ARTIFACTS / f"browser-end-{request.node.name}-{i}.png"), full_page=True)
        assert not page.errors, f"JavaScript errors: {page.errors}"
        page.close()


def _title(page, plot="#tree-plot") -> str:
    try:
        return page.locator(f"{plot} .gtitle").first.text_content(timeout=2_000) or ""
    except Exception:
        return ""


def _until(read, ok, failure, timeout: float = 30.0):
    """read() again and again until ok(value): Gradio applies an update's keys one at a time,
    so what a test reads right after an event may still be the old value."""
    deadline = time.time() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        if time.time() > deadline:
            raise AssertionError(failure(value))
        time.sleep(0.2)


def _wait_title(page, pattern: str, plot="#tree-plot", timeout=30.0) -> str:
    return _until(lambda: _title(page, plot), lambda title: re.search(pattern, title),
                  lambda title: f"{plot} title {title!r} never matched {pattern!r}", timeout)


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _cycle(page) -> int:
    return int(page.locator("#cycle input[type=number]").input_value())


def _settled_cycle(page, timeout: float = 30.0) -> tuple[int, str]:
    """(cycle, tree title) once the slider and the tree agree: right after "Done" the slider may
    still show 0 beside the new tree."""
    return _until(lambda: (_cycle(page), _title(page)), lambda ct: ct[1].startswith(f"Cycle {ct[0]} "),
                  lambda ct: f"the cycle slider ({ct[0]}) and the tree title ({ct[1]!r}) never agreed", timeout)


def _run(page, prompt: str, max_new_tokens: int = 24, done: str = "Done", timeout=120_000) -> None:
    from playwright.sync_api import expect

    _set_number(page, "max-new-tokens", max_new_tokens)
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#run-btn").click()
    expect(page.locator("#status")).to_contain_text(done, timeout=timeout)


def _pick(page, elem_id: str, option: str) -> None:
    """Choose `option` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).first.click()


def _type_choice(page, elem_id: str, text: str) -> None:
    """Type a custom value into a Gradio dropdown that allows one."""
    box = page.locator(f"#{elem_id} input")
    box.fill(text)
    box.press("Enter")
    page.locator("#prompt textarea").click()  # blur commits it


# ---- tests --------------------------------------------------------------------------------------
def test_first_screen_at_1280x720(page_at):
    """A newcomer's first screen: answer, tree and how to read it, without scrolling."""
    page = page_at({"width": 1280, "height": 720})
    page.wait_for_selector("#tree-plot .gtitle", timeout=30_000)
    for sel in ("#prompt", "#run-btn", "#answer", "#tree-plot", "#tree-howto"):
        box = page.locator(sel).bounding_box()
        assert box is not None and box["y"] < 720 - 40, f"{sel} is not in the first screen: {box}"
    tree = page.locator("#tree-plot").bounding_box()
    assert 720 - tree["y"] >= 250, f"only {720 - tree['y']:.0f} px of the tree are in the first screen"
    assert page.locator("#answer .tl-tok").count() > 10  # the example's answer, coloured
    # the settings are one click away, in the sidebar, and push the page rather than cover it
    page.locator("#settings .toggle-button").click()
    page.wait_for_timeout(800)
    assert page.locator("#policy").is_visible()
    page.screenshot(path=str(ARTIFACTS / "browser-first-screen.png"))


def test_run_tree_steps_insights_upload(page_at):
    from playwright.sync_api import expect

    t0 = time.time()
    page = page_at()
    # 1. run a short prompt on the embedded model
    _run(page, "Why is the sky blue?")
    expect(page.locator("#status")).not_to_contain_text("rror")
    n_tok = page.locator("#answer .tl-tok").count()
    assert n_tok >= 2
    # every token is coloured by its origin: accepted draft, copied, or target (prefill / bonus)
    assert sum(page.locator(f"#answer .tl-tok.tl-{o}").count() for o in ("draft", "copy", "target")) == n_tok
    c0, title0 = _settled_cycle(page)  # a run opens on the cycle that accepted the most drafts
    assert page.locator("#tree-plot .annotation").count() >= 2  # at least the root and the bonus token
    page.screenshot(path=str(ARTIFACTS / "browser-run.png"), full_page=True)

    # 2. move the cycle selector: the figure changes
    cycle_max = int(page.locator("#cycle input[type=range]").get_attribute("max"))
    assert cycle_max >= 1, "the run needs at least two cycles"
    page.locator("#cycle input[type=range]").focus()
    page.keyboard.press("ArrowLeft" if c0 > 0 else "ArrowRight")
    c1 = c0 - 1 if c0 > 0 else 1
    assert _wait_title(page, rf"^Cycle {c1} ") != title0
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
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .gtitle').length >= 4", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "browser-insights.png"), full_page=True)

    # 5. upload a trace: the whole UI switches to it without a model, on its best cycle
    page.get_by_role("tab", name="Draft tree").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#upload-trace").click()
    chooser.value.set_files(str(GPU_EXAMPLE))
    expect(page.locator("#status")).to_contain_text("Uploaded trace", timeout=30_000)
    _wait_title(page, r"^Cycle \d+ · 60 drafted")
    page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)
    assert time.time() - t0 < 150


def test_streaming_run_owns_every_view(page_at):
    """While a run streams, a slider move or a click on a token never brings the old trace back."""
    from playwright.sync_api import expect

    page = page_at()
    old_answer = page.locator("#answer").inner_text()
    # the slowest policy and a long answer: the stream must outlast the waits below (with 96 tokens
    # the slider-off wait once timed out in a full run; a longer stream gives it more room)
    _set_number(page, "max-new-tokens", 200)
    _pick(page, "policy", "vanilla")
    page.locator("#prompt textarea").fill("Write a short story about a robot who learns to paint.")
    page.locator("#run-btn").click()
    snapshot = """() => {
        const live = document.querySelector('#answer .tl-live');
        if (!live || !live.querySelector('.tl-tok')) return null;  // not streaming (yet / any more)
        return {answer: live.innerText, summary: document.querySelector('#summary').innerText,
                trees: document.querySelectorAll('#tree-plot .gtitle').length,
                slider_off: document.querySelector('#cycle input[type=range]').disabled};
    }"""
    t_click = time.time()
    during = page.wait_for_function(snapshot, timeout=90_000).json_value()
    t_first = time.time()
    assert "Running" in during["summary"], during  # not the previous run's cards
    assert during["trees"] == 0, during  # no previous tree
    # nothing to select yet: the slider is off while tokens stream (the page applies an update's
    # keys one at a time, so on a slow machine a token may land a moment before the slider turns off)
    page.wait_for_function(f"() => {{ const s = ({snapshot})(); return s && s.slider_off; }}", timeout=10_000)
    page.locator("#answer .tl-cyc").first.dispatch_event("click")  # a click on a streaming token ...
    page.locator("#cycle input[type=range]").dispatch_event("input")  # ... and a slider event
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(400)
    later = page.evaluate(snapshot)
    print(f"first token after {t_first - t_click:.1f} s; second look {time.time() - t_first:.1f} s later; "
          f"{len(during['answer'])} characters then")
    assert later is not None, "the run ended too soon to test it while streaming"
    assert later["answer"].startswith(during["answer"][:30]), "the live answer was replaced"
    assert later["answer"][:40] != old_answer[:40] and "Running" in later["summary"]
    page.screenshot(path=str(ARTIFACTS / "browser-streaming.png"))
    expect(page.locator("#status")).to_contain_text("Done", timeout=180_000)
    assert page.locator("#answer").inner_text().startswith(during["answer"][:30])  # the same run, complete
    _settled_cycle(page)
    assert "τ" in page.locator("#summary").inner_text()


def test_examples_settings_and_download(page_at, tmp_path):
    """An example trace sets the settings it was made with; Download gives that very trace;
    copied (prompt-lookup) tokens are marked in the answer."""
    from playwright.sync_api import expect

    page = page_at()
    for name, policy in (("03-cpu-eagle1-static", "eagle1"), ("04-cpu-eagle2-auto-lookup", "eagle2-auto+lookup")):
        _pick(page, "example-trace", name)
        expect(page.locator("#status")).to_contain_text(f"Example trace {name}", timeout=30_000)
        expect(page.locator("#policy input")).to_have_value(policy, timeout=10_000)
        with page.expect_download() as dl:
            page.locator("#download-trace").click()
        got = json.loads(Path(dl.value.path()).read_text())
        want = json.loads((TRACES / f"{name}.json").read_text())
        assert got["meta"] == want["meta"] and got["output_tokens"] == want["output_tokens"]
        if policy == "eagle1":  # the static tree's real size, greyed out
            expect(page.locator("#total-tokens input[type=number]")).to_have_value("25", timeout=10_000)
            expect(page.locator("#total-tokens input[type=range]")).to_be_disabled(timeout=10_000)
    copies = page.locator("#answer .tl-tok.tl-copy").count()
    assert copies > 0, "the lookup example's copied tokens are not marked in the answer"
    page.screenshot(path=str(ARTIFACTS / "browser-lookup-example.png"))


def test_bad_inputs_then_a_normal_run(page_at, tmp_path):
    """Each bad input shows one line naming the cause, fast; the app stays up for the next run."""
    from playwright.sync_api import expect

    page = page_at()
    status = page.locator("#status")
    page.locator("#prompt textarea").fill("")
    page.locator("#run-btn").click()
    expect(status).to_contain_text("type a prompt", timeout=10_000)

    page.locator("#prompt textarea").fill("x" * 4500)  # over the limit: said, not silently cut
    page.locator("#run-btn").click()
    expect(status).to_contain_text("too long", timeout=10_000)
    expect(status).to_contain_text("4500")

    _type_choice(page, "head", "/no/such/head-folder")
    page.locator("#prompt textarea").fill("Hello")
    t0 = time.time()
    page.locator("#run-btn").click()
    expect(status).to_contain_text("no such folder", timeout=20_000)
    assert time.time() - t0 < 15
    _pick(page, "head", "default: the trained")

    _type_choice(page, "target", "nobody-xyz/no-such-model-here")
    t0 = time.time()
    page.locator("#run-btn").click()
    expect(status.locator(".tl-error")).to_be_visible(timeout=20_000)
    assert time.time() - t0 < 15, "an unreachable hub id must be answered fast"
    assert "Traceback" not in status.inner_text()
    _type_choice(page, "target", "default")

    bad = tmp_path / "broken-trace.json"
    bad.write_text('{"schema": "eagle2-trace/1", "cycles": [{"index": 0}]}')
    with page.expect_file_chooser() as chooser:
        page.locator("#upload-trace").click()
    chooser.value.set_files(str(bad))
    expect(status).to_contain_text("Could not open the uploaded trace", timeout=20_000)
    assert "__init__" not in status.inner_text()

    _run(page, "Name three colours.", max_new_tokens=16)  # and a normal run works after all that
    assert page.locator("#answer .tl-tok").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "browser-after-bad-inputs.png"))


def test_compare_shows_real_sizes(page_at):
    page = page_at()
    page.get_by_role("tab", name="Compare").click()
    assert page.locator("#cmp-total-a input[type=number]").input_value() == "25"  # eagle1's static tree
    assert page.locator("#cmp-total-a input[type=range]").is_disabled()
    assert page.locator("#cmp-total-b input[type=number]").input_value() == "12"


def test_public_space_refuses_local_paths_and_big_uploads(page_at, tmp_path):
    """As a public Space (SPACE_ID set): local paths as model or head are refused, an upload over
    the configured limit is refused, and the default model still runs."""
    from playwright.sync_api import expect

    for url in _start_app(SPACE_ID="tree-lab/test", EAGLE2_APP_MAX_TRACE_BYTES="200000"):
        page = page_at(url=url)
        status = page.locator("#status")
        page.locator("#prompt textarea").fill("Hello")
        _type_choice(page, "head", "/etc")
        page.locator("#run-btn").click()
        expect(status).to_contain_text("local paths are disabled on a public Space", timeout=20_000)
        _pick(page, "head", "default: the trained")
        _type_choice(page, "target", "./models/x")
        page.locator("#run-btn").click()
        expect(status).to_contain_text("local paths are disabled on a public Space", timeout=20_000)
        _type_choice(page, "target", "default")

        big = tmp_path / "big-trace.json"
        big.write_text(GPU_EXAMPLE.read_text() + " " * 300_000)
        with page.expect_file_chooser() as chooser:
            page.locator("#upload-trace").click()
        chooser.value.set_files(str(big))  # Gradio refuses it in the page, before it is sent
        expect(page.locator(".toast-body").first).to_contain_text("exceed the maximum allowed size", timeout=20_000)

        _run(page, "Name three colours.", max_new_tokens=12)
        assert page.locator("#answer .tl-tok").count() >= 2
        page.screenshot(path=str(ARTIFACTS / "browser-space.png"))
