"""Tree attention for grouped-query models: same outputs as transformers' sdpa, no K/V copy."""

import pytest
import torch
from transformers.integrations import sdpa_attention

from eagle2 import cache as kv
from eagle2 import decode, draft
from eagle2.attention import TREE_SDPA, use_tree_attention
from eagle2.decode import generate
from eagle2.draft import EagleDrafter
from eagle2.head import EagleHead
from eagle2.models import target_forward
from eagle2.policies import Eagle2, Vanilla
from eagle2.tree import DraftTree

from conftest import make_tiny_llama


def _tree_logits(model, impl: str) -> torch.Tensor:
    model.config._attn_implementation = impl
    cache = kv.new_cache()
    prefix = torch.tensor([5, 9, 17, 33, 2, 40, 41])
    target_forward(model, prefix, cache)
    tree = DraftTree([40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 2, 4])
    return target_forward(model, tree.tokens, cache, tree.position_ids(7), tree.attention_mask(7))[1]


def test_tree_attention_equals_sdpa_without_copying_the_cache(monkeypatch):
    model = make_tiny_llama(96, seed=0)  # 4 query heads share 2 key/value heads
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    reference = _tree_logits(model, "sdpa")
    copies = []
    real = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda h, n: copies.append(n) or real(h, n))
    ours = _tree_logits(model, TREE_SDPA)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
    assert copies == []  # the tree forward never copied K/V per query head
    _tree_logits(model, "sdpa")
    assert copies  # while sdpa does (so the check above can fail)


def test_use_tree_attention_switches_sdpa_only():
    model = make_tiny_llama(96, seed=0)
    model.config._attn_implementation = "sdpa"
    use_tree_attention(model)
    assert model.config._attn_implementation == TREE_SDPA
    assert all(m.config._attn_implementation == TREE_SDPA for m in model.modules() if hasattr(m, "config"))
    eager = make_tiny_llama(96, seed=0)
    eager.config._attn_implementation = "eager"
    use_tree_attention(eager)
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_is_unchanged_by_tree_attention(monkeypatch, temperature):
    """Greedy: the same tokens (and plain decoding's); sampling with one seed: the same draws."""
    target = make_tiny_llama(96, seed=0)
    head = EagleHead.for_target(target.config)
    ids = torch.tensor([5, 9, 17, 33])

    def run(policy):
        return generate(target, ids, policy, EagleDrafter(head, target), max_new_tokens=40,
                        temperature=temperature, seed=3).tokens

    with monkeypatch.context() as m:  # the reference: target and head stay on sdpa
        m.setattr(decode, "use_tree_attention", lambda model: None)
        m.setattr(draft, "use_tree_attention", lambda model: None)
        reference = run(Eagle2(top_k=3, depth=4, total_tokens=10))
        assert target.config._attn_implementation == "sdpa" == head.config._attn_implementation
    ours = run(Eagle2(top_k=3, depth=4, total_tokens=10))
    assert target.config._attn_implementation == TREE_SDPA == head.config._attn_implementation
    assert ours == reference
    if temperature == 0:
        assert ours == run(Vanilla())
