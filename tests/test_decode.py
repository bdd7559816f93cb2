"""Greedy speculative decoding is lossless; caches keep exactly the accepted path."""

import pytest
import torch
from transformers import DynamicCache

from eagle2 import cache as kv
from eagle2.decode import generate, hf_generate, target_forward
from eagle2.draft import EagleDrafter, ModelDrafter
from eagle2.head import EagleHead
from eagle2.policies import Chain, Eagle1, Eagle2, Vanilla
from eagle2.trace import Observer, TraceRecorder
from eagle2.tree import DraftTree

from conftest import make_tiny_llama

VOCAB = 96
POLICIES = {
    "eagle2": lambda: Eagle2(top_k=3, depth=4, total_tokens=10),
    "eagle2-wide": lambda: Eagle2(top_k=5, depth=3, total_tokens=30),
    "eagle1": lambda: Eagle1(),
    "chain": lambda: Chain(depth=4),
}


@pytest.fixture(scope="module")
def models():
    target = make_tiny_llama(VOCAB, seed=0)
    other = make_tiny_llama(VOCAB, seed=1)  # a weak drafter: some accepted, many rejected
    with torch.no_grad():  # make `other` a noisy copy of the target so it agrees often, not always
        for p_t, p_o in zip(target.parameters(), other.parameters()):
            p_o.copy_(p_t + 0.1 * p_o.std() * torch.randn_like(p_o))
    return target, other


def prompts(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g) for _ in range(n)]


def drafters(target, other):
    return {
        "self": lambda: ModelDrafter(target),  # proposals always right: long paths, deep acceptance
        "noisy": lambda: ModelDrafter(other),
        "head": lambda: EagleDrafter(EagleHead.for_target(target.config), target),  # random head
        "head2": lambda: EagleDrafter(EagleHead.for_target(target.config, num_layers=2), target),  # two layers
    }


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("drafter_name", ["self", "noisy", "head", "head2"])
def test_greedy_equals_vanilla(models, policy_name, drafter_name):
    target, other = models
    drafter = drafters(target, other)[drafter_name]()
    accepted = 0
    for ids in prompts():
        ref = generate(target, ids, Vanilla(), max_new_tokens=30)
        out = generate(target, ids, POLICIES[policy_name](), drafter, max_new_tokens=30)
        assert out.tokens == ref.tokens
        accepted += out.origins.count("draft")
    if drafter_name == "self":
        assert accepted > 20 * 20  # most tokens came from accepted drafts
    if drafter_name == "noisy":
        assert accepted > 0


def test_vanilla_equals_hf_generate(models):
    target, _ = models
    for ids in prompts(5, seed=1):
        assert generate(target, ids, Vanilla(), max_new_tokens=25).tokens == hf_generate(target, ids, 25).tokens


def test_prefill_scores_only_the_last_prompt_token(models):
    """The prefill's lm_head sees one row (the first token comes from it), not the whole prompt;
    verify forwards score every tree node."""
    target, other = models
    rows = []
    hook = target.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[-2]))
    try:
        r = generate(target, torch.arange(4, 16), Eagle2(top_k=3, depth=3, total_tokens=8),
                     ModelDrafter(other), max_new_tokens=6)
    finally:
        hook.remove()
    assert rows[0] == 1 and len(r.tokens) == 6
    assert max(rows[1:]) > 1  # a tree of several nodes was verified


