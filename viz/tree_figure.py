"""One cycle's draft tree as a Plotly figure: NetworkX holds the tree and lays it out.

    nodes  = boxes with the token's text, filled by draft value (log scale) or confidence
    border = the target's verdict: green ✓ accepted, red ✗ rejected, grey = never reached
    faded  = candidates the rerank dropped;  orange ★ = the target's bonus token

Depth runs left to right; siblings are stacked top to bottom in the drafter's rank order.
`stage` replays the cycle: each expansion step, then the rerank, then verification.
"""

from __future__ import annotations

import math

import networkx as nx
import plotly.graph_objects as go

from eagle2.trace import Trace

from . import style
from .data import BONUS_KEY, ROOT_KEY, CycleNode, CycleView, cycle_view, display_token

COLOR_BY = ("value", "confidence")
DEFAULT_MAX_DROPPED = 24


def default_max_dropped(view: CycleView) -> int:
    """How many dropped candidates to draw: twice the tree size, at most DEFAULT_MAX_DROPPED."""
    return min(DEFAULT_MAX_DROPPED, max(8, 2 * view.tree_size))


# ---- stages -------------------------------------------------------------------------------------
def stage_names(view: CycleView) -> list[str]:
    """Step-through stages of a cycle: 'Expand 1'..'Expand D' ('Copy' for a prompt-lookup chain),
    'Rerank', 'Verify'."""
    names = ["Copy" if s.get("lookup") else f"Expand {s['step']}" for s in view.steps]
    if view.steps:
        names.append("Rerank")
    names.append("Verify")
    return names


def _stage_kind(view: CycleView, stage: int | None) -> tuple[str, int]:
    n = len(stage_names(view))
    if stage is None:
        return "verify", 0
    stage = int(stage) + (n if stage < 0 else 0)
    stage = min(max(stage, 0), n - 1)
    if stage < len(view.steps):
        return "expand", view.steps[stage]["step"]
    if stage == len(view.steps) and view.steps:
        return "rerank", 0
    return "verify", 0


# ---- which nodes, where -------------------------------------------------------------------------
def select_keys(view: CycleView, show_dropped: bool = True, max_dropped: int = DEFAULT_MAX_DROPPED,
                must: set[int] | frozenset = frozenset()) -> tuple[list[int], int]:
    """Keys to draw: the tree (+ bonus), plus the most valuable dropped candidates.

    Returns (keys in creation order, number of dropped candidates left out). Values never
    increase along a path, so the most valuable dropped candidates form a tree with the kept
    ones; ancestors are added anyway, as are `must` keys (e.g. frontier nodes).
    """
    nodes = view.nodes
    keys = {k for k, n in nodes.items() if n.status != "dropped"}
    dropped = sorted((n for n in nodes.values() if n.status == "dropped"), key=lambda n: (-n.value, n.key))
    if show_dropped:
        extra = {n.key for n in dropped[: max(0, int(max_dropped))]} | {k for k in must if k in nodes}
        for k in list(extra):
            p = nodes[k].parent
            while p is not None and p not in keys and p not in extra:
                extra.add(p)
                p = nodes[p].parent
        keys |= extra
    hidden = sum(1 for n in dropped if n.key not in keys)
    order = [k for k in nodes if k in keys]
    return order, hidden


def build_graph(view: CycleView, keys: list[int]) -> nx.DiGraph:
    """A directed tree (parent → child); every node carries its CycleNode as `node`."""
    g = nx.DiGraph()
    for k in keys:
        g.add_node(k, node=view.nodes[k])
    for k in keys:
        p = view.nodes[k].parent
        if p is not None and p in g:
            g.add_edge(p, k)
    return g


def _child_order(g: nx.DiGraph, kids) -> list:
    def key(k):
        n: CycleNode = g.nodes[k]["node"]
        return (0 if n.status == "bonus" else 1, n.status == "dropped", n.sibling_rank, n.key)
    return sorted(kids, key=key)


