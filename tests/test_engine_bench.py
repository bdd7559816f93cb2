"""The engine benchmark (eagle2/engine_bench.py): --quick end to end, and its forward clock."""

from __future__ import annotations

import json

import pytest
import torch

from eagle2 import engine_bench as eb


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine-bench")
    rc = eb.main(["--out", str(out), "--quick", "--device", "cpu", "--no-progress"])
    return rc, out, json.loads((out / "summary.json").read_text())


def test_quick_run_writes_a_consistent_summary(quick, capsys):
    rc, out, s = quick
    assert rc == 0
    assert s["schema"] == eb.SCHEMA
    assert {"headline", "policies", "config", "machine", "command", "created"} <= set(s)
    assert "--quick" in s["command"] and s["command"].startswith("python -m eagle2.engine_bench")
    assert {"cpu", "torch", "device", "device_name", "torch_threads"} <= set(s["machine"])
    assert s["config"]["device"] == "cpu" and s["config"]["dtype"] == "float32" and s["config"]["quick"]
    assert list(s["policies"]) == list(eb.POLICY_NAMES)
    for name, p in s["policies"].items():
        assert p["cycles"] > 0 and p["tokens"] >= p["cycles"], name
        assert p["tau"] == pytest.approx(p["tokens"] / p["cycles"], abs=1e-3), name
        assert p["ms_per_cycle"] > 0 and p["ms_per_cycle_unhooked"] > 0 and p["ms_target_forward"] > 0, name
        assert p["ms_non_forward"] >= 0, name
        # one repeat: the parts add up exactly (up to rounding)
        assert p["ms_forward"] == pytest.approx(p["ms_target_forward"] + p["ms_head_forward"], abs=2e-3), name
        assert p["ms_forward"] + p["ms_non_forward"] == pytest.approx(p["ms_per_cycle"], abs=2e-3), name
        split = p["non_forward_split_ms"]
        assert set(split) == set(eb.PHASES)
        assert sum(split.values()) == pytest.approx(p["ms_non_forward"], abs=5e-3), name
        assert all(v >= -5e-3 for v in split.values()), (name, split)  # every part is a time span
        d = p["decode_split_ms"]
        assert d["draft"] + d["verify"] + d["update"] <= p["ms_per_cycle"] + 2e-3, name
        assert d["verify"] >= p["ms_target_forward"] - 2e-3, name
        cpu = p["cpu_ms"]
        assert cpu["per_cycle"] > 0 and cpu["non_forward"] >= -0.05, name
        assert cpu["target_forward"] + cpu["head_forward"] + cpu["non_forward"] == pytest.approx(cpu["per_cycle"], abs=2e-3)
        assert p["identical_to_vanilla"] is True, name  # greedy speculative decoding is lossless
        assert len(p["repeats"]) == 1
    paper, van, chain = s["policies"]["eagle2-paper"], s["policies"]["vanilla"], s["policies"]["chain"]
    assert paper["policy"] == {"policy": "eagle2", **eb.PAPER_TREE}
    assert paper["mean_tree_size"] == 60  # the pool (10 + 5 * 100 candidates) always allows 60
    assert 1 <= paper["tau"] <= eb.PAPER_TREE["depth"] + 1
    assert paper["ms_head_forward"] > 0 and paper["ms_head_forward_commit"] > 0 and paper["ms_head_forward_step"] > 0
    assert van["tau"] == 1 and van["mean_tree_size"] == 0 and van["ms_head_forward"] == 0
    assert chain["mean_tree_size"] == chain["policy"]["depth"]
    auto = s["policies"]["eagle2-auto"]
    assert auto["policy"]["total_tokens"] == "auto" and "autotree" in auto
    assert s["config"]["latency"]["sizes"][0] == 1
    assert (out / "eagle2-cache" / "latency").is_dir()  # the calibration stays with the results
    h = s["headline"]
    assert h["non_forward_ms_per_cycle_paper_tree"] == paper["ms_non_forward"]
    assert h["non_forward_ms_per_cycle_auto"] == auto["ms_non_forward"]
    assert h["non_forward_cpu_ms_per_cycle_paper_tree"] == paper["cpu_ms"]["non_forward"]
    assert 0 < s["config"]["cpu_share_while_timing"] <= 1.05 * max(1, s["machine"]["torch_threads"])


def test_printed_table_names_every_policy(tmp_path, capsys):
    s = json.loads(json.dumps(_fake_summary()))
    text = eb.format_table(s)
    for name in eb.POLICY_NAMES:
        assert f"| {name} |" in text
    assert "non-forward ms per cycle at the paper's tree: 2.00" in text and "lossless" in text
    assert "in CPU time 1.50" in text and "got 50% of a core" in text
    s["policies"]["chain"]["identical_to_vanilla"] = False
    assert "NOT LOSSLESS: chain" in eb.format_table(s)


