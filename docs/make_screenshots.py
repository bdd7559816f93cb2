"""Regenerate the README screenshots of the Tree Lab (needs /usr/bin/chromium).

    PYTHONPATH=. python docs/make_screenshots.py            # runs a prompt on the embedded model

Writes docs/tree-lab-run.png (coloured answer + draft tree), docs/tree-lab-steps.png (the
step-through at the rerank) and docs/tree-lab-insights.png (insight plots), each < 300 KB.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shrink(path: Path, max_kb: int = 290) -> None:
    """Palette PNG (256 colours), downscaled until it is under max_kb."""
    img = Image.open(path).convert("RGB")
    img.save(path, optimize=True)
    if path.stat().st_size <= max_kb * 1024:  # full colour fits
        print(f"{path.relative_to(ROOT)}: {img.width}x{img.height}, {path.stat().st_size // 1024} KB")
        return
    scale = 1.0
    while True:
        im = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)),
                                                   Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= max_kb * 1024 or scale < 0.5:
            break
        scale *= 0.9
    print(f"{path.relative_to(ROOT)}: {im.width}x{im.height}, {path.stat().st_size // 1024} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="Explain in three sentences how a rainbow forms.")
    ap.add_argument("--head", default=None, help="default: the trained head when shipped, else self")
    ap.add_argument("--policy", default="eagle2-auto", help="tree policy to pick in the UI (default: the app's)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--cycle", type=int, default=-1, help="cycle to show (default: the one with most accepted)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from eagle2.draft import DEFAULT_HEADS
    from playwright.sync_api import expect, sync_playwright

    head = args.head or ("default" if all((f / "config.json").exists() for f in DEFAULT_HEADS.values()) else "self")
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), PYTHONPATH=str(ROOT),
               GRADIO_ANALYTICS_ENABLED="False", EAGLE2_APP_HEAD=head)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            page.goto(url)
            expect(page.locator("#status")).to_contain_text("Example trace", timeout=60_000)
            time.sleep(1.0)  # the settings sidebar is open at this width
            page.locator("#policy input").click()
            page.get_by_role("option", name=args.policy, exact=True).click()
            time.sleep(0.5)
            n = page.locator("#max-new-tokens input[type=number]")
            n.fill(str(args.max_new_tokens))
            n.press("Enter")
            page.locator("#prompt textarea").fill(args.prompt)
            page.locator("#run-btn").click()
            expect(page.locator("#status")).to_contain_text("Done", timeout=300_000)
            if args.cycle >= 0:  # else: the run opens on the cycle that accepted the most drafts
                page.locator(f'#answer .tl-cyc[data-cycle="{args.cycle}"]').first.click()
            page.locator("#settings .toggle-button").click()  # what a newcomer sees: sidebar closed
            time.sleep(2.0)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(DOCS / "tree-lab-run.png"))
            col = page.locator("#tree-col").bounding_box()
            page.get_by_role("tab", name="Step-through").click()
            page.locator("#stage").get_by_text("Rerank", exact=True).click()
            time.sleep(1.5)
            plot = page.locator("#stage-plot").bounding_box()
            page.screenshot(path=str(DOCS / "tree-lab-steps.png"),
                            clip={"x": col["x"] - 8, "y": col["y"] - 8, "width": col["width"] + 16,
                                  "height": plot["y"] + plot["height"] - col["y"] + 16}, full_page=True)
            page.get_by_role("tab", name="Insights").click()
            time.sleep(2.0)
            plots = page.locator(".js-plotly-plot:visible")
            first = plots.first.bounding_box()
            last = plots.last.bounding_box()
            page.screenshot(path=str(DOCS / "tree-lab-insights.png"),
                            clip={"x": col["x"] - 8, "y": first["y"] - 10, "width": col["width"] + 16,
                                  "height": last["y"] + last["height"] - first["y"] + 20}, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    for name in ("tree-lab-run.png", "tree-lab-steps.png", "tree-lab-insights.png"):
        shrink(DOCS / name)


if __name__ == "__main__":
    main()
