"""docs/head-kinds.png: held-out accuracy against training time for head-training runs side by
side (e.g. the EAGLE-1 and EAGLE-3 pilots, one thread each on the same data).

    PYTHONPATH=. python docs/head_kinds_image.py runs/s6/p-e1 runs/s6/p-e3 [more run folders]

Each run folder's train.json history gives, per evaluation, the minutes of training and the
held-out top-1 agreement by draft step; the figure shows draft steps 1 and 4 and the chain score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench_images import figure_png  # the same headless chromium screenshot (this folder is on sys.path)

PANELS = (("step-1 top-1", lambda v: v["acc"][0]), ("step-4 top-1", lambda v: v["acc"][3]),
          ("chain score Σ_k Π acc", lambda v: v["score"]))


def figure(runs: list[Path]) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[p[0] for p in PANELS])
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for i, run in enumerate(runs):
        meta = json.loads((run / "train.json").read_text())
        hist = meta["history"]
        name = f"{meta.get('arch', 'eagle1')} (TTT {meta.get('ttt_steps_used')}, {run.name})"
        for c, (_, get) in enumerate(PANELS, start=1):
            fig.add_trace(go.Scatter(x=[h["minutes"] for h in hist], y=[get(h["val"]) for h in hist],
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=c == 1,
                                     line={"color": colours[i % len(colours)]}), row=1, col=c)
            fig.update_xaxes(title_text="training minutes (evaluation excluded)", row=1, col=c)
    fig.update_layout(width=1150, height=420, margin={"t": 60, "b": 50, "l": 50, "r": 20},
                      legend={"orientation": "h", "y": -0.22}, template="plotly_white",
                      title="Held-out agreement with the target's top-1 token, same data and cores")
    return fig


def main(folders: list[str]) -> None:
    out = Path(__file__).parent / "head-kinds.png"
    figure_png(figure([Path(f) for f in folders]), out, 1200, 480)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1:])
