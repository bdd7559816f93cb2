"""README image of a draft tree with copied (prompt-lookup) nodes, from the example trace.

    PYTHONPATH=. python docs/lookup_image.py [examples/traces/04-cpu-eagle2-auto-lookup.json]

Picks the cycle whose accepted path holds the most copied tokens, draws it with the app's own
figure code (viz.tree_figure) and screenshots it in headless chromium: docs/tree-lab-lookup.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench_images import figure_png  # the same headless chromium screenshot (this folder is on sys.path)

from eagle2.trace import Trace
from viz.data import cycle_view
from viz.tree_figure import tree_figure

ROOT = Path(__file__).resolve().parents[1]


def copied_on_path(trace: Trace, i: int) -> tuple[int, int]:
    view = cycle_view(trace, i)
    on_path = [n for n in view.nodes.values() if n.status == "accepted"]
    return sum(n.source == "lookup" for n in on_path), len(on_path)


def main(path: str) -> None:
    trace = Trace.load(path)
    best = max(range(len(trace.cycles)), key=lambda i: copied_on_path(trace, i))
    copied, accepted = copied_on_path(trace, best)
    fig = tree_figure(trace, best, width=1100, height=520,
                      title=f"Cycle {best}: {accepted} accepted, {copied} of them copied from the prompt (↪)")
    out = ROOT / "docs" / "tree-lab-lookup.png"
    figure_png(fig, out, 1140, 560)
    print(f"wrote {out.relative_to(ROOT)} (cycle {best}: {copied}/{accepted} accepted tokens copied)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "examples" / "traces" / "04-cpu-eagle2-auto-lookup.json"))