def _fake_summary() -> dict:
    row = {"cycles": 3, "tau": 2.0, "mean_tree_size": 5.0, "ms_per_cycle": 5.0, "ms_per_cycle_unhooked": 4.0,
           "ms_target_forward": 1.0, "ms_head_forward": 2.0, "ms_non_forward": 2.0, "identical_to_vanilla": True,
           "non_forward_split_ms": {k: 0.4 for k in eb.PHASES},
           "decode_split_ms": {"draft": 3.0, "verify": 1.2, "update": 0.4},
           "cpu_ms": {"per_cycle": 4.5, "target_forward": 1.0, "head_forward": 2.0, "non_forward": 1.5}}
    return {"policies": {n: dict(row) for n in eb.POLICY_NAMES},
            "headline": {"non_forward_ms_per_cycle_paper_tree": 2.0, "non_forward_ms_per_cycle_auto": 1.0,
                         "non_forward_cpu_ms_per_cycle_paper_tree": 1.5, "non_forward_cpu_ms_per_cycle_auto": 0.8},
            "machine": {"device_name": "cpu", "torch": "x", "torch_threads": 1},
            "config": {"repeats": 1, "device": "cpu", "cpu_share_while_timing": 0.5}}


def test_forward_clock_times_the_outermost_forward_and_follows_shared_modules():
    class Inner(torch.nn.Module):
        def forward(self, x):
            return x + 1

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x) * 2

    target, head, shared = Outer(), Outer(), torch.nn.Identity()
    clock = eb.ForwardClock(sync=False)
    clock.watch(target, "target")
    clock.watch(target.inner, "head")  # nested inside the target: not counted on its own
    clock.watch(head, "head")
    clock.watch(shared, None)
    x = torch.zeros(3)
    target(x)  # not enabled yet: nothing counted
    assert not clock.calls
    clock.enabled = True
    target(x)
    shared(x)  # follows the target
    clock.phase = "commit"
    head(x)
    shared(x)  # follows the head
    clock.phase = "step"
    head(x)
    target.inner(x)  # called on its own, it counts as the head's
    assert dict(clock.calls) == {"target": 2, "head_commit": 2, "head_step": 2}
    assert all(v > 0 for v in clock.seconds.values())
    clock.remove()
    target(x)
    assert clock.calls["target"] == 2


def test_hooked_run_attributes_forwards_and_restores_the_drafter():
    from eagle2.draft import EagleDrafter

    model, head = eb.build_tiny()
    drafter = EagleDrafter(head, model)
    ids = eb.random_prompts(eb.TINY["vocab"], (40,))[0]
    policy = eb.make_policies(model, ["eagle2-paper"])["eagle2-paper"]
    r = eb.run_prompt(model, policy, drafter, ids, 20, hooked=True, sync=False)
    plain = eb.run_prompt(model, policy, drafter, ids, 20, hooked=False, sync=False)
    assert r["tokens"] == plain["tokens"]
    calls = r["forward_calls"]
    assert calls["target"] >= r["cycles"]  # one tree forward (+ its lm_head) per cycle; the prefill is left out
    assert calls["head_commit"] >= r["cycles"] and calls["head_step"] > calls["head_commit"]
    assert 0 < r["target_s"] < r["verify_s"] + 1e-9 and r["head_step_s"] < r["draft_s"]
    assert 0 < r["commit_s"] < r["draft_s"]
    assert "commit" not in drafter.__dict__  # the timing wrapper is gone
    assert not model.model._forward_hooks and not model.model._forward_pre_hooks and not head._forward_hooks


def test_tiny_target_is_seeded_and_predictable():
    a, ha = eb.build_tiny()
    b, hb = eb.build_tiny()
    state = torch.random.get_rng_state()
    eb.build_tiny({"seed": 5})
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    for p, q in zip(list(a.parameters()) + list(ha.parameters()), list(b.parameters()) + list(hb.parameters())):
        assert torch.equal(p, q)
    from eagle2.decode import generate
    from eagle2.policies import Vanilla

    prompt = eb.random_prompts(eb.TINY["vocab"], (64,))[0]
    answer = generate(a, prompt, Vanilla(), max_new_tokens=48).tokens
    seq = torch.tensor(prompt + answer)
    with torch.no_grad():
        logits = a(seq[None]).logits[0, len(prompt):]
        bigram = a.lm_head(a.model.embed_tokens(seq[len(prompt):]))
    agree = (logits.argmax(-1) == bigram.argmax(-1)).float().mean()
    # on its own text, the target mostly picks what the token alone suggests (the head's proposal)
    assert agree > 0.6


def test_save_tiny_gives_a_loadable_target_and_head(tmp_path):
    import eagle2
    from eagle2.policies import Eagle2, Vanilla

    paths = eb.save_tiny(tmp_path)
    target = eagle2.load_target(paths["target"], dtype="float32", device="cpu")
    assert len(target.tokenizer) == eb.TINY["vocab"] and target.tokenizer.chat_template
    drafter = eagle2.load_drafter(target, head=paths["head"])
    a = eagle2.generate_text(target, "write a poem about the sea", drafter=drafter, policy=Eagle2(4, 3, 8),
                             max_new_tokens=12)
    b = eagle2.generate_text(target, "write a poem about the sea", policy=Vanilla(), max_new_tokens=12)
    assert a.tokens == b.tokens and a.text


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert eb.main(["--out", str(tmp_path), "--cycles", "0"]) == 2
    assert "--cycles" in capsys.readouterr().err
