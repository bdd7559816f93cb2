"""One-call RMSNorm (eagle2.norms): the library's numbers exactly, swapped in only where that holds."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

import eagle2.models as models
from eagle2.decode import generate
from eagle2.draft import EagleDrafter
from eagle2.head import Eagle3Head, EagleHead
from eagle2.norms import OneCallRMSNorm, fuse_rms_norms, has_one_call_norms
from eagle2.policies import Eagle2, Vanilla

from conftest import make_tiny_llama


@pytest.mark.parametrize("cls", [LlamaRMSNorm, Qwen2RMSNorm])
def test_one_call_norm_is_bit_identical_to_the_library_norm(cls):
    g = torch.Generator().manual_seed(0)
    for hidden in (64, 576, 1152):
        norm = cls(hidden, eps=1e-5)
        norm.weight.data = torch.randn(hidden, generator=g)
        fused = OneCallRMSNorm(norm)
        assert fused.weight is norm.weight
        for rows in (1, 4, 7, 300):
            for scale in (1e-3, 1.0, 40.0):
                x = torch.randn(1, rows, hidden, generator=g) * scale
                assert torch.equal(fused(x), norm(x)), (hidden, rows, scale)
        x16 = torch.randn(2, 3, hidden, generator=g).to(torch.bfloat16)  # not fp32: the library's formula
        assert torch.equal(fused(x16), norm(x16))


def test_fp32_targets_on_a_cpu_get_one_call_norms_and_the_same_logits(tiny_dir):
    target = models.load_target(tiny_dir, dtype="float32", device="cpu")
    layers = target.model.config.num_hidden_layers
    swapped = [m for m in target.model.modules() if isinstance(m, OneCallRMSNorm)]
    assert len(swapped) == 2 * layers + 1  # two per layer and the final norm
    assert not any(isinstance(m, LlamaRMSNorm) for m in target.model.modules())
    stock = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert set(stock.state_dict()) == set(target.model.state_dict())  # names unchanged
    ids = torch.randint(0, stock.config.vocab_size, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(target.model(ids).logits, stock(ids).logits)


def test_bf16_targets_keep_the_library_norms(tiny_dir):
    target = models.load_target(tiny_dir, dtype="bfloat16", device="cpu")
    assert not has_one_call_norms(target.model)
    assert any(isinstance(m, LlamaRMSNorm) for m in target.model.modules())


@pytest.mark.parametrize("kind", ["eagle1", "eagle3"])
def test_heads_on_such_a_target_get_them_too_and_stay_lossless(kind):
    target = make_tiny_llama(80, layers=4).requires_grad_(False)
    assert fuse_rms_norms(target) == 9  # what load_target does to an fp32 CPU target
    cfg = target.config
    torch.manual_seed(3)
    head = EagleHead.for_target(cfg) if kind == "eagle1" else Eagle3Head.for_target(cfg, range(40))
    assert any(isinstance(m, LlamaRMSNorm) for m in head.modules())
    drafter = EagleDrafter(head, target)
    assert has_one_call_norms(drafter.head)
    assert not any(isinstance(m, LlamaRMSNorm) for m in drafter.head.modules())
    ids = torch.randint(4, cfg.vocab_size, (12,), generator=torch.Generator().manual_seed(2))
    want = generate(target, ids, Vanilla(), max_new_tokens=24).tokens
    got = generate(target, ids, Eagle2(top_k=3, depth=4, total_tokens=8), drafter, max_new_tokens=24).tokens
    assert got == want


def test_only_fp32_cpu_norms_are_swapped():
    module = torch.nn.Sequential(LlamaRMSNorm(8), LlamaRMSNorm(8).to(torch.bfloat16), torch.nn.LayerNorm(8))
    assert fuse_rms_norms(module) == 1
    assert [type(m).__name__ for m in module] == ["OneCallRMSNorm", "LlamaRMSNorm", "LayerNorm"]
