"""docs/heldout-heads.png: every head's top-1 agreement with the target by draft step on the fixed
held-out set (eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz), from the JSON lines that
scripts/eval_heads.py --heldout prints (kept in docs/heldout-heads.jsonl):

    PYTHONPATH=. python scripts/eval_heads.py runs/heldout HEAD... --heldout eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz > scores.jsonl
    PYTHONPATH=. python docs/heldout_image.py docs/heldout-heads.jsonl

The left panel shows how agreement falls with the draft step for each head; the right one, steps 1
and 5 and the goals of issue #12 (0.75 / 0.70), head by head in training order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench_images import figure_png  # the same headless chromium screenshot (this folder is on sys.path)


def read_scores(path: Path) -> list[dict]:
    """The whole-set rows (kind "all") of eval_heads' JSON lines, oldest head first by its name (vN)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    rows = [r for r in rows if r.get("kind", "all") == "all"]
    for r in rows:
        r["name"] = Path(r["head"]).name
    return sorted(rows, key=lambda r: int(r["name"][1:]) if r["name"][1:].isdigit() else 10 ** 6)


def figure(rows: list[dict]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=["top-1 agreement by draft step", "steps 1 and 5, head by head"])
    n = len(rows)
    for i, r in enumerate(rows):
        shade = int(200 - 170 * i / max(n - 1, 1))  # older heads lighter
        fig.add_trace(go.Scatter(x=list(range(1, len(r["acc"]) + 1)), y=r["acc"], mode="lines+markers",
                                 name=r["name"], line={"color": f"rgb({shade},{shade},255)" if i < n - 1 else "#d62728"}),
                      row=1, col=1)
    names = [r["name"] for r in rows]
    for step, colour in ((1, "#1f77b4"), (5, "#ff7f0e")):
        fig.add_trace(go.Bar(x=names, y=[r["acc"][step - 1] for r in rows], name=f"step {step}",
                             marker_color=colour, text=[f"{r['acc'][step - 1]:.3f}" for r in rows],
                             textposition="outside", showlegend=True), row=1, col=2)
    for step, goal, colour in ((1, 0.75, "#1f77b4"), (5, 0.70, "#ff7f0e")):
        fig.add_hline(y=goal, line={"dash": "dot", "color": colour}, row=1, col=2,
                      annotation_text=f"goal, step {step}: {goal:.2f}", annotation_position="top left")
    fig.update_xaxes(title_text="draft step", row=1, col=1)
    fig.update_yaxes(title_text="top-1 agreement", row=1, col=1)
    fig.update_yaxes(range=[0.45, 0.8], row=1, col=2)
    sizes = {(r["val_sequences"], r["positions"]) for r in rows}
    seqs, positions = sizes.pop() if len(sizes) == 1 else ("?", "?")
    fig.update_layout(width=1150, height=440, margin={"t": 70, "b": 50, "l": 60, "r": 20}, barmode="group",
                      template="plotly_white", legend={"orientation": "h", "y": -0.2},
                      title=f"Fixed held-out set ({seqs} sequences, {positions} answer positions): "
                            "agreement with the target's greedy token")
    return fig


def main(paths: list[str]) -> None:
    if len(paths) != 1:
        raise SystemExit("usage: python docs/heldout_image.py SCORES.jsonl")
    out = Path(__file__).parent / "heldout-heads.png"
    figure_png(figure(read_scores(Path(paths[0]))), out, 1200, 480)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1:])
