"""The Tree Lab's server side: parameter checks, trace upload errors, run/compare handlers.

Runs use the tiny random Llama from conftest (fast); one `slow` test uses the embedded model.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import app
import eagle2
from eagle2 import registry
from eagle2.trace import Trace
from viz.lab import config, handlers, run, traces, views
from viz.lab.state import validate
from viz.sample import tiny_trace

GOOD = dict(prompt="hello world", target="default", head="self", policy="eagle2", top_k=3, depth=3, total_tokens=8,
            temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)


def run_args(**over):
    p = {**GOOD, **over}
    return [p[k] for k in handlers.RUN_INPUTS[:11]]


def consume(gen) -> list[dict]:
    return list(gen)


@pytest.fixture
def tiny_models(monkeypatch, tiny_target):
    """Make every run use the tiny target (whatever name the UI sends)."""
    monkeypatch.setattr(run.MODELS, "target", lambda name="default": tiny_target)
    return tiny_target


# ---- parameters ---------------------------------------------------------------------------------------
def test_validate_accepts_good_parameters():
    p = validate(*run_args())
    assert p.policy_obj.describe() == {"policy": "eagle2", "top_k": 3, "depth": 3, "total_tokens": 8}
    assert validate(*run_args(top_k=3.0)).top_k == 3  # sliders send floats


@pytest.mark.parametrize("over, match", [
    ({"prompt": "   "}, "type a prompt"),
    ({"prompt": None}, "type a prompt"),
    ({"prompt": "x" * (config.MAX_PROMPT_CHARS + 1)}, "too long"),
    ({"policy": "medusa"}, "Unknown policy"),
    ({"top_k": 0}, "top_k must be between"),
    ({"top_k": 2.5}, "whole number"),
    ({"depth": True}, "whole number"),
    ({"depth": "deep"}, "whole number"),
    ({"total_tokens": 500}, "total_tokens must be between"),
    ({"top_k": 2, "depth": 2, "total_tokens": 7}, "Bad tree size"),  # check_size: a 2x2 tree holds 6
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_new_tokens": config.MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"seed": -3}, "seed"),
])
def test_validate_rejects_bad_parameters(over, match):
    with pytest.raises(ValueError, match=match):
        validate(*run_args(**over))


def test_run_handler_empty_prompt_is_a_friendly_warning():
    out = consume(handlers.run_handler(*run_args(prompt="")))
    assert len(out) == 1 and set(out[0]) == {"status"}
    assert "Please type a prompt" in out[0]["status"]


def test_policy_sizes_and_tree_defaults():
    assert config.policy_sizes("eagle2") == ("top_k", "depth", "total_tokens")
    assert config.policy_sizes("chain") == ("depth",)
    assert config.policy_sizes("vanilla") == ()
    assert config.policy_sizes("eagle2-auto") == ("top_k", "depth")  # total_tokens is chosen per cycle
    assert set(config.policy_choices()) >= {"eagle2-auto", "eagle2", "eagle1", "chain", "vanilla"}
    assert config.DEFAULT_POLICY == "eagle2-auto"  # like the CLI and the bench
    import inspect

    from eagle2.policies import Eagle2
    sig = inspect.signature(Eagle2.__init__).parameters
    assert config.TREE_DEFAULTS == {k: sig[k].default for k in ("top_k", "depth", "total_tokens")}


# ---- runs ------------------------------------------------------------------------------------------------
def test_run_streams_then_fills_every_view(tiny_models):
    out = consume(handlers.run_handler(*run_args(), "value", True, "value"))
    first = out[0]  # one run = one state: every view drops the previous trace at once
    assert first["trace"] is None and first["tree"] is None and "Running" in first["summary"]
    assert first["download"]["interactive"] is False and first["chart_calibration"] is None
    assert any("answer" in d and "tl-live" in d["answer"] for d in out[1:-1]), "no streamed update"
    final = out[-1]
    assert "Done" in final["status"], final["status"]
    trace = final["trace"]
    assert isinstance(trace, Trace) and trace.cycles
    assert len(trace.output_tokens) == 12
    best = traces.best_cycle(trace)  # a run opens on its most telling cycle, like the examples
    assert final["cycle"]["value"] == best and f"cycle {best}" in final["status"]
    assert final["tree"] is not None and final["tree"].layout.title.text.startswith(f"Cycle {best} ")
    for k in ("chart_tokens_per_cycle", "chart_time_split", "chart_accepted_histogram",
              "chart_acceptance_by_depth", "chart_calibration", "chart_context_dependence", "stage_plot"):
        assert final[k] is not None, k
    assert trace.meta["head"] == "self" and trace.meta["policy"] == "eagle2"
    # the downloadable trace loads back
    path = final["download"]["value"]
    assert Trace.load(path).output_tokens == trace.output_tokens


def test_run_auto_tree_size(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))  # the latency calibration of the tiny model goes here
    p = validate(*run_args(policy="eagle2-auto", top_k=3, depth=4))
    assert p.policy_obj is None and p.choice.auto  # built once the target is loaded
    out = consume(handlers.run_handler(*run_args(policy="eagle2-auto", top_k=3, depth=4, max_new_tokens=10)))
    final = out[-1]
    assert "Done" in final["status"], final["status"]
    trace = final["trace"]
    assert trace.meta["policy"] == "eagle2-auto" and trace.meta["total_tokens"] == "auto"
    assert list((tmp_path / "latency").glob("*.json")), "no calibration cached"
    for i in range(len(trace.cycles)):  # any tree size, even a root alone, draws
        assert views.cycle_outputs(trace, i)["tree"] is not None
    again = consume(handlers.run_handler(*run_args(policy="eagle2-auto", top_k=3, depth=4, max_new_tokens=4)))[-1]
    assert "Done" in again["status"]
    assert len(run.MODELS._policies) >= 1  # kept (it learns online)
    with pytest.raises(ValueError, match="top_k must be between"):
        validate(*run_args(policy="eagle2-auto", top_k=0))


def test_preload_gets_the_first_run_ready(tiny_models, monkeypatch, tmp_path):
    """At start-up the preload also sizes the default policy's tree (the latency calibration), so a
    first run at the page's starting settings reuses it and never shows the sizing phase; a run that
    comes while the preload times forwards says so."""
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    monkeypatch.setenv("EAGLE2_APP_HEAD", "self")  # the tiny target has no trained head
    monkeypatch.setattr(run.MODELS, "_policies", {})
    run.preload()
    assert run.WARMUP["v"] is None
    assert list((tmp_path / "latency").glob("*.json")), "nothing was calibrated at start-up"
    d = config.policy_defaults(config.DEFAULT_POLICY)
    start = dict(head=config.default_head(), policy=config.DEFAULT_POLICY, top_k=d["top_k"], depth=d["depth"],
                 total_tokens=d["total_tokens"], max_new_tokens=6)
    assert run.MODELS.has_policy(tiny_models, validate(*run_args(**start)))
    statuses = [out["status"] for out in consume(handlers.run_handler(*run_args(**start))) if "status" in out]
    assert "Done" in statuses[-1], statuses[-1]
    assert not any("Sizing the tree" in s for s in statuses)
    monkeypatch.setitem(run.WARMUP, "v", "calibrate")
    assert "sizing the tree for this machine (once, at start-up" in handlers._phase_status("wait", "default", "x")


def test_run_auto_tree_size_with_lookup(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    assert config.AUTO_LOOKUP in config.policy_choices() and config.policy_sizes(config.AUTO_LOOKUP) == ("top_k", "depth")
    out = consume(handlers.run_handler(*run_args(policy=config.AUTO_LOOKUP, top_k=2, depth=3, max_new_tokens=12)))
    final = out[-1]
    assert "Done" in final["status"], final["status"]
    trace = final["trace"]
    assert trace.meta["policy"] == "eagle2-auto" and trace.meta["lookup"] == config.LOOKUP_TOKENS
    assert "lookup=10" in final["summary"]  # the summary card says which policy ran


@pytest.mark.parametrize("policy", ["eagle1", "chain", "vanilla"])
def test_run_other_policies(tiny_models, policy):
    final = consume(handlers.run_handler(*run_args(policy=policy, max_new_tokens=6)))[-1]
    assert "Done" in final["status"], final["status"]
    assert final["trace"].meta["policy"] == policy


def test_model_load_failure_is_a_message(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = consume(handlers.run_handler(*run_args(target=str(empty))))
    assert "no config.json" in out[-1]["status"] and "tl-error" in out[-1]["status"]


def test_head_load_failure_is_a_message(tiny_models, tmp_path):
    bad = tmp_path / "bad-head"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    out = consume(handlers.run_handler(*run_args(head=str(bad))))
    assert "tl-error" in out[-1]["status"]


def test_missing_default_head_says_what_to_do(tiny_target, monkeypatch):
    if run.default_head_missing() is None:
        pytest.skip("the default head is shipped")
    # a tiny target wearing the default's name: the head lookup fails before any drafting
    monkeypatch.setattr(run.MODELS, "target", lambda name="default": type(tiny_target)(
        tiny_target.model, tiny_target.tokenizer, name=eagle2.models.DEFAULT_NAME))
    out = consume(handlers.run_handler(*run_args(head="default")))
    assert "not shipped yet" in out[-1]["status"] and "self" in out[-1]["status"]


def test_runs_are_serialised_and_safe_in_threads(tiny_models):
    results, errors = [], []

    def user(i):
        try:
            final = consume(handlers.run_handler(*run_args(prompt=f"hello {i}", max_new_tokens=8)))[-1]
            results.append(final["trace"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 4
    assert all(len(t.output_tokens) == 8 for t in results)
    assert not run.GEN_LOCK.locked()


def test_a_closed_stream_stops_the_worker(tiny_models):
    gen = handlers.run_handler(*run_args(max_new_tokens=200))
    for d in gen:
        if "answer" in d:
            break
    gen.close()  # the browser went away
    with run.GEN_LOCK:  # the worker gives the lock back at its next cycle
        pass


def test_compare_two_policies(tiny_models):
    out = consume(handlers.compare_handler("hello world", "default", "self", 0.0, 1.0, 10, 0,
                                      "eagle1", 4, 5, 12, "eagle2", 3, 3, 8))
    final = out[-1]
    assert "Both runs done" in final["cmp_status"]
    ta, tb = final["cmp_state"]
    assert ta.meta["policy"] == "eagle1" and tb.meta["policy"] == "eagle2"
    assert "Same answer" in final["cmp_table"]  # greedy speculative decoding is lossless
    assert final["cmp_tree_a"] is not None and final["cmp_tree_b"] is not None
    again = views.compare_outputs(ta, tb, 99)
    assert again["cmp_cycle"]["value"] == max(len(ta.cycles), len(tb.cycles)) - 1


def test_answers_note():
    a, b = tiny_trace(), tiny_trace()
    assert "Same answer" in views.answers_note(a, b)
    b.output_tokens = a.output_tokens[:3] + [99, 98]
    assert "agree on the first 3 tokens" in views.answers_note(a, b)
    b.output_tokens = a.output_tokens[:3]
    assert "prefix" in views.answers_note(a, b)
    b.meta["temperature"] = 0.7
    assert "sampling" in views.answers_note(a, b)


def test_compare_rejects_bad_sizes():
    out = consume(handlers.compare_handler("hi", "default", "self", 0.0, 1.0, 10, 0, "eagle2", 2, 2, 50, "eagle2", 3, 3, 8))
    assert "Bad tree size" in out[-1]["cmp_status"]


# ---- traces ------------------------------------------------------------------------------------------------
def test_open_trace_fills_the_ui(tmp_path):
    path = tmp_path / "t.json"
    tiny_trace().save(path)
    out = handlers.open_trace_handler(str(path))
    assert "Uploaded trace" in out["status"]
    assert isinstance(out["trace"], Trace) and out["tree"] is not None
    assert out["cycle"]["maximum"] == 1 and out["cycle"]["interactive"] is True
    c1 = views.cycle_outputs(out["trace"], 1)
    assert "Cycle 1" in c1["tree"].layout.title.text and 'tl-sel" data-cycle="1"' in c1["answer"]
    assert views.cycle_outputs(out["trace"], 42)["cycle"]["value"] == 1  # clamped


@pytest.mark.parametrize("content, match", [
    (b"this is not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"", "empty"),
    (json.dumps({"schema": "something-else/9"}).encode(), "not an eagle2 trace"),
    (json.dumps([1, 2, 3]).encode(), "not an eagle2 trace"),
    (json.dumps({"schema": "eagle2-trace/1", "cycles": [{"index": 0}]}).encode(), "malformed"),
    (json.dumps({"schema": "eagle2-trace/1", "cycles": "nope"}).encode(), "malformed"),
])
def test_bad_uploads_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "upload.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        traces.load_trace_path(str(path))
    out = handlers.open_trace_handler(str(path))
    assert set(out) == {"status"} and "Could not open" in out["status"] and "tl-error" in out["status"]


def test_oversized_upload_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(traces, "MAX_UPLOAD_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2000)
    with pytest.raises(ValueError, match="too large"):
        traces.load_trace_path(str(path))
    assert "too large" in handlers.open_trace_handler(str(path))["status"]


def test_missing_upload():
    assert "No file" in handlers.open_trace_handler(None)["status"]


def test_example_traces_are_listed():
    ex = traces.example_traces()
    assert ex and all(Path(p).exists() for _, p in ex)
    out = handlers.open_trace_handler(ex[0][1], source="example")
    assert "Example trace" in out["status"]
    assert out["cycle"]["value"] == traces.best_cycle(out["trace"])  # examples open on a telling cycle


def test_an_opened_trace_sets_the_settings_and_the_download(tmp_path):
    """The settings say what is on screen, and Download serves that very trace (examples too)."""
    by_name = {Path(p).stem: p for _, p in traces.example_traces()}
    out = handlers.open_trace_handler(by_name["03-cpu-eagle1-static"], source="example")
    assert out["policy"]["value"] == "eagle1" and out["total_tokens"]["value"] == 25
    assert out["total_tokens"]["interactive"] is False  # eagle1 fixes its own tree
    got = Trace.load(out["download"]["value"])
    assert got.meta == out["trace"].meta and got.output_tokens == out["trace"].output_tokens
    assert out["prompt"] == out["trace"].meta["prompt"]
    lookup = handlers.open_trace_handler(by_name["04-cpu-eagle2-auto-lookup"], source="example")
    assert lookup["policy"]["value"] == config.AUTO_LOOKUP and "total_tokens" in lookup
    assert "value" not in lookup["total_tokens"]  # "auto" is not a slider value: left alone
    assert "tl-copy" in lookup["answer"]  # tokens copied by prompt lookup are marked in the answer
    assert "prompt" not in handlers.open_on_load(by_name["03-cpu-eagle1-static"])("value", True, "value")


def test_cycle_views_wait_while_a_run_streams():
    """With no trace (a run is streaming) the slider, token clicks and stage buttons change nothing."""
    class Click:
        _data = {"cycle": 3}

    assert handlers.on_cycle(None, 2, "value", True, "Verify") == {}
    assert handlers.on_token_click(None, "value", True, "Verify", Click()) == {}
    assert handlers.on_tree_opts(None, 0, "value", True, "Verify") == {}
    assert handlers.on_stage(None, 0, "Verify", "value") == {}
    assert handlers.step(+1)(None, 0, "Verify", "value") == {}
    assert list(handlers.play(None, 0, "Verify", "value")) == []


def test_compare_and_policy_menus_show_real_sizes():
    assert config.COMPARE_DEFAULT_A == ("eagle1", 4, 5, 25)  # the static tree eagle1 really runs
    k, d, t = handlers.on_policy("eagle1")
    assert t["value"] == 25 and t["interactive"] is False and k["interactive"] is False


def test_best_cycle():
    assert traces.best_cycle(tiny_trace()) == 0  # cycle 0 accepted two drafts, cycle 1 none


def test_user_policy_plugin(tmp_path, monkeypatch, tiny_models):
    plugin = tmp_path / "my_policy.py"
    plugin.write_text(
        "from eagle2.policies import Chain\n"
        "class Twig(Chain):\n"
        "    name = 'twig'\n")
    monkeypatch.setenv("EAGLE2_APP_POLICIES", f"{plugin}:Twig, no.such.module:Nope")
    found = config.load_user_policies()  # the bad entry is skipped, not fatal
    assert list(found) == ["twig"]
    monkeypatch.setitem(registry.REGISTRY, "twig", found["twig"])  # what build_app's install_user_policies does
    assert "twig" in config.policy_choices() and config.policy_sizes("twig") == ("depth",)
    final = consume(handlers.run_handler(*run_args(policy="twig", depth=3, max_new_tokens=6)))[-1]
    assert "Done" in final["status"] and final["trace"].meta["policy"] == "twig"


# ---- the Blocks ----------------------------------------------------------------------------------------------
def test_build_app_wires_the_api():
    demo = app.build_app()
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"run", "compare", "open_trace"} <= names
    C = demo.tl_components
    assert C["max_new_tokens"].maximum == config.MAX_NEW_TOKENS
    assert C["top_k"].minimum >= 1 and C["total_tokens"].minimum >= 1


# ---- the embedded model -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_on_the_embedded_model():
    head = "default" if run.default_head_missing() is None else "self"
    final = consume(handlers.run_handler(*run_args(prompt="Why is the sky blue?", head=head, max_new_tokens=10)))[-1]
    assert "Done" in final["status"], final["status"]
    assert final["trace"].meta["model"] == "SmolLM2-135M-Instruct"
