"""EAGLE-2 Tree Lab: watch a draft tree grow, get reranked and verified, token by token.

    python app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT respected)

The Gradio layout and its wiring only. What the callbacks do lives in `viz/lab/` (settings,
run parameters, the model cache and streaming, trace files, views, handlers); the figures in
`viz/`; decoding and the policy registry in `eagle2/`. The target model is loaded once and
shared read-only, and one lock runs generations one at a time.

Environment knobs:
    EAGLE2_APP_HEAD            initial draft head in the UI (default "default")
    EAGLE2_APP_MAX_NEW_TOKENS  upper bound for max_new_tokens (default 256)
    EAGLE2_APP_POLICIES        extra user policies, "module:Class" or "path/file.py:Class", comma-separated
    EAGLE2_APP_PRELOAD=0       skip the start-up preload (load the default model, size its tree)
    EAGLE2_APP_MAX_TRACE_BYTES trace uploads above this are refused (default and ceiling: 50 MiB)
    EAGLE2_APP_MAX_MODEL_BYTES / SPACE_ID  see viz/lab/guard.py (model size cap, public-Space mode)
"""

from __future__ import annotations

import html
import json
import os
import threading

import gradio as gr

from viz.html import legend_html, tokens_html
from viz.lab import handlers as H
from viz.lab import texts
from viz.lab.config import (COMPARE_DEFAULT_A, COMPARE_DEFAULT_B, DEFAULT_NEW_TOKENS, DEFAULT_POLICY, LIMITS,
                            MAX_PROMPT_CHARS, MAX_UPLOAD_BYTES, PROMPTS_FILE, SPECIAL_HEADS, default_head, install_user_policies,
                            policy_choices, policy_defaults, policy_sizes, total_cap)
from viz.lab.run import default_head_missing, limit_malloc_arenas, preload
from viz.lab.traces import example_traces
from viz.lab.views import message

SETTINGS = ["prompt", "target", "head", "policy", "top_k", "depth", "total_tokens", "temperature", "top_p",
            "max_new_tokens", "seed"]  # set from a trace that is opened (example or upload)
VIEWS = ["status", "trace", "summary", "cycle", "cycle_info", "answer", "tree", "stage", "stage_plot",
         "stage_caption", "download"] + [f"chart_{k}" for k in (
             "tokens_per_cycle", "time_split", "accepted_histogram", "acceptance_by_depth", "calibration",
             "context_dependence")]
CYCLE_VIEWS = ["cycle", "cycle_info", "answer", "tree", "stage", "stage_plot", "stage_caption"]
STAGE_VIEWS = ["stage", "stage_plot", "stage_caption"]
COMPARE_INPUTS = ["prompt", "target", "head", "temperature", "top_p", "max_new_tokens", "seed",
                  "cmp_policy_a", "cmp_top_k_a", "cmp_depth_a", "cmp_total_a",
                  "cmp_policy_b", "cmp_top_k_b", "cmp_depth_b", "cmp_total_b", "color_by"]
COMPARE_VIEWS = ["cmp_status", "cmp_state", "cmp_table", "cmp_cycle", "cmp_answer_a", "cmp_answer_b",
                 "cmp_tree_a", "cmp_tree_b"]


def _wrap(C: dict, fn, gen: bool = False):
    """Adapt a {name: value} handler to Gradio's {component: value}."""
    if gen:
        def run(*args):
            for d in fn(*args):
                yield {C[k]: v for k, v in d.items() if k in C}
    else:
        def run(*args):  # {} = nothing to change (e.g. a click on a token while a run streams)
            return {C[k]: v for k, v in fn(*args).items() if k in C} or gr.skip()
    run.__name__ = fn.__name__
    return run


