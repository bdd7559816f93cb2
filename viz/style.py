"""Colours and sizes shared by the tree, the charts and the token view (one legend for all)."""

from __future__ import annotations

from plotly.colors import sample_colorscale

ACCEPTED = "#1a9850"  # green: a draft token the target agreed with
REJECTED = "#d62728"  # red: the target chose another token here
BONUS = "#f28e2b"  # orange: the target's own token (prefill / bonus)
UNREACHED = "#8c8c8c"  # grey: below a rejected node, never tested
DROPPED = "#c8c8c8"  # light grey: proposed, then dropped by the rerank
ROOT = "#3b3b3b"
CHOSEN = "#b8860b"  # dark gold: frontier chosen for the next expansion step
EDGE = "#9aa3ad"
INK = "#1f2328"

DRAFT_BG = "#b9e4c2"  # token view: accepted draft tokens
TARGET_BG = "#fdcfa3"  # token view: target tokens

# value / confidence fill: light (unlikely) -> deep blue (likely); no green or red in it
FILL_SCALE = [[0.0, "#f4f7fb"], [0.25, "#c6dbef"], [0.5, "#6baed6"], [0.75, "#2171b5"], [1.0, "#08306b"]]

FONT = "Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
MONO = "'JetBrains Mono', 'DejaVu Sans Mono', Menlo, Consolas, monospace"


def fill_color(t: float) -> str:
    """Colour of a position t in [0, 1] on FILL_SCALE, as '#rrggbb'."""
    t = min(1.0, max(0.0, float(t)))
    rgb = sample_colorscale(FILL_SCALE, [t], colortype="tuple")[0]
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in rgb))


def fade(hex_color: str, amount: float = 0.55) -> str:
    """Blend a colour towards white (opaque, so edges don't show through faded boxes)."""
    h = hex_color.lstrip("#")
    rgb = [int(h[i: i + 2], 16) for i in (0, 2, 4)]
    return "#{:02x}{:02x}{:02x}".format(*(round(c + (255 - c) * amount) for c in rgb))


def ink_on(hex_color: str) -> str:
    """Black or white text, whichever reads better on a fill colour."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i: i + 2], 16) / 255 for i in (0, 2, 4))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#ffffff" if lum < 0.5 else INK


def base_layout(**kw) -> dict:
    layout = dict(
        template="plotly_white",
        font=dict(family=FONT, size=14, color=INK),
        margin=dict(l=40, r=20, t=60, b=40),
        paper_bgcolor="white",
        plot_bgcolor="white",
        hoverlabel=dict(font=dict(family=FONT, size=13), bgcolor="white"),
    )
    layout.update(kw)
    return layout