def tree_layout(g: nx.DiGraph, root=ROOT_KEY, dropped_gap: float = 0.8) -> dict:
    """A tidy layered layout: x = depth, leaves stacked top to bottom, parents centred on children.

    Dropped leaves get a thinner slot than tree nodes so that faded candidates don't spread
    the tree. Returns {key: (x, y)} with y <= 0 (the first child on top).
    """
    pos: dict = {}
    cursor, last = 0.0, None
    for k in nx.dfs_postorder_nodes(g, root, sort_neighbors=lambda ks: _child_order(g, ks)):
        kids = _child_order(g, g.successors(k))
        n: CycleNode = g.nodes[k]["node"]
        if kids:
            y = (pos[kids[0]][1] + pos[kids[-1]][1]) / 2
        else:  # thin slots only between two dropped leaves; the bigger bonus box gets more room
            gap = dropped_gap if n.status == "dropped" and last == "dropped" else 1.25 if n.status == "bonus" else 1.0
            y = -(cursor + gap / 2)
            cursor += gap
            last = n.status
        pos[k] = (float(n.depth), y)
    return pos


# ---- looks ---------------------------------------------------------------------------------------
def _value_floor(view: CycleView) -> float:
    """log10 of the smallest value worth a colour (a round number), for the colour range."""
    vals = [n.value for n in view.nodes.values() if n.key >= 0 and n.value > 0 and n.status != "dropped"]
    lo = math.log10(min(vals)) if vals else -2.0
    return max(-6.0, min(-1.0, math.floor(lo)))


def _shade(n: CycleNode, color_by: str, lo: float) -> float:
    if color_by == "confidence":
        return n.confidence
    v = max(n.value, 10 ** lo)
    return (math.log10(v) - lo) / (0.0 - lo) if lo < 0 else 1.0


def _fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def hover_text(n: CycleNode, view: CycleView) -> str:
    tok = display_token(n.text, 40)
    if n.status == "root":
        top = f"<br>target's next choice: '{display_token(n.target_top_text or '', 30)}' " \
              f"(p={_fmt(n.target_top_prob)})" if n.target_top_text is not None else ""
        return f"<b>root '{tok}'</b> (id {n.token})<br>the newest accepted token; drafting starts here{top}"
    if n.status == "bonus":
        return (f"<b>bonus '{tok}'</b> (id {n.token})<br>the target's own token after the accepted path"
                f"<br>target p={_fmt(n.target_top_prob)} (its top choice there)")
    lines = [f"<b>'{tok}'</b> (id {n.token})",
             f"depth {n.depth} · rank {n.sibling_rank} under its parent · value rank {n.value_rank}"
             f"/{view.total_candidates or '?'}",
             f"confidence {_fmt(n.confidence)} · value {_fmt(n.value)}"]
    if n.source == "lookup":
        lines.append("↪ copied from the context (prompt lookup); confidence = measured acceptance rate of copies")
    elif view.sampled_drafts:
        lines.append("drawn from the head (sampled drafts): confidence = the draft probability of this rank, "
                     "whichever token was drawn")
    if n.status == "dropped":
        lines.append(f"dropped by the rerank (value below the cut-off {_fmt(view.cutoff_value)})")
    else:
        if n.target_prob is not None:
            lines.append(f"target p={_fmt(n.target_prob)} · target's choice here: "
                         f"'{display_token(n.target_top_text or '', 30)}' ({_fmt(n.target_top_prob)})")
        lines.append({"accepted": "<b>accepted</b>: the target chose this token",
                      "rejected": "<b>rejected</b>: the target chose "
                                  f"'{display_token(n.target_top_text or '', 30)}' here",
                      "unreached": "not reached: an ancestor was rejected, so it was never tested"}
                     .get(n.status, n.status))
    return "<br>".join(lines)


