"""Whole-generation insight charts from a Trace (Plotly).

    tokens_per_cycle     accepted drafts + bonus per cycle, with τ
    time_split           draft / verify / update time per cycle, with tokens/s
    accepted_histogram   how many drafts each cycle accepted
    acceptance_by_depth  acceptance rate of tested nodes at each depth
    calibration          draft value (all verified nodes: on the accepted path?) or confidence
                         (tested nodes: did the target agree?) vs measured acceptance, with the diagonal
    context_dependence   the same tested tokens grouped by tree position vs by draft value

"Tested" nodes are those whose parent was accepted: the target compared them with its own
choice (accepted or rejected). Nodes below a rejection were never tested and are left out.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from eagle2.calibration import binned_rates
from eagle2.trace import Trace

from . import style
from .data import Tested, per_cycle, policy_label, summary, tested_nodes

CALIBRATION_BY = ("value", "confidence")


BOTTOM_LEGEND = dict(orientation="h", x=0, xanchor="left", y=-0.22, yanchor="top", traceorder="normal",
                     font=dict(size=12))


def _layout(fig: go.Figure, title: str, height: int = 360, subtitle: str | None = None, **kw) -> go.Figure:
    margin = kw.pop("margin", dict(l=60, r=20, t=78 if subtitle else 56, b=50))
    t = dict(text=title, x=0.01, xanchor="left", font=dict(size=16))
    if subtitle:
        t["subtitle"] = dict(text=subtitle, font=dict(size=13, color="#57606a"))
    fig.update_layout(**style.base_layout(title=t, height=height, margin=margin, **kw))
    return fig


def _empty(title: str, why: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=why, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#57606a"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


NO_DRAFTS = "No drafted tokens were verified in this run<br>(vanilla decoding, or a one-token answer)."


def _rate(items: list[Tested]) -> float:
    return sum(t.accepted for t in items) / len(items) if items else float("nan")


def tokens_per_cycle(trace: Trace) -> go.Figure:
    rows = per_cycle(trace)
    s = summary(trace)
    title = "Tokens per cycle"
    sub = f"τ = {s['tau']:.2f} per target forward"
    if not rows:
        return _empty(title, "No drafting cycles.")
    x = [r["cycle"] for r in rows]
    drafts = [min(r["accepted"], r["new_tokens"]) for r in rows]
    bonus = [r["new_tokens"] - d for r, d in zip(rows, drafts)]
    fig = go.Figure([
        go.Bar(x=x, y=drafts, name="accepted draft tokens", marker_color=style.ACCEPTED,
               hovertemplate="cycle %{x}: %{y} accepted drafts<extra></extra>"),
        go.Bar(x=x, y=bonus, name="target's bonus token", marker_color=style.BONUS,
               hovertemplate="cycle %{x}: %{y} bonus<extra></extra>"),
    ])
    mean = sum(r["new_tokens"] for r in rows) / len(rows)
    fig.add_hline(y=mean, line=dict(color=style.INK, dash="dash", width=1.5))
    sub += f" · mean {mean:.2f} (dashed)"
    fig.update_layout(barmode="stack", bargap=0.15)
    fig.update_xaxes(title="cycle")
    fig.update_yaxes(title="tokens emitted", dtick=1 if max(r["new_tokens"] for r in rows) <= 12 else None)
    return _layout(fig, title, subtitle=sub, legend=BOTTOM_LEGEND, height=380,
                   margin=dict(l=60, r=20, t=78, b=95))


def time_split(trace: Trace) -> go.Figure:
    rows = per_cycle(trace)
    s = summary(trace)
    total = s["draft_s"] + s["verify_s"] + s["update_s"]
    pct = {k: 100 * s[k] / total if total else 0 for k in ("draft_s", "verify_s", "update_s")}
    title = f"Time per cycle · {s['tokens_per_s']:.1f} tokens/s"
    sub = f"draft {pct['draft_s']:.0f}% · verify {pct['verify_s']:.0f}% · update {pct['update_s']:.0f}% of the time"
    if not rows:
        return _empty(title, "No drafting cycles.")
    x = [r["cycle"] for r in rows]
    fig = go.Figure()
    for key, name, color in (("draft_s", "draft (drafter calls)", "#6baed6"),
                             ("verify_s", "verify (one target forward)", "#08306b"),
                             ("update_s", "update (caches)", "#bdbdbd")):
        fig.add_trace(go.Bar(x=x, y=[1000 * r[key] for r in rows], name=name, marker_color=color,
                             hovertemplate="cycle %{x}: %{y:.1f} ms<extra>" + name + "</extra>"))
    fig.update_layout(barmode="stack", bargap=0.15)
    fig.update_xaxes(title="cycle")
    fig.update_yaxes(title="milliseconds")
    return _layout(fig, title, subtitle=sub, legend=BOTTOM_LEGEND, height=380,
                   margin=dict(l=60, r=20, t=78, b=95))


def accepted_histogram(trace: Trace) -> go.Figure:
    rows = per_cycle(trace)
    title = "Accepted length"
    if not rows:
        return _empty(title, "No drafting cycles.")
    counts = Counter(r["accepted"] for r in rows)
    top = max(max(counts), int(trace.meta.get("depth", 0) or 0))
    x = list(range(top + 1))
    y = [counts.get(i, 0) for i in x]
    mean = sum(r["accepted"] for r in rows) / len(rows)
    fig = go.Figure(go.Bar(x=x, y=y, marker_color=style.ACCEPTED, text=[v or "" for v in y], textposition="outside",
                           hovertemplate="%{y} cycles accepted %{x} drafts<extra></extra>", cliponaxis=False))
    fig.add_vline(x=mean, line=dict(color=style.INK, dash="dash", width=1.5))
    fig.update_xaxes(title="draft tokens accepted in one cycle", dtick=1)
    fig.update_yaxes(title="cycles", rangemode="tozero")
    return _layout(fig, title, subtitle=f"draft tokens accepted per cycle · mean {mean:.2f} (dashed)",
                   showlegend=False)


def acceptance_by_depth(trace: Trace) -> go.Figure:
    tested = tested_nodes(trace)
    title = "Acceptance rate by depth"
    if not tested:
        return _empty(title, NO_DRAFTS)
    by = defaultdict(list)
    for t in tested:
        by[t.depth].append(t)
    depths = sorted(by)
    rates = [_rate(by[d]) for d in depths]
    n = [len(by[d]) for d in depths]
    fig = go.Figure(go.Bar(
        x=depths, y=rates, marker_color=style.ACCEPTED, text=[f"{r:.0%}<br>n={k}" for r, k in zip(rates, n)],
        textposition="outside", cliponaxis=False,
        hovertemplate="depth %{x}: %{y:.0%} of %{customdata} tested nodes accepted<extra></extra>", customdata=n))
    fig.update_xaxes(title="depth in the draft tree", dtick=1)
    fig.update_yaxes(title="accepted / tested", range=[0, 1.18], tickformat=".0%")
    return _layout(fig, title, subtitle="over tested nodes (their parent was accepted)", showlegend=False)


def binned(tested: list[Tested], by: str = "value") -> list[dict]:
    """Nodes grouped by draft value (or confidence): rows {lo, hi, x (bin mean), rate, n}."""
    return [dict(r, x=r["mean"]) for r in binned_rates([(getattr(t, by), t.accepted) for t in tested])]


def calibration(trace: Trace, by: str = "value") -> go.Figure:
    """Binned draft value (or confidence) vs the measured acceptance rate of those nodes."""
    if by not in CALIBRATION_BY:
        raise ValueError(f"by must be one of {CALIBRATION_BY}")
    # a value predicts the whole path's acceptance (all verified nodes); a confidence predicts
    # the target agreeing once the parent was accepted (tested nodes only)
    tested = tested_nodes(trace, include_unreached=(by == "value"))
    label = "draft value (product of confidences)" if by == "value" else "draft confidence (this step)"
    title = f"Calibration: draft {by} vs acceptance"
    nodes_word = "verified draft nodes" if by == "value" else "tested nodes (parent accepted)"
    if not tested:
        return _empty(title, NO_DRAFTS)
    bins = binned(tested, by)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="#8c8c8c", dash="dash"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[b["x"] for b in bins], y=[b["rate"] for b in bins], mode="lines+markers", name="measured",
        line=dict(color=style.ACCEPTED, width=2),
        marker=dict(size=[8 + 3 * math.sqrt(b["n"]) for b in bins], color=style.ACCEPTED,
                    line=dict(color="white", width=1)),
        customdata=[[b["lo"], b["hi"], b["n"]] for b in bins],
        hovertemplate=(f"{by} %{{customdata[0]:.2f}}–%{{customdata[1]:.2f}} (mean %{{x:.3f}})<br>"
                       f"accepted %{{y:.0%}} of %{{customdata[2]}} {nodes_word}<extra></extra>")))
    fig.update_xaxes(title=label, range=[0, 1.02], tickformat=".1f")
    fig.update_yaxes(title="measured acceptance rate", range=[0, 1.05], tickformat=".0%")
    return _layout(fig, title, subtitle=f"binned {nodes_word}; marker size = how many", height=380,
                   legend=dict(x=0.02, y=0.98, bgcolor="rgba(255,255,255,0.7)"))


def context_dependence(trace: Trace, max_positions: int = 10) -> go.Figure:
    """The same tested tokens, grouped by tree position (depth, rank) vs by draft value.

    A static tree (EAGLE-1) assumes acceptance depends on the position. Within one position,
    the low-value and high-value halves are accepted at very different rates; grouped by value,
    the rate climbs steadily: acceptance depends on the context, which the value tracks.
    """
    tested = tested_nodes(trace)
    title = "Context-dependent acceptance"
    sub = ("the same tested tokens grouped by tree position (left) and by draft value (right):<br>"
           "one position holds easy and hard tokens alike (▲ vs ▼); the draft value tells them apart")
    if not tested:
        return _empty(title, NO_DRAFTS)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=("by position (depth d · sibling rank r)", "by draft value"))
    by_pos = defaultdict(list)
    for t in tested:
        by_pos[(t.depth, t.sibling_rank)].append(t)
    positions = sorted(by_pos, key=lambda p: (-len(by_pos[p]), p))[:max_positions]
    positions.sort()
    names = [f"d{d}·r{r}" for d, r in positions]
    rates = [_rate(by_pos[p]) for p in positions]
    counts = [len(by_pos[p]) for p in positions]
    fig.add_trace(go.Bar(x=names, y=rates, marker_color="#c6dbef", name="all tokens at the position",
                         customdata=counts, hovertemplate="%{x}: %{y:.0%} of %{customdata}<extra></extra>"),
                  row=1, col=1)
    lows, highs = [], []
    for p in positions:
        g = sorted(by_pos[p], key=lambda t: t.value)
        half = len(g) // 2
        lows.append(_rate(g[:half]) if half else None)
        highs.append(_rate(g[half:]) if half else None)
    fig.add_trace(go.Scatter(x=names, y=lows, mode="markers", name="lower-value half",
                             marker=dict(symbol="triangle-down", size=13, color="#6baed6",
                                         line=dict(color=style.INK, width=1)),
                             hovertemplate="%{x}, lower-value half: %{y:.0%}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=names, y=highs, mode="markers", name="higher-value half",
                             marker=dict(symbol="triangle-up", size=13, color="#08306b",
                                         line=dict(color="white", width=1)),
                             hovertemplate="%{x}, higher-value half: %{y:.0%}<extra></extra>"), row=1, col=1)
    bins = binned(tested, "value")
    fig.add_trace(go.Bar(x=[f"{b['lo']:.2g}–{b['hi']:.2g}" for b in bins], y=[b["rate"] for b in bins],
                         marker_color=style.ACCEPTED, name="all tokens in the value bin",
                         customdata=[b["n"] for b in bins],
                         hovertemplate="value %{x}: %{y:.0%} of %{customdata}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(title="acceptance rate", range=[0, 1.05], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(tickangle=-40, row=1, col=1)
    fig.update_xaxes(tickangle=-40, row=1, col=2)
    for ann in fig.layout.annotations:  # the subplot titles
        ann.update(font=dict(size=14), y=1.0, yanchor="bottom")
    return _layout(fig, title, subtitle=sub, height=460, margin=dict(l=60, r=20, t=125, b=110),
                   legend=dict(orientation="h", y=-0.3, x=0, yanchor="top", font=dict(size=12)), bargap=0.2)


def all_charts(trace: Trace, calibration_by: str = "value") -> dict[str, go.Figure]:
    return {
        "tokens_per_cycle": tokens_per_cycle(trace),
        "time_split": time_split(trace),
        "accepted_histogram": accepted_histogram(trace),
        "acceptance_by_depth": acceptance_by_depth(trace),
        "calibration": calibration(trace, calibration_by),
        "context_dependence": context_dependence(trace),
    }


def describe(trace: Trace) -> str:
    """One line: policy, model, τ and speed (for captions)."""
    s = summary(trace)
    sizes = {k: s[k] for k in ("policy", "top_k", "depth", "total_tokens") if k in s}
    return f"{policy_label({**trace.meta, **sizes})} · τ {s['tau']:.2f} · {s['tokens_per_s']:.1f} tok/s"
