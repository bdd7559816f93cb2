"""The Gradio callbacks. Each returns (or yields) {component name: value}; app.py maps the names
to its components, so these run and test without a page."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from eagle2.trace import MAX_TRACE_BYTES
from viz import charts
from viz.data import cycle_view, policy_label, summary
from viz.html import tokens_html
from viz.tree_figure import stage_names

from .config import policy_defaults, policy_sizes, total_cap
from .run import MODELS, WARMUP, generate_stream
from .state import validate
from .traces import best_cycle, load_trace_path
from .views import (clamp_cycle, compare_outputs, cycle_outputs, message, running_outputs, safe_tree,
                    settings_outputs, stage_outputs, toast, trace_outputs)

# run_handler's inputs, in order (the components app.py passes)
RUN_INPUTS = ("prompt", "target", "head", "policy", "top_k", "depth", "total_tokens", "temperature", "top_p",
              "max_new_tokens", "seed", "color_by", "show_dropped", "calib_by")
PLAY_STEP_S = 1.2  # "Play all": seconds per stage


# ---- runs ------------------------------------------------------------------------------------------------
def _phase_status(kind: str, target: str, label: str) -> str:
    if kind == "wait":
        if WARMUP["v"] == "calibrate":
            return message("busy", "Getting ready: sizing the tree for this machine (once, at start-up: "
                                   "a few timed target forwards, ~10–20 s)…")
        return message("busy", "Waiting for another run to finish (one generation at a time)…")
    if kind == "load":
        return message("busy", "Preparing the drafter…" if target in MODELS.loaded() else
                       "Loading the model (first run only: seconds, or about a minute to convert the "
                       "embedded model on a new machine)…")
    if kind == "calibrate":
        return message("busy", "Sizing the tree for this machine (the first eagle2-auto run times a few "
                               "target forwards, ~10–20 s; cached afterwards)…")
    return message("busy", f"Generating with {label}…")


def run_handler(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
                seed, color_by="value", show_dropped=True, calib_by="value"):
    """Generator: clear every view, stream the answer, then fill every view with this run."""
    try:
        p = validate(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
                     seed)
    except ValueError as e:
        toast(str(e))
        yield {"status": message("warn", f"{e} (Nothing was run: the views still show the previous trace.)")}
        return
    label = policy_label(p.describe())
    yield running_outputs(_phase_status("wait", p.target, label))
    streamed = False
    for kind, payload in generate_stream(p):
        if kind in ("wait", "load", "calibrate", "run"):
            yield {"status": _phase_status(kind, p.target, label)}
        elif kind == "tokens":
            streamed = True
            yield {"status": message("busy", f"Generating with {label}: {len(payload)} tokens so far…"),
                   "answer": tokens_html(payload, live=True)}
        elif kind == "error":
            toast(payload)
            out = {"status": message("error", payload), "cycle_info": ""}
            if not streamed:
                out["answer"] = tokens_html(None, empty="No answer: this run failed (see the message above).")
            out["summary"] = ""
            yield out
        elif kind == "done":
            s, best = summary(payload), best_cycle(payload)
            yield trace_outputs(payload, color_by, show_dropped, calib_by, cycle=best, status=message(
                "ok", f"Done: {s['new_tokens']} tokens in {s['cycles']} cycles, τ = {s['tau']:.2f}. "
                      f"Showing cycle {best}, the one that accepted the most drafts."))


CMP_PHASES = {"wait": "waiting for another run…", "load": "preparing…",
              "calibrate": "sizing the tree for this machine…", "run": "generating…"}


def compare_handler(prompt, target, head, temperature, top_p, max_new_tokens, seed, pa, ka, da, ta, pb, kb, db, tb,
                    color_by="value"):
    """Generator: run two policies on the same prompt, one after the other."""
    try:
        a = validate(prompt, target, head, pa, ka, da, ta, temperature, top_p, max_new_tokens, seed)
        b = validate(prompt, target, head, pb, kb, db, tb, temperature, top_p, max_new_tokens, seed)
    except ValueError as e:
        toast(str(e))
        yield {"cmp_status": message("warn", str(e))}
        return
    yield {"cmp_state": None, "cmp_table": "", "cmp_tree_a": None, "cmp_tree_b": None,
           "cmp_answer_a": tokens_html(None, empty="Run A's answer appears here."),
           "cmp_answer_b": tokens_html(None, empty="Run B's answer appears here."),
           "cmp_cycle": gr.update(value=0, maximum=1, interactive=False)}
    traces = []
    for tag, p in (("A", a), ("B", b)):
        label = policy_label(p.describe())
        for kind, payload in generate_stream(p):
            if kind in CMP_PHASES:
                yield {"cmp_status": message("busy", f"Run {tag} ({label}): {CMP_PHASES[kind]}")}
            elif kind == "tokens":
                yield {"cmp_status": message("busy", f"Run {tag} ({label}): {len(payload)} tokens…"),
                       f"cmp_answer_{tag.lower()}": tokens_html(payload, live=True)}
            elif kind == "error":
                toast(payload)
                yield {"cmp_status": message("error", f"Run {tag} failed: {payload}")}
                return
            elif kind == "done":
                traces.append(payload)
    yield compare_outputs(traces[0], traces[1], 0, color_by, status=message(
        "ok", "Both runs done on the same prompt and settings. Pick a cycle to compare their trees."))


def on_cmp_cycle(state, cycle, color_by):
    if not state:
        return {"cmp_status": gr.skip()}
    return compare_outputs(state[0], state[1], cycle, color_by)


# ---- traces ------------------------------------------------------------------------------------------------
def open_trace_handler(path, color_by="value", show_dropped=True, calib_by="value", source="uploaded"):
    try:
        trace = load_trace_path(path, max_bytes=MAX_TRACE_BYTES if source == "example" else None)
    except ValueError as e:
        msg = f"Could not open the {source} trace: {e}"
        toast(msg)
        return {"status": message("error", msg)}
    name = Path(getattr(path, "name", path)).name
    example = source == "example"
    status = message("info", f"{'Example' if example else 'Uploaded'} trace {name} (no model was run; the sidebar "
                             "shows its settings). Type a prompt and press Run to generate your own.")
    out = trace_outputs(trace, color_by, show_dropped, calib_by, status=status, cycle=best_cycle(trace))
    out.update(settings_outputs(trace))
    prompt = trace.meta.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = prompt
    return out


def on_upload(path, color_by, show_dropped, calib_by):
    return open_trace_handler(path, color_by, show_dropped, calib_by, source="uploaded")


def on_example(path, color_by, show_dropped, calib_by):
    if not path:
        return {"status": gr.skip()}
    return open_trace_handler(path, color_by, show_dropped, calib_by, source="example")


def open_on_load(path: str):
    """A page-load callback that opens the trace at `path`, so the whole UI shows something at once."""
    def on_load(color_by, show_dropped, calib_by):
        out = open_trace_handler(path, color_by, show_dropped, calib_by, source="example")
        out.pop("prompt", None)  # what a fast visitor typed already stays
        out["example_trace"] = gr.update(value=None)
        return out

    return on_load


# ---- the selected cycle and its stages ---------------------------------------------------------------------
def on_cycle(trace, cycle, color_by, show_dropped, stage):
    if trace is None:  # a run is streaming: its answer stays; the cycle views fill in when it ends
        return {}
    return cycle_outputs(trace, cycle, color_by, show_dropped, stage)


def on_token_click(trace, color_by, show_dropped, stage, evt: gr.EventData):
    """A click on a token of the answer selects its cycle (the page sends {cycle: n})."""
    if trace is None:  # a click on a streaming token: keep the live answer
        return {}
    data = getattr(evt, "_data", None) or {}
    cycle = data.get("cycle", 0) if isinstance(data, dict) else 0
    return cycle_outputs(trace, max(0, int(cycle or 0)), color_by, show_dropped, stage)


def on_tree_opts(trace, cycle, color_by, show_dropped, stage):
    if trace is None:
        return {}
    out = {"tree": safe_tree(trace, cycle, color_by=color_by, show_dropped=show_dropped)}
    out.update(stage_outputs(trace, cycle, stage, color_by))
    return out


def on_stage(trace, cycle, stage, color_by):
    if trace is None:
        return {}
    return stage_outputs(trace, cycle, stage, color_by)


def step(delta: int):
    """The Prev (-1) / Next (+1) button's callback."""
    def go(trace, cycle, stage, color_by):
        if trace is None:
            return {}
        if not trace.cycles:
            return stage_outputs(trace, cycle, stage, color_by)
        names = stage_names(cycle_view(trace, clamp_cycle(trace, cycle)))
        i = names.index(stage) if stage in names else 0
        return stage_outputs(trace, cycle, names[min(max(i + delta, 0), len(names) - 1)], color_by)

    go.__name__ = f"step_{'next' if delta > 0 else 'prev'}"
    return go