def _label(n: CycleNode, kind: str, limit: int) -> str:
    """The box text: verdict mark, ↪ for a copied token, the token; at most `limit` characters."""
    mark = ""
    if kind == "verify" and limit >= 8:  # in narrow columns the border colour alone says it
        mark = {"accepted": "✓ ", "rejected": "✗ ", "bonus": "★ "}.get(n.status, "")
    if n.source == "lookup":
        mark += "↪"
    return mark + display_token(n.text, max(2, limit - len(mark)))


def _style(n: CycleNode, kind: str, step: int, color_by: str, lo: float) -> dict:
    """fill, border, border width, text colour and opacity of a node box at a stage."""
    if n.status == "root":
        return dict(fill=style.ROOT, border=style.ROOT, width=2, ink="#ffffff", opacity=1.0)
    if n.status == "bonus":
        return dict(fill=style.BONUS, border="#b35806", width=3, ink=style.INK, opacity=1.0)
    fill = style.fill_color(_shade(n, color_by, lo))
    s = dict(fill=fill, border=style.INK, width=1, ink=style.ink_on(fill), opacity=1.0)
    if kind == "expand":
        if n.chosen_step == step:
            s.update(border=style.CHOSEN, width=4)
        elif n.step < step and n.chosen_step is None:  # an earlier candidate nobody expanded
            faded = style.fade(fill, 0.5)
            s.update(fill=faded, ink=style.ink_on(faded), border=style.UNREACHED)
        return s
    if n.status == "dropped":
        return dict(fill="#f4f4f4", border=style.DROPPED, width=1, ink="#9a9a9a", opacity=1.0)
    if kind == "rerank":
        return s
    if n.status == "accepted":
        s.update(border=style.ACCEPTED, width=4)
    elif n.status == "rejected":
        s.update(border=style.REJECTED, width=3)
    else:  # unreached
        faded = style.fade(fill, 0.45)
        s.update(fill=faded, border=style.UNREACHED, width=1, ink=style.ink_on(faded))
    return s


def _visible(n: CycleNode, kind: str, step: int) -> bool:
    if kind == "expand":
        return n.status == "root" or (n.status != "bonus" and n.step <= step)
    if kind == "rerank":
        return n.status != "bonus"
    return True


def _sizes(n_nodes: int) -> tuple[int, int, int]:
    """(font size, pixels per leaf slot, label length limit) for a tree of n nodes."""
    if n_nodes <= 30:
        return 15, 34, 16
    if n_nodes <= 70:
        return 13, 27, 14
    if n_nodes <= 130:
        return 11, 21, 12
    return 10, 17, 10


def _fit_label(limit: int, font: int, max_depth: int, width_px: int) -> int:
    """Characters a label may have so that boxes in neighbouring depth columns don't overlap."""
    column_px = 0.85 * width_px / (max_depth + 1.2) - 8  # less the box's padding and border
    return max(3, min(limit, int(column_px / (0.62 * font))))