def test_eos_inside_an_accepted_path(models):
    """EOS met mid-path: stop right there, never a token past it, same as vanilla."""
    target, _ = models
    hits = 0
    for ids in prompts(20, seed=2):
        ref = generate(target, ids, Vanilla(), max_new_tokens=40).tokens
        eos = ref[len(ref) // 2]  # pretend a token from the middle of the answer is EOS
        want = ref[: ref.index(eos) + 1]
        out = generate(target, ids, Eagle2(top_k=2, depth=6, total_tokens=12), ModelDrafter(target),
                       max_new_tokens=40, eos_token_ids=[eos])
        assert out.tokens == want and out.stop_reason == "eos"
        assert generate(target, ids, Vanilla(), max_new_tokens=40, eos_token_ids=[eos]).tokens == want
        i = out.tokens.index(eos)
        hits += out.origins[i] == "draft"
    assert hits >= 5  # EOS arrived as an accepted draft token, inside a path


@pytest.mark.parametrize("budget", [1, 2, 7, 13])
def test_stops_exactly_at_max_new_tokens(models, budget):
    target, _ = models
    ids = prompts(1, seed=3)[0]
    out = generate(target, ids, Eagle2(top_k=2, depth=5, total_tokens=8), ModelDrafter(target), max_new_tokens=budget)
    assert len(out.tokens) == budget
    assert out.tokens == generate(target, ids, Vanilla(), max_new_tokens=budget).tokens


def test_target_cache_compaction_equals_fresh_prefill(models):
    target, _ = models
    prefix = torch.tensor([5, 9, 17, 33, 2])
    tree = DraftTree([40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 2, 4])  # root + 5 drafts
    cache = DynamicCache()
    target_forward(target, prefix, cache)
    target_forward(target, tree.tokens, cache, tree.position_ids(5), tree.attention_mask(5))
    path = [0, 2, 4, 5]
    kv.keep_prefix_and(cache, 5, path)
    fresh = DynamicCache()
    target_forward(target, torch.cat([prefix, tree.tokens[path]]), fresh)
    for a, b in zip(cache.layers, fresh.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    # and decoding continues identically from either cache
    nxt = torch.tensor([7])
    pos = torch.tensor([[5 + len(path)]])
    h1, _ = target_forward(target, nxt, cache, pos)
    h2, _ = target_forward(target, nxt, fresh, pos)
    assert torch.allclose(h1, h2, atol=1e-5)


def test_buffered_cache_matches_dynamic_through_surgery_and_growth(models, monkeypatch):
    """new_cache() writes in place into buffers; through tree forwards, compaction, a cut, a
    re-indexing that leaves plain tensors (keep_positions) and buffer growth, its keys, values
    and logits stay those of transformers' DynamicCache, and updates stop copying the cache."""
    monkeypatch.setattr(kv, "MIN_CAPACITY", 8)  # so the buffers grow several times
    target, _ = models
    g = torch.Generator().manual_seed(3)
    ours, ref = kv.new_cache(), DynamicCache()
    prefix = torch.randint(4, VOCAB, (6,), generator=g)
    for c in (ours, ref):
        target_forward(target, prefix, c)
    n = 6
    tree = DraftTree([40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 2, 4])
    for step in range(6):
        outs = [target_forward(target, tree.tokens, c, tree.position_ids(n), tree.attention_mask(n)) for c in (ours, ref)]
        assert torch.equal(outs[0][1], outs[1][1])
        path = [0, 2, 4, 5] if step % 2 else [0, 1]
        for c in (ours, ref):
            if step == 3:
                kv.keep_positions(c, torch.cat([torch.arange(n), n + torch.tensor(path)]))
            else:
                kv.keep_prefix_and(c, n, path)
        n += len(path)
        for a, b in zip(ours.layers, ref.layers):
            assert isinstance(a, kv.BufferedLayer) and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    layer = ours.layers[0]
    assert layer._holds_view() and layer._keys_buf.shape[-2] >= n > 8  # grew past MIN_CAPACITY, still a view
    before = layer._keys_buf.data_ptr()
    target_forward(target, torch.tensor([7]), ours, torch.tensor([[n]]))
    assert layer._keys_buf.data_ptr() == before and layer.keys.data_ptr() == before  # written in place


@pytest.mark.parametrize("kind", ["head", "head2", "model"])
def test_drafter_cache_after_commit_equals_fresh(models, kind):
    """Draft a tree, accept a path, commit: the drafter's cache equals a fresh one built at once."""
    target, other = models
    layers = {"head": 1, "head2": 2}.get(kind)
    make = (lambda: EagleDrafter(EagleHead.for_target(target.config, num_layers=layers), target)) if layers else \
        (lambda: ModelDrafter(other))
    torch.manual_seed(0)
    d1 = make()
    d2 = make()
    if layers:
        d2.head.load_state_dict(d1.head.state_dict())
    seq = torch.tensor([3, 8, 21, 34, 55, 13])
    feats, _ = target_forward(target, seq[:-1], DynamicCache())
    d1.commit(seq, feats if d1.needs_features else None)
    d1.step(torch.tensor([60, 61]), [-1, -1])
    d1.step(torch.tensor([62, 63]), [0, 0])
    # accept root(13) -> 60 -> 62, bonus 70
    full = torch.cat([seq, torch.tensor([60, 62, 70])])
    full_feats, _ = target_forward(target, full[:-1], DynamicCache())
    lp1 = d1.commit(full, full_feats[len(seq) - 1:] if d1.needs_features else None)
    lp2 = d2.commit(full, full_feats if d2.needs_features else None)
    assert d1.committed == d2.committed
    assert len(d1.cache.layers) == len(d2.cache.layers) == (layers or other.config.num_hidden_layers)
    for a, b in zip(d1.cache.layers, d2.cache.layers):
        assert a.keys.shape == b.keys.shape
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    assert torch.allclose(lp1, lp2, atol=1e-4)


class Counting(Observer):
    wants_records = False

    def __init__(self):
        self.tokens = []

    def on_tokens(self, cycle, tokens, origins):
        self.tokens += tokens


def test_observers_never_steer(models):
    target, other = models
    for ids in prompts(5, seed=4):
        plain = generate(target, ids, Eagle2(), ModelDrafter(other), max_new_tokens=30)
        rec, cnt = TraceRecorder(), Counting()
        seen = generate(target, ids, Eagle2(), ModelDrafter(other), max_new_tokens=30, observers=[rec, cnt])
        assert plain.tokens == seen.tokens == cnt.tokens == rec.trace.output_tokens
        assert len(rec.trace.cycles) == len(seen.cycles)
        for c in rec.trace.cycles:
            v = c.verification
            assert [n.status for n in v.nodes].count("accepted") == len(v.accepted_path) - 1
            assert c.new_tokens[: len(v.accepted_path) - 1] == [v.nodes[i].token for i in v.accepted_path[1:]]


def test_sampling_is_reproducible_with_a_seed(models):
    target, other = models
    ids = prompts(1, seed=5)[0]
    a = generate(target, ids, Eagle2(), ModelDrafter(other), max_new_tokens=20, temperature=0.8, seed=7)
    b = generate(target, ids, Eagle2(), ModelDrafter(other), max_new_tokens=20, temperature=0.8, seed=7)
    assert a.tokens == b.tokens


@pytest.mark.parametrize("kwargs, msg", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 10_000}, "context"),
])
def test_bad_generation_inputs(models, kwargs, msg):
    target, _ = models
    with pytest.raises(ValueError, match=msg):
        generate(target, torch.tensor([4, 5]), Vanilla(), **{"max_new_tokens": 5, **kwargs})