# ---- layout ------------------------------------------------------------------------------------------------
def _size_sliders(C: dict, names: tuple[str, str, str], policy: str, values: tuple[int, int, int],
                  infos: tuple[str | None, str | None, str | None] = (None, None, None)) -> None:
    """top_k, depth and total_tokens sliders for `policy` (the sizes it ignores are greyed out)."""
    used = policy_sizes(policy)
    k, d, t = values
    ids = [n.replace("_", "-") for n in names]
    C[names[0]] = gr.Slider(*LIMITS["top_k"], value=k, step=1, label="top_k", info=infos[0],
                            interactive="top_k" in used, elem_id=ids[0])
    C[names[1]] = gr.Slider(*LIMITS["depth"], value=d, step=1, label="depth", info=infos[1],
                            interactive="depth" in used, elem_id=ids[1])
    C[names[2]] = gr.Slider(LIMITS["total_tokens"][0], total_cap(k, d), value=t, step=1, label="total_tokens",
                            info=infos[2], interactive="total_tokens" in used, elem_id=ids[2])


def _model_widgets(C: dict) -> None:
    gr.Markdown("### Model, head and tree")
    C["target"] = gr.Dropdown(["default"], value="default", allow_custom_value=True, label="Target model", elem_id="target",
                              info="default = embedded SmolLM2-135M-Instruct; or a hub id / folder")
    head0 = default_head()
    head_choices = [(v, k) for k, v in SPECIAL_HEADS.items()]
    if head0 not in SPECIAL_HEADS:
        head_choices.append((head0, head0))
    C["head"] = gr.Dropdown(head_choices, value=head0, allow_custom_value=True, label="Draft head",
                            info="or an EAGLE head hub id / folder", elem_id="head")
    C["policy"] = gr.Dropdown(policy_choices(), value=DEFAULT_POLICY, label="Tree policy", elem_id="policy",
                              info=texts.POLICY_INFO)
    d0 = policy_defaults(DEFAULT_POLICY)
    _size_sliders(C, ("top_k", "depth", "total_tokens"), DEFAULT_POLICY,
                  (d0["top_k"], d0["depth"], d0["total_tokens"]),
                  ("children proposed per expanded node",
                   "expansion steps (deepest draft token; a ceiling for eagle2-auto)",
                   "draft tokens kept by the rerank (eagle2-auto: chosen per cycle)"))