# ---- the figure ----------------------------------------------------------------------------------
def tree_figure(trace: Trace | None = None, cycle: int = 0, *, view: CycleView | None = None,
                color_by: str = "value", show_dropped: bool = True, max_dropped: int | None = None,
                stage: int | None = None, title: str | None = None, height: int | None = None,
                width: int | None = None, compact: bool = False) -> go.Figure:
    """The draft tree of one cycle (or one stage of it: see `stage_names`)."""
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {COLOR_BY}, got {color_by!r}")
    view = view or cycle_view(trace, cycle)
    kind, step = _stage_kind(view, stage)
    if kind != "verify" or stage is not None:
        show_dropped = True  # the step-through always shows what the rerank threw away
    if max_dropped is None:
        max_dropped = default_max_dropped(view)
    must = {k for s in view.steps for k in s["chosen"]} if kind == "expand" else set()
    keys, hidden = select_keys(view, show_dropped, max_dropped, must)
    g = build_graph(view, keys)
    pos = tree_layout(g)
    lo = _value_floor(view)
    n_boxes = sum(1 for k in keys if view.nodes[k].status != "dropped") + sum(
        0.5 for k in keys if view.nodes[k].status == "dropped")
    font, slot_px, limit = _sizes(int(n_boxes))
    if compact:  # half-width figures (the compare view): shorter labels, smaller type
        font, limit = max(9, font - 2), min(limit, 8)
    max_depth = max((n.depth for n in view.nodes.values() if n.key in g), default=0)
    fit = _fit_label(limit + 2, font, max_depth, width or (420 if compact else 560))
    if fit < 7 and font > 11:  # deep trees (long copied chains): smaller type before shorter labels
        font -= 2
        fit = _fit_label(limit + 2, font, max_depth, width or (420 if compact else 560))
    limit = fit

    shown = [k for k in keys if _visible(view.nodes[k], kind, step)]
    on_path = {k for k in keys if view.nodes[k].status in ("root", "accepted", "bonus")} if kind == "verify" else set()

    fig = go.Figure()
    # edges, grouped by look
    groups = {"path": ([], [], dict(color=style.ACCEPTED, width=4)),
              "tree": ([], [], dict(color=style.EDGE, width=1.6)),
              "bonus": ([], [], dict(color=style.BONUS, width=3, dash="dot")),
              "dropped": ([], [], dict(color=style.DROPPED, width=1, dash="dot"))}
    shown_set = set(shown)
    for p, c in g.edges():
        if p not in shown_set or c not in shown_set:
            continue
        cn = view.nodes[c]
        if cn.status == "bonus":
            grp = "bonus"
        elif kind == "verify" and p in on_path and c in on_path:
            grp = "path"
        elif cn.status == "dropped" and kind != "expand":
            grp = "dropped"
        else:
            grp = "tree"
        xs, ys, _ = groups[grp]
        (x0, y0), (x1, y1) = pos[p], pos[c]
        xm = x0 + 0.45
        xs += [x0, xm, xm, x1, None]  # an elbow: out of the parent, down/up, into the child
        ys += [y0, y0, y1, y1, None]
    for name, (xs, ys, line) in groups.items():
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(shape="spline", smoothing=0.6, **line),
                                     hoverinfo="skip", showlegend=False, name=f"edges:{name}"))

    # hover points (invisible markers under the boxes), one trace per status for tests and legend
    annotations = []
    by_status: dict[str, list] = {}
    for k in shown:
        n = view.nodes[k]
        st = _style(n, kind, step, color_by, lo)
        x, y = pos[k]
        annotations.append(dict(
            x=x, y=y, text=_label(n, kind, limit), showarrow=False, xanchor="center", yanchor="middle",
            bgcolor=st["fill"], bordercolor=st["border"], borderwidth=st["width"], borderpad=3 if font > 11 else 2,
            opacity=st["opacity"], font=dict(family=style.MONO, size=font - (3 if n.status == "dropped" else 0),
                                             color=st["ink"]),
            hovertext=hover_text(n, view), name=f"node:{k}:{n.status}"))
        status = n.status if kind == "verify" else ("dropped" if n.status == "dropped" and kind == "rerank"
                                                    else "root" if n.status == "root" else "candidate")
        by_status.setdefault(status, []).append((x, y, hover_text(n, view), k))
    for status, pts in by_status.items():
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=f"nodes:{status}",
            marker=dict(size=font * 2, opacity=0), hovertext=[p[2] for p in pts], hoverinfo="text",
            customdata=[p[3] for p in pts], showlegend=False))

    # legend entries (empty traces) for what this stage shows
    def legend(name, fill, border, symbol="square", width=3):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, showlegend=True,
                                 marker=dict(symbol=symbol, size=15, color=fill, line=dict(color=border, width=width))))
    mid = style.fill_color(0.55)
    if kind == "verify":
        legend("✓ accepted", mid, style.ACCEPTED)
        legend("✗ rejected", mid, style.REJECTED)
        if any(view.nodes[k].status == "unreached" for k in shown):
            legend("not reached", style.fill_color(0.3), style.UNREACHED, width=1)
        if BONUS_KEY in shown_set:
            legend("★ target's bonus token", style.BONUS, "#b35806")
    elif kind == "expand":
        legend("chosen to expand next", mid, style.CHOSEN)
    if any(view.nodes[k].source == "lookup" for k in shown):
        legend("↪ copied from the context", mid, style.INK, width=1)
    if any(view.nodes[k].status == "dropped" for k in shown) and kind != "expand":
        legend("dropped by the rerank", "#eeeeee", style.DROPPED, width=1)

    # the colour bar (a hidden scatter that owns the colour scale)
    if color_by == "value":
        ticks = list(range(int(lo), 1))
        cbar = dict(title=dict(text="draft value<br>(log scale)", side="right"), tickvals=ticks,
                    ticktext=[_fmt(10.0 ** t).rstrip("0").rstrip(".") if t > -3 else f"1e{t}" for t in ticks])
        cmin, cmax = lo, 0.0
    else:
        cbar = dict(title=dict(text="confidence<br>(this step)", side="right"), tickvals=[0, 0.25, 0.5, 0.75, 1],
                    ticktext=["0", ".25", ".5", ".75", "1"])
        cmin, cmax = 0.0, 1.0
    cbar.update(thickness=14, len=0.75, x=1.0, xanchor="left", y=0.45, outlinewidth=0)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             name="colorbar", marker=dict(color=[cmin], cmin=cmin, cmax=cmax,
                                                          colorscale=style.FILL_SCALE, showscale=True,
                                                          colorbar=cbar)))

    # axes, size, title
    ys = [p[1] for p in pos.values()] or [0.0]
    ymin, ymax = min(ys) - 0.8, max(ys) + 0.8
    span = ymax - ymin
    h = height or int(min(1300, max(340, span * slot_px + 130)))
    note = f"  ·  {hidden} more dropped (not shown)" if hidden else ""
    fig.update_layout(**style.base_layout(
        title=dict(text=title if title is not None else cycle_title(view, kind, step) + note, x=0.01,
                   font=dict(size=16)),
        annotations=annotations, height=h, width=width, hovermode="closest", dragmode="pan",
        margin=dict(l=20, r=30, t=70, b=60),
        legend=dict(orientation="h", x=0.0, y=-0.01, yanchor="top", xanchor="left", font=dict(size=13),
                    bgcolor="rgba(255,255,255,0)"),
    ))
    fig.update_xaxes(range=[-0.55, max_depth + 0.6], tickvals=list(range(max_depth + 1)),
                     ticktext=["root"] + [f"depth {d}" for d in range(1, max_depth + 1)], side="top",
                     showgrid=True, gridcolor="#f1f3f5", zeroline=False, fixedrange=False,
                     tickfont=dict(size=12, color="#57606a"))
    fig.update_yaxes(range=[ymin, ymax], visible=False, fixedrange=False)
    fig.layout.meta = {"cycle": view.index, "stage": kind, "step": step, "nodes": len(shown), "hidden": hidden}
    return fig