def test_empty_prompt_and_missing_drafter(models):
    target, _ = models
    with pytest.raises(ValueError, match="empty"):
        generate(target, torch.tensor([], dtype=torch.long), Vanilla())
    with pytest.raises(ValueError, match="drafter"):
        generate(target, torch.tensor([4, 5]), Eagle2(), None)


def test_user_policy_from_examples_is_lossless(models):
    """examples/custom_policy.py: a user-defined policy plugs in and stays exact."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / "custom_policy.py"
    spec = importlib.util.spec_from_file_location("custom_policy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    target, other = models
    for ids in prompts(5, seed=6):
        rec = TraceRecorder()
        out = generate(target, ids, mod.BestFirst(top_k=3, steps=5, total_tokens=8), ModelDrafter(other),
                       max_new_tokens=30, observers=[rec])
        assert out.tokens == generate(target, ids, Vanilla(), max_new_tokens=30).tokens
        assert all(c.verification.nodes for c in rec.trace.cycles)


def test_a_converted_model_already_in_the_cache_is_kept(tiny_target, tmp_path):
    """Two processes converting the embedded GGUF at once: the second rename meets the first's
    folder; it keeps that folder, drops its own copy, and does not fail."""
    from eagle2.models import _save_to_cache

    cached = tmp_path / "targets" / "model-abc"
    _save_to_cache(tiny_target.model, tiny_target.tokenizer, cached)
    first = (cached / "model.safetensors").stat().st_mtime_ns
    _save_to_cache(tiny_target.model, tiny_target.tokenizer, cached)  # the loser of the race
    assert (cached / "model.safetensors").stat().st_mtime_ns == first
    assert [p.name for p in cached.parent.iterdir()] == ["model-abc"]  # no temporary folder left


def test_the_converted_model_folder_is_named_by_the_gguf_content(tmp_path, monkeypatch):
    """Each virtual environment installs its own copy of the GGUF (a new mtime): all copies share one
    converted folder, and a file of the same name and size with other bytes gets its own."""
    import os

    from eagle2.models import _gguf_cache_folder

    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path / "cache"))
    data = bytes(range(256)) * 64
    a, b, c = (tmp_path / d / "model.gguf" for d in "abc")
    for path, payload in ((a, data), (b, data), (c, data[:-1] + b"\x00")):
        path.parent.mkdir()
        path.write_bytes(payload)
    os.utime(b, (1_000_000, 1_000_000))
    assert _gguf_cache_folder(a) == _gguf_cache_folder(b)
    assert _gguf_cache_folder(a).parent == tmp_path / "cache" / "targets"
    assert _gguf_cache_folder(c) != _gguf_cache_folder(a)
