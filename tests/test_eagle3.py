"""EAGLE-3 heads: the official checkpoint layout loads, the layer is wired as EAGLE-3's, and
decoding with one stays exact (greedy identical, sampling distributed as the target)."""

import json

import pytest
import torch
from transformers import DynamicCache

import eagle2
from eagle2.decode import generate, target_forward
from eagle2.draft import EagleDrafter, load_head
from eagle2.head import Eagle3Head, EagleHead, eagle3_feature_layers, head_kind
from eagle2.policies import Chain, Eagle1, Eagle2, Vanilla

from conftest import make_tiny_llama
from test_verify import _exact_first_tokens, chi2_critical, g_stat

HID, VOCAB, LAYERS, DRAFT = 64, 96, 6, 40


def official_eagle3_config(**extra):
    """config.json as released EAGLE-3 heads carry it (LlamaConfig keys + draft vocabulary)."""
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"], "bos_token_id": 1, "eos_token_id": 3, "hidden_act": "silu",
        "hidden_size": HID, "intermediate_size": 2 * HID, "max_position_embeddings": 512,
        "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 1, "num_key_value_heads": 2,
        "pad_token_id": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "torch_dtype": "float16", "vocab_size": VOCAB, "draft_vocab_size": DRAFT, "target_hidden_size": HID,
    }
    cfg.update(extra)
    return cfg