def cycle_title(view: CycleView, kind: str = "verify", step: int = 0) -> str:
    if kind == "expand":
        s = next(s for s in view.steps if s["step"] == step)
        if s.get("lookup"):
            return f"Cycle {view.index} · copy: {len(s['new'])} candidates from prompt lookup"
        return f"Cycle {view.index} · expansion step {step}: {len(s['new'])} new candidates"
    if kind == "rerank":
        return (f"Cycle {view.index} · rerank: keep {view.tree_size} of {view.total_candidates} candidates"
                + (f" (value ≥ {_fmt(view.cutoff_value)})" if view.cutoff_value is not None else ""))
    bonus = " + bonus" if BONUS_KEY in view.nodes else ""
    return (f"Cycle {view.index} · {view.tree_size} drafted → {view.accepted} accepted{bonus} "
            f"= {view.new_tokens} token{'s' if view.new_tokens != 1 else ''}")


def stage_caption(view: CycleView, stage: int | None) -> str:
    """A short markdown explanation of what a step-through stage shows."""
    kind, step = _stage_kind(view, stage)
    if kind == "expand":
        s = next(s for s in view.steps if s["step"] == step)
        if s.get("lookup") and view.sampled_drafts:
            return (f"**Copy (prompt lookup).** The newest tokens already occurred in the context, so the tokens "
                    f"that followed them there join the tree as a chain: **{len(s['new'])} copied candidates ↪**. "
                    "With sampled drafts the drawn nodes were chosen first, by their own values; the chain "
                    "continues below a kept drawn node with the same token, and each copy is tried after its "
                    "parent's drawn children, against what is left of p. Copies are kept while they raise the "
                    "expected tokens per second (confidence = the measured acceptance rate of copies).")
        if s.get("lookup"):
            return (f"**Copy (prompt lookup).** The newest tokens already occurred in the context, so the tokens "
                    f"that followed them there join the tree as a chain from the root: **{len(s['new'])} copied "
                    "candidates ↪** (where the drafter proposed the same token, its node is shared). A copied "
                    "token's confidence is the measured acceptance rate of copies at its position, so the rerank "
                    "weighs both sources alike.")
        expansions = sum(1 for s in view.steps if not s.get("lookup"))
        who = "The root asks" if s["frontier"] == [-1] else f"The {len(s['frontier'])} frontier nodes ask"
        nxt = (f" The **{len(s['chosen'])} most valuable** (gold border) become the frontier for step {step + 1}."
               if s["chosen"] and step < expansions else " This is the last step.")
        if view.sampled_drafts:
            what = ("next tokens, **drawn** from its distribution (sampled drafts: a child's confidence is the "
                    "draft probability of its rank, whichever token came out)")
        else:
            what = "most likely next tokens"
        return (f"**Expansion step {step} of {expansions}.** {who} the drafter for their {what}: "
                f"**{len(s['new'])} new candidates** at depth {step}. Each candidate's *value* is the product "
                f"of draft confidences along its path (its chance to be accepted).{nxt}")
    if kind == "rerank" and view.sampled_drafts and any(s.get("lookup") for s in view.steps):
        return (f"**Rerank.** The drawn candidates are sorted by value and the most valuable kept "
                f"(value ≥ {_fmt(view.cutoff_value)}); the copied ones ↪ join them as far as they pay: "
                f"**{view.tree_size} nodes** of {view.total_candidates} candidates form the draft tree. Faded: "
                "dropped candidates.")
    if kind == "rerank":
        return (f"**Rerank.** All **{view.total_candidates}** candidates are sorted by value and the "
                f"**{view.tree_size} most valuable** form the draft tree (value ≥ {_fmt(view.cutoff_value)}). "
                "Value never grows along a path, so the kept nodes are a tree. Faded: dropped candidates.")
    bonus = BONUS_KEY in view.nodes
    test = ("with probability min(1, p/q), the target's probability over the draft's (after a rejection the "
            "next child is tested against what is left of p)" if view.sampled_drafts
            else "when the target would pick the same token")
    return (f"**Verification.** The target scores all **{view.tree_size}** drafted nodes in **one forward pass** "
            "(a tree attention mask: each node sees only its ancestors). Walking down from the root, a node is "
            f"**accepted ✓** {test}, the other tested children are **rejected ✗**, "
            "and nodes below a rejection are never reached (grey). "
            + (f"The target's own token after the accepted path is the **bonus ★**: "
               f"{view.accepted} accepted + 1 bonus = **{view.new_tokens} tokens** from one target forward."
               if bonus else f"{view.accepted} accepted drafts (the answer ended here)."))