def play(trace, cycle, stage, color_by):
    """Generator: every stage of the selected cycle in turn."""
    if trace is None:
        return
    if not trace.cycles:
        yield stage_outputs(trace, cycle, stage, color_by)
        return
    for name in stage_names(cycle_view(trace, clamp_cycle(trace, cycle))):
        yield stage_outputs(trace, cycle, name, color_by)
        time.sleep(PLAY_STEP_S)


def on_calib(trace, by):
    return {"chart_calibration": charts.calibration(trace, by) if trace is not None else None}


# ---- policy widgets (these return gr.update tuples for (top_k, depth, total_tokens)) -----------------------
def on_policy(name):
    """A new policy: its own default sizes, and grey out the ones it ignores."""
    used, d = policy_sizes(name), policy_defaults(name)
    cap = total_cap(d["top_k"], d["depth"])
    return (gr.update(value=d["top_k"], interactive="top_k" in used),
            gr.update(value=d["depth"], interactive="depth" in used),
            gr.update(value=min(d["total_tokens"], cap), maximum=cap, interactive="total_tokens" in used))


def on_size(top_k, depth, total):
    """total_tokens can't exceed what top_k x depth can hold."""
    cap = total_cap(top_k, depth)
    return gr.update(maximum=cap, value=min(int(total), cap))
