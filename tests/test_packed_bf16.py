"""bf16 weights packed for oneDNN (eagle2.packed.ONEDNN_BF16): a bf16 target on a CPU whose oneDNN
runs bf16 (AVX-512 BF16, AMX) multiplies with weights reordered once, with the same numbers as a
plain bf16 F.linear, so decoding on it is the same text, and stays lossless."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eagle2.models as models
from eagle2.decode import generate
from eagle2.draft import EagleDrafter, ReducedVocabDrafter
from eagle2.head import Eagle3Head, EagleHead
from eagle2.packed import (FBGEMM_FP16, ONEDNN_BF16, PackedLinear, has_shared_products, onednn_bf16_available,
                           pack_weights, packed_format)
from eagle2.policies import Chain, Eagle2, Vanilla

from conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN runs no bf16 on this CPU / build")
VOCAB = 96


def bf16_tiny(seed=0, layers=2, packed=True):
    model = make_tiny_llama(VOCAB, seed=seed, layers=layers).to(torch.bfloat16).requires_grad_(False)
    if packed:
        pack_weights(model, ONEDNN_BF16)
    return model


def test_a_packed_bf16_layer_is_the_bf16_linear():
    torch.manual_seed(0)
    for bias in (True, False):
        lin = nn.Linear(32, 48, bias=bias).to(torch.bfloat16)
        packed = PackedLinear(lin, ONEDNN_BF16)
        for shape in ((32,), (3, 32), (1, 5, 32), (17, 32)):
            x = torch.randn(shape, dtype=torch.bfloat16)
            out = packed(x)
            assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 48)
            assert torch.equal(out, F.linear(x, lin.weight, lin.bias)), (bias, shape)


def test_a_packed_bf16_model_gives_the_same_logits_with_shared_products():
    plain, packed = bf16_tiny(packed=False), bf16_tiny()
    assert has_shared_products(packed) and packed_format(packed) is ONEDNN_BF16
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.randint(4, VOCAB, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(packed(ids).logits, plain(ids).logits)
        assert torch.equal(packed(ids[:, :1]).logits, plain(ids[:, :1]).logits)


DRAFTERS = {
    "eagle": (2, lambda t: EagleDrafter(EagleHead.for_target(t.config), t)),
    "eagle3": (6, lambda t: EagleDrafter(Eagle3Head.for_target(t.config, torch.arange(4, 40)), t)),
    "reduced-vocab": (2, lambda t: ReducedVocabDrafter(EagleHead.for_target(t.config), t, list(range(3, 50)))),
}


@pytest.mark.parametrize("policy", [lambda: Eagle2(top_k=3, depth=4, total_tokens=10), lambda: Chain(depth=4)],
                         ids=["eagle2", "chain"])
@pytest.mark.parametrize("drafter_name", list(DRAFTERS))
def test_greedy_on_a_packed_bf16_target_is_the_plain_bf16_text(policy, drafter_name):
    """The same numbers, so the same text as the plain bf16 target, drafted or not. (A bf16 tree
    verify may still pick another token than bf16 one-token decoding at a near-tie: the README's
    "bf16 and token identity"; fp32 is where speculative greedy equals vanilla token for token.)"""
    layers, make = DRAFTERS[drafter_name]
    target, plain = bf16_tiny(layers=layers), bf16_tiny(layers=layers, packed=False)
    torch.manual_seed(5)
    drafter = make(target)
    torch.manual_seed(5)
    plain_drafter = make(plain)
    assert packed_format(drafter.head) is ONEDNN_BF16  # the head's products packed as the target's
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        ids = torch.randint(4, VOCAB, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g)
        assert generate(target, ids, Vanilla(), max_new_tokens=24).tokens == \
            generate(plain, ids, Vanilla(), max_new_tokens=24).tokens
        out = generate(target, ids, policy(), drafter, max_new_tokens=24)
        ref = generate(plain, ids, policy(), plain_drafter, max_new_tokens=24)
        assert out.tokens == ref.tokens and out.origins == ref.origins


def test_load_target_packs_a_bf16_target_on_the_cpu(tiny_dir):
    t = models.load_target(tiny_dir, dtype="bfloat16", device="cpu")
    assert t.precision == "bfloat16" and packed_format(t.model) is ONEDNN_BF16
    assert models.load_target(tiny_dir, dtype="float32", device="cpu").precision == "float32"
    mapped = models.load_target(tiny_dir, dtype="bfloat16", device_map={"": "cpu"})
    assert packed_format(mapped.model) is None  # a device map keeps the library's layers


def test_a_packed_layer_of_another_dtype_is_refused_before_anything_is_packed():
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16), nn.Sequential(nn.Linear(8, 8)))
    with pytest.raises(ValueError, match=r"packs bf16 layers; 1\.0 is torch\.float32"):
        pack_weights(model, ONEDNN_BF16)
    assert packed_format(model) is None
    with pytest.raises(ValueError, match="packs fp32 layers"):
        pack_weights(nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16)), FBGEMM_FP16)
