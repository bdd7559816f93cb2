"""What each view of the page shows for a trace, as {component name: value} dicts (app.py maps
names to components), and the status line's messages."""

from __future__ import annotations

import html
import warnings

import gradio as gr

from eagle2.trace import Trace
from viz import charts
from viz.data import BONUS_KEY, ROOT_KEY, cycle_view, display_token, policy_label, summary
from viz.html import summary_html, tokens_html
from viz.tree_figure import stage_caption, stage_names, tree_figure

from .config import LIMITS, policy_choices, policy_sizes, total_cap
from .traces import trace_file

RUNNING_INFO = "*Running… each view fills in when this run ends (the answer streams in meanwhile).*"
CHART_NAMES = ("tokens_per_cycle", "time_split", "accepted_histogram", "acceptance_by_depth", "calibration",
               "context_dependence")


def message(kind: str, text: str) -> str:
    """The status line: kind is error, warn, ok, info or busy."""
    icon = {"error": "⚠", "warn": "⚠", "ok": "✓", "info": "ℹ", "busy": "…"}.get(kind, "")
    return f'<div class="tl-status tl-{kind}">{icon} {html.escape(text)}</div>'


def toast(text: str) -> None:
    """A warning toast in the browser (outside a request, e.g. in tests, nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gr.Warning(text)
        except Exception:
            pass


def clamp_cycle(trace: Trace | None, cycle) -> int:
    n = len(trace.cycles) if trace else 0
    try:
        c = int(cycle)
    except (TypeError, ValueError):
        c = 0
    return min(max(c, 0), max(0, n - 1))


def cycle_info(trace: Trace | None, cycle: int) -> str:
    if trace is None:
        return ""
    if not trace.cycles:
        return "This answer has no drafting cycles (it stopped at the first token)."
    v = cycle_view(trace, cycle)
    root = v.nodes[ROOT_KEY]
    acc = [n for n in v.nodes.values() if n.status == "accepted"]
    acc.sort(key=lambda n: n.depth)
    accepted = " ".join(f"`{display_token(n.text)}`" for n in acc) or "none"
    bonus = f" · bonus ★ `{display_token(v.nodes[BONUS_KEY].text)}`" if BONUS_KEY in v.nodes else ""
    t = v.timings
    return (f"**Cycle {cycle}** of {len(trace.cycles)} · root `{display_token(root.text)}` · accepted ✓ {accepted}"
            f"{bonus} · draft {1000 * t['draft_s']:.0f} ms · verify {1000 * t['verify_s']:.0f} ms")


def safe_tree(trace: Trace | None, cycle: int, **kw):
    if trace is None or not trace.cycles:
        return None
    return tree_figure(trace, clamp_cycle(trace, cycle), **kw)


def stage_outputs(trace: Trace | None, cycle: int, stage_name: str | None, color_by: str) -> dict:
    if trace is None or not trace.cycles:
        return {"stage": gr.update(choices=["Verify"], value="Verify"), "stage_plot": None, "stage_caption": ""}
    c = clamp_cycle(trace, cycle)
    v = cycle_view(trace, c)
    names = stage_names(v)
    name = stage_name if stage_name in names else names[0]
    i = names.index(name)
    return {"stage": gr.update(choices=names, value=name),
            "stage_plot": tree_figure(trace, c, view=v, stage=i, color_by=color_by),
            "stage_caption": stage_caption(v, i)}


def cycle_outputs(trace: Trace | None, cycle, color_by: str = "value", show_dropped: bool = True,
                  stage_name: str | None = None) -> dict:
    """Everything that depends on the selected cycle."""
    c = clamp_cycle(trace, cycle)
    out = {"cycle": gr.update(value=c), "cycle_info": cycle_info(trace, c),
           "answer": tokens_html(trace, selected=c) if trace else tokens_html(None),
           "tree": safe_tree(trace, c, color_by=color_by, show_dropped=show_dropped)}
    out.update(stage_outputs(trace, c, stage_name, color_by))
    return out


def running_outputs(status: str) -> dict:
    """Every view while a run streams: this run's answer and placeholders, never the previous trace
    (so a slider move or a token click during the run has nothing old to bring back)."""
    out = {"status": status, "trace": None, "cycle_info": RUNNING_INFO, "tree": None, "stage_plot": None,
           "summary": '<div class="tl-cards tl-pending">Running… the summary appears when the run ends.</div>',
           "answer": tokens_html(None, live=True, empty="Waiting for the first token…"),
           # interactive first: the page applies an update's keys one at a time, in order
           "cycle": gr.update(interactive=False, minimum=0, maximum=1, value=0,
                              label="Cycle: available when the run ends"),
           "stage": gr.update(choices=["Verify"], value="Verify"), "stage_caption": "",
           "download": gr.update(value=None, interactive=False)}
    out.update({f"chart_{k}": None for k in CHART_NAMES})
    return out


def settings_outputs(trace: Trace) -> dict:
    """The settings widgets set to what produced `trace` (an example or an upload), so the panel
    says what is on screen; values the widgets cannot show are left alone."""
    meta = trace.meta or {}
    out: dict = {}
    policy = meta.get("policy")
    if policy and meta.get("lookup") and f"{policy}+lookup" in policy_choices():
        policy = f"{policy}+lookup"
    if policy in policy_choices():
        used = policy_sizes(policy)
        out["policy"] = gr.update(value=policy)
        sizes = {k: meta.get(k) for k in ("top_k", "depth", "total_tokens")}
        sizes = {k: v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)
                 and LIMITS[k][0] <= v <= LIMITS[k][1]}
        for k in ("top_k", "depth", "total_tokens"):
            out[k] = gr.update(interactive=k in used, **({"value": sizes[k]} if k in sizes else {}))
        if "top_k" in sizes and "depth" in sizes:
            cap = total_cap(sizes["top_k"], sizes["depth"])
            out["total_tokens"] = gr.update(interactive="total_tokens" in used, maximum=cap,
                                            **({"value": min(sizes["total_tokens"], cap)} if "total_tokens" in sizes
                                               else {}))
    for k in ("temperature", "top_p"):
        v = meta.get(k, 0.0 if k == "temperature" else 1.0)
        if isinstance(v, (int, float)) and LIMITS[k][0] <= v <= LIMITS[k][1]:
            out[k] = gr.update(value=v)
    for k in ("max_new_tokens", "seed"):
        v = meta.get(k)
        if isinstance(v, int) and LIMITS[k][0] <= v <= LIMITS[k][1]:
            out[k] = gr.update(value=v)
    for k, key in (("head", "head"), ("target", "target_spec")):
        if isinstance(meta.get(key), str) and meta[key]:
            out[k] = gr.update(value=meta[key])
    return out


def trace_outputs(trace: Trace, color_by="value", show_dropped=True, calib_by="value", status="",
                  cycle: int = 0) -> dict:
    """The whole UI for one trace (a fresh run, an upload or an example), showing `cycle`; the
    download button always serves this trace."""
    n = len(trace.cycles)
    cycle = clamp_cycle(trace, cycle)
    out = cycle_outputs(trace, cycle, color_by, show_dropped)
    out.update({"status": status, "trace": trace, "summary": summary_html(trace),
                "cycle": gr.update(minimum=0, maximum=max(1, n - 1), value=cycle, step=1, interactive=n > 1,
                                   label=f"Cycle (0–{max(0, n - 1)}): drag, or click a token in the answer")})
    figs = charts.all_charts(trace, calib_by)
    out.update({f"chart_{k}": f for k, f in figs.items()})
    out["download"] = gr.update(value=trace_file(trace), interactive=True)
    return out


# ---- compare -------------------------------------------------------------------------------------------
def answers_note(ta: Trace, tb: Trace) -> str:
    """Do the two answers agree? (Greedy speculative decoding should reproduce the target exactly.)"""
    a, b = ta.output_tokens, tb.output_tokens
    if a == b:
        return "Same answer, token for token: speculative decoding does not change the target's output."
    sampled = (ta.meta.get("temperature") or 0) > 0 or (tb.meta.get("temperature") or 0) > 0
    if sampled:
        return "Different answers: with sampling (temperature > 0) each run draws its own sample."
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if first == min(len(a), len(b)):
        return f"One answer is a prefix of the other: they agree on all {first} shared tokens."
    return (f"The answers agree on the first {first} tokens, then differ. Greedy speculative decoding should "
            "match exactly; a late difference usually means a near-tie flipped under low-precision (bfloat16) "
            "rounding, because trees of different shapes do slightly different arithmetic.")


def compare_table(ta: Trace, tb: Trace) -> str:
    sa, sb = summary(ta), summary(tb)
    rows = [("policy", policy_label({**ta.meta, **sa}), policy_label({**tb.meta, **sb})),
            ("τ (tokens / target forward)", f"{sa['tau']:.2f}", f"{sb['tau']:.2f}"),
            ("tokens per cycle", f"{sa['mean_accepted']:.2f}", f"{sb['mean_accepted']:.2f}"),
            ("tokens / second", f"{sa['tokens_per_s']:.1f}", f"{sb['tokens_per_s']:.1f}"),
            ("cycles (target forwards − 1)", str(sa["cycles"]), str(sb["cycles"])),
            ("draft / verify seconds", f"{sa['draft_s']:.2f} / {sa['verify_s']:.2f}",
             f"{sb['draft_s']:.2f} / {sb['verify_s']:.2f}")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(x)}</td><td>{html.escape(y)}</td></tr>"
                   for k, x, y in rows)
    note = answers_note(ta, tb)
    return (f'<table class="tl-cmp"><tr><th></th><th>A</th><th>B</th></tr>{body}</table>'
            f'<div class="tl-cmp-note">{html.escape(note)}</div>')


def compare_outputs(ta: Trace, tb: Trace, cycle, color_by="value", status=None) -> dict:
    n = max(len(ta.cycles), len(tb.cycles))
    c = min(max(int(cycle or 0), 0), max(0, n - 1))
    out = {"cmp_state": (ta, tb), "cmp_table": compare_table(ta, tb),
           "cmp_cycle": gr.update(minimum=0, maximum=max(1, n - 1), value=c, interactive=n > 1),
           "cmp_answer_a": tokens_html(ta, selected=c if c < len(ta.cycles) else None),
           "cmp_answer_b": tokens_html(tb, selected=c if c < len(tb.cycles) else None)}
    for tag, t in (("a", ta), ("b", tb)):
        out[f"cmp_tree_{tag}"] = (tree_figure(t, c, color_by=color_by, show_dropped=False, compact=True,
                                              title=f"{tag.upper()}: {policy_label({**t.meta, **summary(t)})}"
                                                    f" · cycle {c}")
                                  if c < len(t.cycles) else None)
    if status is not None:
        out["cmp_status"] = status
    return out