def _sampling_widgets(C: dict) -> None:
    gr.Markdown("### Sampling and length")
    C["temperature"] = gr.Slider(*LIMITS["temperature"], value=0.0, step=0.05, label="temperature (0 = greedy)")
    C["top_p"] = gr.Slider(*LIMITS["top_p"], value=1.0, step=0.05, label="top_p")
    C["max_new_tokens"] = gr.Slider(*LIMITS["max_new_tokens"], value=DEFAULT_NEW_TOKENS, step=1,
                                    label="max_new_tokens", elem_id="max-new-tokens",
                                    info=f"at most {LIMITS['max_new_tokens'][1]} in this app")
    C["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=LIMITS["seed"][1], label="seed (sampling only)")


def _view_widgets(C: dict) -> None:
    gr.Markdown("### Tree view")
    C["color_by"] = gr.Radio(texts.COLOR_CHOICES, value="value", label="Colour nodes by", elem_id="color-by")
    C["show_dropped"] = gr.Checkbox(value=True, label="Show candidates the rerank dropped (faded)",
                                    elem_id="show-dropped")


def _trace_widgets(C: dict, examples: list) -> None:
    gr.Markdown("### Traces: no model needed")
    C["example_trace"] = gr.Dropdown(examples, value=None, label="Example traces (open instantly)",
                                     elem_id="example-trace", interactive=True)
    C["upload"] = gr.UploadButton("⬆ Upload a trace (.json)", file_types=[".json"], elem_id="upload-trace", size="md")
    C["download"] = gr.DownloadButton("⬇ Download this run's trace", value=None, interactive=False,
                                      elem_id="download-trace", size="md")


def _prompt_and_answer(C: dict, prompts: list) -> None:
    C["prompt"] = gr.Textbox(label="Prompt (chat)", lines=2, max_lines=8, elem_id="prompt",
                             placeholder="Ask the model something…",
                             info=f"up to {MAX_PROMPT_CHARS} characters; Enter runs, Shift+Enter for a new line")
    with gr.Row(equal_height=True):
        C["run_btn"] = gr.Button("▶ Run", variant="primary", elem_id="run-btn", scale=1, min_width=100)
        C["example_prompt"] = gr.Dropdown([texts.EXAMPLE_PROMPT_HINT] + prompts, value=texts.EXAMPLE_PROMPT_HINT,
                                          label="Example prompts", show_label=False, container=False,
                                          elem_id="example-prompt", scale=3, min_width=160, interactive=True)
    C["status"] = gr.HTML(message("info", texts.FIRST_STATUS), elem_id="status")
    C["answer"] = gr.HTML(tokens_html(None), elem_id="answer", js_on_load=texts.TOKEN_CLICK_JS, max_height=300)
    gr.HTML(legend_html())
    C["summary"] = gr.HTML("", elem_id="summary")


def _cycle_selector(C: dict) -> None:
    C["cycle"] = gr.Slider(0, 1, value=0, step=1, label="Cycle", interactive=False, elem_id="cycle")
    C["cycle_info"] = gr.Markdown("", elem_id="cycle-info")


def _tree_and_steps_tabs(C: dict) -> None:
    with gr.Tab("Draft tree", id="tree"):
        gr.Markdown(texts.TREE_HOWTO, elem_id="tree-howto")
        C["tree"] = gr.Plot(show_label=False, elem_id="tree-plot")
    with gr.Tab("Step-through", id="steps"):
        with gr.Row(equal_height=True):
            C["stage"] = gr.Radio(["Verify"], value="Verify", label="Stage of the selected cycle", elem_id="stage",
                                  scale=6)
            C["prev_btn"] = gr.Button("◀ Prev", size="md", scale=0, min_width=80)
            C["next_btn"] = gr.Button("Next ▶", size="md", scale=0, min_width=80)
            C["play_btn"] = gr.Button("Play all", size="md", variant="primary", scale=0, min_width=80)
        C["stage_caption"] = gr.Markdown("", elem_id="stage-caption")
        C["stage_plot"] = gr.Plot(label="The selected cycle, step by step", elem_id="stage-plot")


def _insights_tab(C: dict) -> None:
    with gr.Tab("Insights", id="insights"):
        with gr.Row():
            C["chart_tokens_per_cycle"] = gr.Plot(show_label=False)
            C["chart_time_split"] = gr.Plot(show_label=False)
        with gr.Row():
            C["chart_accepted_histogram"] = gr.Plot(show_label=False)
            C["chart_acceptance_by_depth"] = gr.Plot(show_label=False)
        with gr.Row():
            C["chart_calibration"] = gr.Plot(show_label=False)
            with gr.Column():
                C["calib_by"] = gr.Radio([("draft value", "value"), ("confidence", "confidence")], value="value",
                                         label="Calibration x-axis")
                gr.Markdown(texts.CALIBRATION_NOTE)
        C["chart_context_dependence"] = gr.Plot(show_label=False)


def _compare_tab(C: dict) -> None:
    with gr.Tab("Compare", id="compare"):
        gr.Markdown(texts.COMPARE_INTRO)
        with gr.Row():
            for tag, (pol, k, d, t) in (("a", COMPARE_DEFAULT_A), ("b", COMPARE_DEFAULT_B)):
                with gr.Column(variant="panel"):
                    gr.Markdown(f"**{tag.upper()}**")
                    C[f"cmp_policy_{tag}"] = gr.Dropdown(policy_choices(), value=pol, label="policy")
                    _size_sliders(C, (f"cmp_top_k_{tag}", f"cmp_depth_{tag}", f"cmp_total_{tag}"), pol, (k, d, t))
        C["cmp_btn"] = gr.Button("▶ Run A and B", variant="primary", elem_id="cmp-btn")
        C["cmp_status"] = gr.HTML("")
        C["cmp_table"] = gr.HTML("")
        with gr.Row():
            C["cmp_answer_a"] = gr.HTML("", max_height=220)
            C["cmp_answer_b"] = gr.HTML("", max_height=220)
        C["cmp_cycle"] = gr.Slider(0, 1, value=0, step=1, label="Cycle (same index in both runs)", interactive=False)
        with gr.Row():
            C["cmp_tree_a"] = gr.Plot(show_label=False)
            C["cmp_tree_b"] = gr.Plot(show_label=False)


def _layout(C: dict, prompts: list, examples: list) -> None:
    """Settings in a collapsible sidebar; the run (prompt, status, summary, answer) beside the
    selected cycle's tree, so both are in the first screen at 1280x720."""
    missing = default_head_missing()
    gr.Markdown(texts.HEADER, elem_id="tl-header")
    if missing:
        gr.HTML(f'<div class="tl-banner">⚠ {html.escape(missing).replace("**", "")}</div>')
    C["trace"] = gr.State(None, time_to_live=3600)
    C["cmp_state"] = gr.State(None, time_to_live=3600)
    with gr.Sidebar(open=True, width=300, elem_id="settings", label="Settings"):
        _model_widgets(C)
        _sampling_widgets(C)
        _view_widgets(C)
        _trace_widgets(C, examples)
    with gr.Row(equal_height=False, elem_id="main-row"):
        with gr.Column(scale=2, min_width=340, elem_id="run-col"):
            _prompt_and_answer(C, prompts)
        with gr.Column(scale=3, min_width=460, elem_id="tree-col"):
            _cycle_selector(C)
            with gr.Tabs():
                _tree_and_steps_tabs(C)
                _insights_tab(C)
                _compare_tab(C)
    with gr.Accordion("How it works", open=False):
        gr.Markdown(texts.INTRO)


# ---- wiring ------------------------------------------------------------------------------------------------
def _wire_run_and_cycles(C: dict) -> None:
    views, cyc_out = [C[k] for k in VIEWS], [C[k] for k in CYCLE_VIEWS]
    run_inputs = [C[k] for k in H.RUN_INPUTS]
    C["run_btn"].click(_wrap(C, H.run_handler, gen=True), run_inputs, views, api_name="run", concurrency_limit=4)
    C["prompt"].submit(_wrap(C, H.run_handler, gen=True), run_inputs, views, api_name=False, concurrency_limit=4)
    C["cycle"].input(_wrap(C, H.on_cycle), [C[k] for k in ("trace", "cycle", "color_by", "show_dropped", "stage")],
                     cyc_out, trigger_mode="always_last", api_name=False)

    def token_click(trace, color_by, show_dropped, stage, evt: gr.EventData):  # Gradio fills evt by annotation
        return {C[k]: v for k, v in H.on_token_click(trace, color_by, show_dropped, stage, evt).items()} or gr.skip()

    C["answer"].click(token_click, [C[k] for k in ("trace", "color_by", "show_dropped", "stage")], cyc_out,
                      api_name=False)
    tree_out = [C["tree"]] + [C[k] for k in STAGE_VIEWS]
    for comp in (C["color_by"], C["show_dropped"]):
        comp.change(_wrap(C, H.on_tree_opts), [C[k] for k in ("trace", "cycle", "color_by", "show_dropped", "stage")],
                    tree_out, api_name=False)


def _wire_steps_and_insights(C: dict) -> None:
    st_in = [C[k] for k in ("trace", "cycle", "stage", "color_by")]
    st_out = [C[k] for k in STAGE_VIEWS]
    C["stage"].input(_wrap(C, H.on_stage), st_in, st_out, api_name=False, trigger_mode="always_last")
    C["prev_btn"].click(_wrap(C, H.step(-1)), st_in, st_out, api_name=False)
    C["next_btn"].click(_wrap(C, H.step(+1)), st_in, st_out, api_name=False)
    C["play_btn"].click(_wrap(C, H.play, gen=True), st_in, st_out, api_name=False)
    C["calib_by"].change(_wrap(C, H.on_calib), [C["trace"], C["calib_by"]], [C["chart_calibration"]], api_name=False)


def _wire_traces(C: dict) -> None:
    views = [C[k] for k in VIEWS + SETTINGS]
    opts = [C["color_by"], C["show_dropped"], C["calib_by"]]
    C["upload"].upload(_wrap(C, H.on_upload), [C["upload"]] + opts, views, api_name="open_trace")
    C["example_trace"].change(_wrap(C, H.on_example), [C["example_trace"]] + opts, views, api_name=False)
    C["example_prompt"].input(lambda p: gr.skip() if p in (None, texts.EXAMPLE_PROMPT_HINT) else p,
                              [C["example_prompt"]], [C["prompt"]], api_name=False)


def _wire_page_load(C: dict, demo: gr.Blocks, examples: list) -> None:
    """Open the first example trace on page load, so the whole UI shows something at once."""
    if examples:
        demo.load(_wrap(C, H.open_on_load(examples[0][1])), [C["color_by"], C["show_dropped"], C["calib_by"]],
                  [C[k] for k in VIEWS + SETTINGS] + [C["example_trace"]], api_name=False)


def _wire_policies_and_compare(C: dict) -> None:
    for pol, k, d, t in (("policy", "top_k", "depth", "total_tokens"),
                         ("cmp_policy_a", "cmp_top_k_a", "cmp_depth_a", "cmp_total_a"),
                         ("cmp_policy_b", "cmp_top_k_b", "cmp_depth_b", "cmp_total_b")):
        C[pol].input(H.on_policy, [C[pol]], [C[k], C[d], C[t]], api_name=False)
        for comp in (C[k], C[d]):
            comp.input(H.on_size, [C[k], C[d], C[t]], [C[t]], api_name=False)
    cmp_out = [C[k] for k in COMPARE_VIEWS]
    C["cmp_btn"].click(_wrap(C, H.compare_handler, gen=True), [C[k] for k in COMPARE_INPUTS], cmp_out,
                       api_name="compare", concurrency_limit=4)
    C["cmp_cycle"].input(_wrap(C, H.on_cmp_cycle), [C["cmp_state"], C["cmp_cycle"], C["color_by"]], cmp_out,
                         trigger_mode="always_last", api_name=False)


def _prompt_examples() -> list[str]:
    try:
        return [p["prompt"] for p in json.loads(PROMPTS_FILE.read_text())]
    except Exception as e:
        print(f"[tree-lab] no prompt examples: {e}")
        return []


def build_app() -> gr.Blocks:
    install_user_policies()  # EAGLE2_APP_POLICIES, into eagle2.registry
    C: dict[str, gr.components.Component] = {}
    examples = example_traces()
    with gr.Blocks(title="EAGLE-2 Tree Lab", analytics_enabled=False, delete_cache=(3600, 7200),
                   fill_width=True) as demo:
        _layout(C, _prompt_examples(), examples)
        _wire_run_and_cycles(C)
        _wire_steps_and_insights(C)
        _wire_traces(C)
        _wire_policies_and_compare(C)
        _wire_page_load(C, demo, examples)
    demo.tl_components = C  # for tests
    return demo


def main():
    limit_malloc_arenas()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    serving = threading.Event()
    if os.environ.get("EAGLE2_APP_PRELOAD", "1") != "0":
        threading.Thread(target=preload, args=(serving,), name="tree-lab-preload", daemon=True).start()
    demo = build_app()
    demo.queue(default_concurrency_limit=4, max_size=32)
    theme = gr.themes.Soft(primary_hue="blue", neutral_hue="slate",
                           font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"])
    demo.launch(css=texts.APP_CSS, js=texts.ON_LOAD_JS, theme=theme, max_file_size=MAX_UPLOAD_BYTES,
                ssr_mode=False, show_error=True, run_history=False, footer_links=["api", "settings"],
                prevent_thread_lock=True)
    serving.set()  # the page is up: the preload may now time the target's forwards
    demo.block_thread()


if __name__ == "__main__":
    main()