def official_eagle3_state(seed=0, scale=0.05):
    """Exactly the key layout of released EAGLE-3 checkpoints (no embedding: the target's is used)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    kvd = HID // 4 * 2
    draft_ids = torch.sort(torch.randperm(VOCAB, generator=g)[:DRAFT]).values
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[draft_ids] = True
    return {
        "fc.weight": r(HID, 3 * HID),
        "midlayer.hidden_norm.weight": 1 + r(HID), "midlayer.input_layernorm.weight": 1 + r(HID),
        "midlayer.self_attn.q_proj.weight": r(HID, 2 * HID), "midlayer.self_attn.k_proj.weight": r(kvd, 2 * HID),
        "midlayer.self_attn.v_proj.weight": r(kvd, 2 * HID), "midlayer.self_attn.o_proj.weight": r(HID, HID),
        "midlayer.post_attention_layernorm.weight": 1 + r(HID),
        "midlayer.mlp.gate_proj.weight": r(2 * HID, HID), "midlayer.mlp.up_proj.weight": r(2 * HID, HID),
        "midlayer.mlp.down_proj.weight": r(HID, 2 * HID),
        "norm.weight": 1 + r(HID), "lm_head.weight": r(DRAFT, HID) * 20,
        "d2t": draft_ids - torch.arange(DRAFT), "t2d": t2d,
    }


def write_head(folder, state=None, fmt="bin", **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    state = official_eagle3_state() if state is None else state
    (folder / "config.json").write_text(json.dumps(official_eagle3_config(**cfg)))
    if fmt == "bin":  # hub heads are fp16 pytorch_model.bin
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def target():
    return make_tiny_llama(VOCAB, seed=0, layers=LAYERS)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_loads_the_official_layout(tmp_path, fmt, target):
    folder = write_head(tmp_path / "h", fmt=fmt)
    assert head_kind(folder) == "eagle3"
    head = load_head(folder, target=None)
    assert isinstance(head, Eagle3Head) and head.kind == "eagle3"
    state = official_eagle3_state()
    assert torch.equal(head.draft_ids, state["d2t"] + torch.arange(DRAFT))
    assert torch.equal(head.t2d, state["t2d"])
    ref = state["midlayer.self_attn.q_proj.weight"].half().float() if fmt == "bin" else state["midlayer.self_attn.q_proj.weight"]
    assert torch.equal(head.midlayer.self_attn.q_proj.weight, ref)
    # saving writes the same layout back (and an architecture name engines recognise)
    head.save_pretrained(tmp_path / "again")
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "again" / "model.safetensors"))) == set(state)
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["draft_vocab_size"] == DRAFT
    assert isinstance(load_head(tmp_path / "again", target=None), Eagle3Head)


def test_eagle1_heads_are_still_told_apart(tmp_path, target):
    EagleHead.for_target(target.config).save_pretrained(tmp_path / "e1")
    assert head_kind(tmp_path / "e1") == "eagle1"
    assert isinstance(load_head(tmp_path / "e1", target=None), EagleHead)


def test_t2d_is_derived_when_missing(tmp_path):
    state = official_eagle3_state()
    del state["t2d"]
    head = load_head(write_head(tmp_path / "h", state=state, fmt="safetensors"), target=None)
    assert torch.equal(head.t2d, official_eagle3_state()["t2d"])


def test_layer_wiring_on_one_token():
    """With one position, attention is the value path: h1 = h0 + o(v(cat(n_in(e), n_h(h0)))),
    then + mlp(n_post(h1)); fc maps the 3 fused layers to h0."""
    torch.manual_seed(0)
    cfg = official_eagle3_config()
    from transformers import LlamaConfig

    head = Eagle3Head(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("draft_vocab_size", "target_hidden_size")}),
                      DRAFT, HID).eval()
    head.load_state_dict({**official_eagle3_state(), }, strict=True)
    e, fused = torch.randn(1, 1, HID), torch.randn(1, 1, 3 * HID)
    m = head.midlayer

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    h0 = fused @ head.fc.weight.T
    x = torch.cat([rms(e, m.input_layernorm.weight), rms(h0, m.hidden_norm.weight)], -1)
    v = x @ m.self_attn.v_proj.weight.T  # 2 kv heads of 16, each shared by 2 query heads
    v = v.view(1, 1, 2, 16).repeat_interleave(2, dim=2).reshape(1, 1, HID)
    h1 = h0 + v @ m.self_attn.o_proj.weight.T
    post = rms(h1, m.post_attention_layernorm.weight)
    mlp = (torch.nn.functional.silu(post @ m.mlp.gate_proj.weight.T) * (post @ m.mlp.up_proj.weight.T)) @ m.mlp.down_proj.weight.T
    expected = h1 + mlp
    with torch.no_grad():
        got = head(e, fused, torch.zeros(1, 1, dtype=torch.long))
        assert torch.allclose(got, expected, atol=1e-5)
        # its own output (width H) is fed back without fc
        again = head(e, got, torch.zeros(1, 1, dtype=torch.long))
        assert again.shape == got.shape
        logits = head.draft_logits(got)
        assert torch.allclose(logits, rms(got, head.norm.weight) @ head.lm_head.weight.T, atol=1e-5)


def test_features_are_the_inputs_of_layers_2_mid_and_n_minus_3(target):
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, kw, i=i: seen.__setitem__(i, (args[0] if args else kw["hidden_states"]).clone()),
                                             with_kwargs=True)
             for i, layer in enumerate(target.model.layers)]
    try:
        ids = torch.tensor([5, 9, 14, 20])
        feats, logits = target_forward(target, ids, DynamicCache(), feature_layers=(2, LAYERS // 2, LAYERS - 3))
    finally:
        for h in hooks:
            h.remove()
    want = torch.cat([seen[2][0], seen[LAYERS // 2][0], seen[LAYERS - 3][0]], dim=-1)
    assert feats.shape == (4, 3 * HID)
    assert torch.allclose(feats, want)
    assert eagle3_feature_layers(LAYERS) == (2, 3, 3) and eagle3_feature_layers(30) == (2, 15, 27)


def drafter_for(target, seed=0):
    head = Eagle3Head.for_target(target.config, torch.arange(4, 4 + DRAFT))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else p.fill_(1.0)
        head.lm_head.weight.mul_(20)
    return EagleDrafter(head, target)


@pytest.mark.parametrize("policy", [lambda: Eagle2(top_k=3, depth=4, total_tokens=10), lambda: Eagle1(),
                                    lambda: Chain(depth=4)])
def test_greedy_is_identical_to_vanilla(target, policy):
    drafter = drafter_for(target)
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        ids = torch.randint(4, VOCAB, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g)
        ref = generate(target, ids, Vanilla(), max_new_tokens=24)
        out = generate(target, ids, policy(), drafter, max_new_tokens=24)
        assert out.tokens == ref.tokens
        drafted = [t for t, o in zip(out.tokens, out.origins) if o == "draft"]
        assert all(4 <= t < 4 + DRAFT for t in drafted)  # only draft-vocabulary tokens are proposed


def test_auto_tree_and_lookup_with_an_eagle3_head(tiny_dir):
    """The auto policy and prompt lookup take an EAGLE-3 head (here on a 6-layer tiny target)."""
    from eagle2.models import load_target

    t = load_target(tiny_dir, dtype="float32", device="cpu")
    big = make_tiny_llama(t.model.config.vocab_size, seed=2, layers=LAYERS)
    t.model = big
    head = Eagle3Head.for_target(big.config, range(big.config.vocab_size // 2), target_model=big)
    drafter = EagleDrafter(head, big)
    policy = eagle2.make_policy("eagle2", total_tokens="auto", target=t, lookup=10)
    ids = torch.tensor([5, 9, 14, 20, 5, 9, 14])
    out = generate(big, ids, policy, drafter, max_new_tokens=20)
    assert out.tokens == generate(big, ids, Vanilla(), max_new_tokens=20).tokens


def test_sampling_matches_the_target_distribution():
    """First 3 sampled tokens with an EAGLE-3 drafter that cannot propose one of the 5 tokens."""
    vocab, k = 5, 3
    target = make_tiny_llama(vocab, seed=3, hidden=32, eos=None, init=0.1, layers=LAYERS)
    head = Eagle3Head.for_target(target.config, [0, 1, 2, 4], target_model=target)
    drafter = EagleDrafter(head, target)
    prompt = torch.tensor([1, 2, 0, 4])
    exact = _exact_first_tokens(target, prompt, k, 1.0, 1.0)
    n, counts, accepted = 2000, {}, 0
    for i in range(n):
        r = generate(target, prompt, Eagle2(top_k=2, depth=2, total_tokens=4), drafter, max_new_tokens=k,
                     temperature=1.0, seed=i)
        counts[tuple(r.tokens)] = counts.get(tuple(r.tokens), 0) + 1
        accepted += r.origins.count("draft")
    assert accepted > n * 0.3
    g, df = g_stat(counts, exact, n)
    assert g < chi2_critical(df), (g, chi2_critical(df))


@pytest.mark.parametrize("change, msg", [
    ({"target_hidden_size": 32}, "hidden size"),
    ({"vocab_size": 80}, "vocab"),
])
def test_heads_that_do_not_fit(tmp_path, target, change, msg):
    state = official_eagle3_state()
    if "target_hidden_size" in change:
        state["fc.weight"] = state["fc.weight"][:, : 3 * 32]
    if "vocab_size" in change:
        state["t2d"] = state["t2d"][:80]
        state["d2t"] = torch.zeros(DRAFT, dtype=torch.long)
    head = load_head(write_head(tmp_path / "h", state=state, **change), target=None)
    with pytest.raises(ValueError, match=msg):
        EagleDrafter(head, target)


def test_broken_eagle3_checkpoints(tmp_path):
    state = official_eagle3_state()
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head"):
        load_head(write_head(tmp_path / "a", state=state), target=None)
    state = official_eagle3_state()
    state["midlayer.self_attn.q_proj.weight"] = state["midlayer.self_attn.q_proj.weight"][:, :HID]
    with pytest.raises(ValueError, match="do not fit"):
        load_head(write_head(tmp_path / "b", state=state), target=None)
    few_layers = make_tiny_llama(VOCAB, seed=0, layers=2)
    head = load_head(write_head(tmp_path / "c"), target=None)
    with pytest.raises(ValueError, match="layers"):
        EagleDrafter(head, few_layers)


@pytest.fixture(scope="module")
def tiny6(tmp_path_factory):
    """A saved six-layer tiny Llama + tokenizer, and an official-layout EAGLE-3 head for it."""
    from conftest import make_tokenizer

    folder = tmp_path_factory.mktemp("tiny6-cli")
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok), seed=5, layers=LAYERS)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    state = official_eagle3_state()
    vocab = len(tok)
    ids = torch.arange(4, 4 + DRAFT)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[ids] = True
    state.update(d2t=ids - torch.arange(DRAFT), t2d=t2d)
    head = write_head(tmp_path_factory.mktemp("tiny6-eagle3"), state=state, vocab_size=vocab)
    return str(folder), str(head)


def test_cli_generate_and_bench_take_an_eagle3_head_folder(tiny6, capsys, tmp_path):
    """`python -m eagle2 generate --head FOLDER` and the bench load an official-layout EAGLE-3 head;
    the trace and the bench say which kind drafted."""
    from eagle2.cli import main

    model, head = tiny6
    trace_file = tmp_path / "t.json"
    code = main(["generate", "--prompt", "hello world how are you ?", "--model", model, "--head", head,
                 "--max-new-tokens", "10", "--dtype", "float32", "--json", "--trace", str(trace_file)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["new_tokens"] >= 1
    assert eagle2.Trace.load(trace_file).meta["head_kind"] == "eagle3"
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["hello world"]}) + "\n")
    code = main(["bench", "--questions", str(q), "--model", model, "--head", head, "--dtype", "float32",
                 "--methods", "vanilla,eagle2@total=6", "--max-new-tokens", "8", "--out", str(tmp_path / "b"),
                 "--no-warmup", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    method = summary["methods"]["eagle2@total=6"]
    assert method["identical_to_vanilla"] == 1.0
    assert "eagle3" in json.dumps(summary)
    code = main(["bench", "--questions", str(q), "--model", model, "--head", head, "--dtype", "float32",
                 "--methods", "eagle2@vocab=8", "--max-new-tokens", "4", "--no-warmup", "--no-progress"])
    assert code == 2 and "own draft vocabulary" in capsys.readouterr().err
