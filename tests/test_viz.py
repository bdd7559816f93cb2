"""viz/: figures from a known hand-built trace (fast, no model) and from the shipped example traces."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from eagle2.trace import Trace
from viz import charts, style
from viz.data import BONUS_KEY, ROOT_KEY, cycle_view, display_token, token_spans
from viz.data import tested_nodes as _tested
from viz.html import summary_html, tokens_html
from viz.sample import tiny_trace
from viz.tree_figure import (build_graph, select_keys, stage_caption, stage_names, tree_figure, tree_layout)

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "traces").glob("*.json"))


@pytest.fixture
def trace():
    return tiny_trace()


def boxes(fig):
    """Node boxes (annotations named node:<key>:<status>) by key."""
    out = {}
    for a in fig.layout.annotations:
        if a.name and a.name.startswith("node:"):
            _, key, status = a.name.split(":")
            out[int(key)] = (status, a)
    return out


def luminance(hex_color: str) -> float:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i: i + 2], 16) for i in (0, 2, 4))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# ---- data -------------------------------------------------------------------------------------------
def test_cycle_view_statuses(trace):
    v = cycle_view(trace, 0)
    assert len(v.nodes) == 10 + 2  # ten candidates, the root and the bonus
    by = {s: sorted(n.key for n in v.by_status(s)) for s in ("root", "accepted", "rejected", "unreached",
                                                                "dropped", "bonus")}
    assert by == {"root": [ROOT_KEY], "accepted": [0, 2], "rejected": [1, 6], "unreached": [4],
                  "dropped": [3, 5, 7, 8, 9], "bonus": [BONUS_KEY]}
    assert v.accepted == 2 and v.new_tokens == 3 and v.tree_size == 5
    assert v.cutoff_value == pytest.approx(0.27) and v.total_candidates == 10
    assert v.nodes[6].target_top_text == " clear"  # what the target chose where " blue" was rejected
    assert v.nodes[BONUS_KEY].parent == 2  # the bonus hangs under the last accepted node
    assert v.nodes[1].sibling_rank == 2 and v.nodes[0].value_rank == 1
    assert v.nodes[8].chosen_step == 3 and v.nodes[3].chosen_step is None


def test_policy_without_rerank_record(trace):
    trace.cycles[0].rerank = None  # e.g. a user policy that reranks without telling the observers
    v = cycle_view(trace, 0)
    assert sorted(n.key for n in v.by_status("dropped")) == [3, 5, 7, 8, 9]  # from the verified tree


def test_token_spans_origins_and_cycles(trace):
    spans = token_spans(trace)
    assert [s.text for s in spans] == ["The", " sky", " is", " clear", "."]
    assert [s.origin for s in spans] == ["target", "draft", "draft", "target", "target"]
    assert [s.cycle for s in spans] == [-1, 0, 0, 0, 1]


def test_tested_nodes_leave_out_unreached(trace):
    t = _tested(trace)
    assert len(t) == 6  # cycle 0: sky ✓ sea ✗ is ✓ blue ✗ (looks never tested); cycle 1: two ✗
    assert sum(x.accepted for x in t) == 2


def test_display_token():
    assert display_token(" sky") == "␣sky"
    assert display_token("a\nb") == "a⏎b"
    assert display_token("") == "∅"
    assert display_token("x" * 40, limit=10).endswith("…")


# ---- the tree figure ----------------------------------------------------------------------------------
def test_tree_figure_nodes_colours_and_markers(trace):
    fig = tree_figure(trace, 0)
    b = boxes(fig)
    assert len(b) == 12  # every node incl. the five dropped candidates and the bonus
    status = {k: s for k, (s, _) in b.items()}
    assert [k for k, s in status.items() if s == "dropped"] == [3, 5, 7, 8, 9]
    for k in (0, 2):  # accepted: green border and a tick
        a = b[k][1]
        assert a.bordercolor == style.ACCEPTED and a.text.startswith("✓") and a.borderwidth >= 3
    for k in (1, 6):  # rejected: red border and a cross
        a = b[k][1]
        assert a.bordercolor == style.REJECTED and a.text.startswith("✗")
    assert b[BONUS_KEY][1].bgcolor == style.BONUS and b[BONUS_KEY][1].text == "★ ␣clear"
    assert b[ROOT_KEY][1].bgcolor == style.ROOT
    for k in (3, 5, 7, 8, 9):  # dropped: faded (light fill, grey text, thin light border)
        a = b[k][1]
        assert a.bgcolor == "#f4f4f4" and a.bordercolor == style.DROPPED and luminance(a.font.color) > 120
    # unreached: lighter than the same value drawn as a tested node would be
    assert b[4][1].bordercolor == style.UNREACHED
    # value colour: the more valuable " sky" (.6) is darker than " blue" (.27)
    assert luminance(b[0][1].bgcolor) < luminance(b[6][1].bgcolor)
    # the rejected node's hover names the target's choice
    assert "' ␣clear'" in b[6][1].hovertext.replace("'␣clear'", "' ␣clear'")
    # a colour bar and a legend
    assert any(t.name == "colorbar" and t.marker.showscale for t in fig.data)
    legend = {t.name for t in fig.data if t.showlegend}
    assert {"✓ accepted", "✗ rejected", "dropped by the rerank", "★ target's bonus token"} <= legend
    assert fig.layout.meta["nodes"] == 12 and fig.layout.meta["hidden"] == 0
    assert fig.layout.title.text.startswith("Cycle 0 · 5 drafted → 2 accepted + bonus = 3 tokens")


def test_tree_figure_toggle_dropped_and_cap(trace):
    fig = tree_figure(trace, 0, show_dropped=False)
    assert sorted(boxes(fig)) == sorted([ROOT_KEY, 0, 1, 2, 4, 6, BONUS_KEY])
    keys, hidden = select_keys(cycle_view(trace, 0), show_dropped=True, max_dropped=1)
    assert 3 in keys and hidden == 4  # " was" (.24) is the most valuable dropped candidate


def test_tree_figure_colour_by_confidence(trace):
    by_value = boxes(tree_figure(trace, 0))
    by_conf = boxes(tree_figure(trace, 0, color_by="confidence"))
    # " blue": value .27 but confidence .9, so it gets darker when coloured by confidence
    assert luminance(by_conf[6][1].bgcolor) < luminance(by_value[6][1].bgcolor)
    with pytest.raises(ValueError):
        tree_figure(trace, 0, color_by="rank")


def test_tree_layout_is_tidy(trace):
    v = cycle_view(trace, 0)
    keys, _ = select_keys(v, True, 99)
    g = build_graph(v, keys)
    assert g.number_of_nodes() == 12 and g.number_of_edges() == 11
    pos = tree_layout(g)
    for k, (x, y) in pos.items():
        assert x == v.nodes[k].depth
    leaves = [k for k in g if g.out_degree(k) == 0]
    ys = sorted(pos[k][1] for k in leaves)
    assert all(b - a >= 0.79 for a, b in zip(ys, ys[1:]))  # leaves never overlap
    for k in g:
        kids = list(g.successors(k))
        if kids:
            lo, hi = min(pos[c][1] for c in kids), max(pos[c][1] for c in kids)
            assert lo <= pos[k][1] <= hi


def test_step_through_stages(trace):
    v = cycle_view(trace, 0)
    assert stage_names(v) == ["Expand 1", "Expand 2", "Expand 3", "Rerank", "Verify"]
    s1 = boxes(tree_figure(trace, 0, stage=0))
    assert sorted(s1) == [ROOT_KEY, 0, 1]
    s2 = boxes(tree_figure(trace, 0, stage=1))
    assert len(s2) == 7
    assert s2[2][1].bordercolor == style.CHOSEN and s2[4][1].bordercolor == style.CHOSEN  # next frontier
    assert s2[3][1].bordercolor != style.CHOSEN
    rr = tree_figure(trace, 0, stage=3)
    rb = boxes(rr)
    assert BONUS_KEY not in rb and len(rb) == 11
    assert rb[3][0] == "dropped" and rb[0][1].bordercolor == style.INK  # no verdict yet
    assert rr.layout.meta["stage"] == "rerank" and "keep 5 of 10" in rr.layout.title.text
    assert tree_figure(trace, 0, stage=4).layout.meta["stage"] == "verify"
    # positions stay put from stage to stage
    assert s1[0][1].y == rb[0][1].y and s2[4][1].x == rb[4][1].x
    assert "Expansion step 2" in stage_caption(v, 1) and "Rerank" in stage_caption(v, 3)
    assert "bonus" in stage_caption(v, 4)


def test_json_round_trip_draws_the_same(trace):
    again = Trace.from_json(trace.to_json())
    a, b = tree_figure(trace, 0), tree_figure(again, 0)
    assert [x.text for x in a.layout.annotations] == [x.text for x in b.layout.annotations]


def test_cycle_out_of_range(trace):
    with pytest.raises(ValueError, match="does not exist"):
        cycle_view(trace, 5)
    with pytest.raises(ValueError, match="no drafting cycles"):
        cycle_view(Trace(), 0)


# ---- charts and html ----------------------------------------------------------------------------------
def test_charts_numbers(trace):
    figs = charts.all_charts(trace)
    assert set(figs) == {"tokens_per_cycle", "time_split", "accepted_histogram", "acceptance_by_depth",
                         "calibration", "context_dependence"}
    depth = figs["acceptance_by_depth"].data[0]
    assert list(depth.x) == [1, 2, 3]
    assert list(depth.y) == pytest.approx([0.25, 1.0, 0.0])  # d1: sky ✓ of sky, sea, today, skies
    hist = figs["accepted_histogram"].data[0]
    assert list(hist.y)[:3] == [1, 0, 1]  # one cycle accepted 0 drafts, one accepted 2
    tpc = figs["tokens_per_cycle"].data
    assert list(tpc[0].y) == [2, 0] and list(tpc[1].y) == [1, 1]
    cal = figs["calibration"]
    assert list(cal.data[0].x) == [0, 1]  # the diagonal
    assert all(0 <= y <= 1 for y in cal.data[1].y)
    assert "τ = 1.67 per target forward" in figs["tokens_per_cycle"].layout.title.subtitle.text
    conf = charts.calibration(trace, "confidence")
    assert conf.layout.xaxis.title.text.startswith("draft confidence")


def test_charts_without_drafts():
    t = Trace(first_token=1, output_tokens=[1], token_text={"1": "x"})
    for fig in charts.all_charts(t).values():
        assert fig.layout.title.text  # an explanatory empty figure, no exception


def test_tokens_html(trace):
    h = tokens_html(trace, selected=0)
    assert h.count('class="tl-cyc') == 3
    assert 'class="tl-cyc tl-sel" data-cycle="0"' in h
    assert h.count("tl-draft") == 2 and h.count("tl-tok tl-target") == 3
    assert "&lt;" not in tokens_html(trace)  # plain tokens need no escaping here...
    assert "&lt;b&gt;" in tokens_html([type(token_spans(trace)[0])(5, "<b>", "target", 0)])  # ...others do
    assert "tl-empty" in tokens_html(None)
    s = summary_html(trace)
    assert "1.67" in s and "eagle2 (top_k=2, depth=3, total_tokens=5)" in s


# ---- shipped example traces ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_traces_open_and_draw(path):
    t0 = time.perf_counter()
    trace = Trace.load(path)
    assert trace.cycles and trace.token_text
    for i in range(len(trace.cycles)):
        cycle_view(trace, i)
    fig = tree_figure(trace, 0)
    charts.all_charts(trace)
    assert fig.layout.meta["nodes"] > 1
    assert time.perf_counter() - t0 < 10


def test_gpu_sized_example_is_readable():
    path = next((p for p in EXAMPLES if "gpu" in p.name), None)
    if path is None:
        pytest.skip("no GPU-sized example trace shipped")
    trace = Trace.load(path)
    v = cycle_view(trace, 0)
    assert v.tree_size >= 60
    t0 = time.perf_counter()
    fig = tree_figure(trace, 0)
    assert time.perf_counter() - t0 < 3
    b = boxes(fig)
    assert sum(1 for s, _ in b.values() if s != "dropped") == v.tree_size + 1 + (BONUS_KEY in v.nodes)
    assert fig.layout.height <= 1300
    sizes = {a.font.size for _, a in b.values()}
    assert min(sizes) >= 8 and not math.isnan(min(sizes))


def test_labels_of_a_long_copied_chain_do_not_overlap():
    """Boxes of neighbouring depth columns leave room for each other, even on a deep lookup chain."""
    from pathlib import Path

    from eagle2.trace import Trace
    from viz.tree_figure import tree_figure

    trace = Trace.load(Path(__file__).resolve().parents[1] / "examples" / "traces" / "04-cpu-eagle2-auto-lookup.json")
    deep = max(range(len(trace.cycles)), key=lambda i: max(c.depth for s in trace.cycles[i].expansions
                                                           for c in s.candidates))
    width = 560
    fig = tree_figure(trace, deep, width=width)
    boxes = [a for a in fig.layout.annotations if a.name and a.name.startswith("node:")]
    assert any("↪" in a.text for a in boxes)
    xs = [a.x for a in boxes]
    span = (max(xs) + 0.6) - (-0.55)  # the x range tree_figure sets
    px_per_depth = (width - 50) / span  # margins l=20, r=30
    for a in boxes:
        est_px = len(a.text) * 0.62 * a.font.size + 8  # text + padding and border
        assert est_px <= px_per_depth, f"label {a.text!r} ({est_px:.0f} px) is wider than a column ({px_per_depth:.0f} px)"


def test_sampled_drafts_are_labelled(trace):
    """A trace recorded with sampled drafts says so: in the policy label and on every drafted node."""
    from viz.data import policy_label
    from viz.tree_figure import hover_text

    node = next(n for n in cycle_view(trace, 0).nodes.values() if n.status == "accepted")
    assert "sampled drafts" not in hover_text(node, cycle_view(trace, 0))
    trace.meta = dict(trace.meta, policy="eagle2-auto", drafts="sampled")
    view = cycle_view(trace, 0)
    assert view.sampled_drafts and "sampled drafts" in policy_label(trace.meta)
    assert "drawn from the head (sampled drafts)" in hover_text(view.nodes[node.key], view)
    assert "sampled drafts)" in policy_label(trace.meta)  # no draft temperature recorded: none shown
    assert "sampled drafts at 0.9·T" in policy_label(dict(trace.meta, draft_temperature=0.9))
    assert "sampled drafts)" in policy_label(dict(trace.meta, draft_temperature=1.0))


def test_sampled_drafts_captions(trace):
    """Step-through captions say the children were drawn and how they were tested."""
    assert "most likely next tokens" in stage_caption(cycle_view(trace, 0), 0)
    trace.meta = dict(trace.meta, drafts="sampled")
    view = cycle_view(trace, 0)
    assert "**drawn**" in stage_caption(view, 0)
    assert "min(1, p/q)" in stage_caption(view, len(stage_names(view)) - 1)
