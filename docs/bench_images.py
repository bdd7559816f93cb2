"""README images from a bench run's own report.html (headless chromium, as in the browser test).

    PYTHONPATH=. python docs/bench_images.py runs/final/mt80-t128/report.html

Writes docs/bench-speedup.png (speedup bars) and docs/bench-tau-by-category.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SHOTS = {0: "bench-speedup.png", 2: "bench-tau-by-category.png"}  # figure index in report.html


def figure_png(fig, out: Path, width: int, height: int) -> None:
    """Screenshot a Plotly figure as the browser draws it (the same HTML the app and reports use)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(html.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg")
            page.locator(".plotly-graph-div").first.screenshot(path=str(out))
            browser.close()


def main(report: str) -> None:
    out = Path(__file__).parent
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_selector(".plotly-graph-div .main-svg")
        figs = page.locator(".plotly-graph-div")
        for i, name in SHOTS.items():
            figs.nth(i).screenshot(path=str(out / name))
            print("wrote", out / name)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1])
