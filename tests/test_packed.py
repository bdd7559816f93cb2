"""fp16-packed weights (eagle2.packed, `--dtype fp16-weights`): the same layers, FBGEMM's kernel,
and decoding on a packed target stays lossless for every policy, drafter and head kind."""

import pytest
import torch
import torch.nn.functional as F

import eagle2.models as models
import eagle2.precision as precision
from eagle2.packed import FP16_WEIGHTS as FP16
from eagle2.decode import generate
from eagle2.draft import EagleDrafter, ModelDrafter
from eagle2.head import Eagle3Head, EagleHead
from eagle2.packed import (FBGEMM_FP16, PackedLinear, SharedInputProduct, fbgemm_fp16_available, has_packed_weights,
                           has_shared_products, pack_weights, packed_format)
from eagle2.policies import Chain, Eagle1, Eagle2, Vanilla
from eagle2.vocab import ReducedLMHead

from conftest import make_tiny_llama, run_cli
from test_verify import _exact_first_tokens, chi2_critical, g_stat

pytestmark = pytest.mark.skipif(not fbgemm_fp16_available(), reason="no FBGEMM fp16 kernel on this CPU / build")
VOCAB = 96


def packed_tiny(seed=0, layers=2, **kw):
    model = make_tiny_llama(VOCAB if "vocab" not in kw else kw.pop("vocab"), seed=seed, layers=layers, **kw)
    model.requires_grad_(False)
    pack_weights(model, FBGEMM_FP16)
    return model


def test_packed_linear_is_the_linear_with_fp16_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    packed = PackedLinear(lin, FBGEMM_FP16)
    w16 = lin.weight.detach().half().float()
    for x in (torch.randn(64), torch.randn(1, 64), torch.randn(7, 64), torch.randn(2, 5, 64)):
        want = F.linear(x, w16, lin.bias.detach())
        got = packed(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(got, F.linear(x, lin.weight.detach(), lin.bias.detach()), atol=1e-7, rtol=0)
    assert packed(torch.randn(0, 64)).shape == (0, 96)
    assert packed.weight is lin.weight  # the rows stay readable (tied embeddings, draft vocabulary)


def test_a_gradient_still_flows_through_a_packed_layer():
    """Training a head on a packed target's lm_head needs d(logits)/d(hidden)."""
    lin = torch.nn.Linear(16, 8).requires_grad_(False)
    packed = PackedLinear(lin, FBGEMM_FP16)
    x = torch.randn(3, 16, requires_grad=True)
    packed(x).square().sum().backward()
    y = x.detach().clone().requires_grad_(True)
    F.linear(y, lin.weight, lin.bias).square().sum().backward()
    assert torch.allclose(x.grad, y.grad)


def test_pack_replaces_every_linear_of_a_model():
    model = make_tiny_llama(VOCAB, layers=2)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_weights(model, FBGEMM_FP16) == n_linear == 2 * 7 + 1
    assert not any(type(m) is torch.nn.Linear for m in model.modules()) and has_packed_weights(model)


def _unshare(model) -> list:
    """Give every shared layer back its own packed weight; returns the (layer, shared) pairs."""
    pairs = [(m, m.shared) for m in model.modules() if isinstance(m, PackedLinear) and m.shared is not None]
    for m, _ in pairs:
        m.packed, m.shared = FBGEMM_FP16.prepack(m.weight, m.bias), None
    return pairs


def _tiny_qwen2(seed=0):
    """A tiny Qwen2: q/k/v projections with biases, o_proj without."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, initializer_range=0.3)
    return Qwen2ForCausalLM(cfg).eval().requires_grad_(False)


@pytest.mark.parametrize("make", [lambda: packed_tiny(layers=2),
                                  lambda: (lambda m: (pack_weights(m, FBGEMM_FP16), m)[1])(_tiny_qwen2())],
                         ids=["llama", "qwen2-biases"])
def test_shared_input_products_give_the_same_logits(make):
    """q/k/v and gate/up share one product per layer: one FBGEMM call, bit-identical outputs."""
    model = make()
    assert has_shared_products(model)
    groups = {id(m.shared[0]) for m in model.modules() if isinstance(m, PackedLinear) and m.shared}
    assert len(groups) == 2 * 2  # attention and MLP of each of the 2 layers
    ids = torch.randint(4, VOCAB, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        shared = model(ids).logits
        pairs = _unshare(model)
        separate = model(ids).logits
    assert torch.equal(shared, separate)
    assert not has_shared_products(model)
    with torch.inference_mode():  # and back: still the same
        for m, sh in pairs:
            m.shared = sh
        assert torch.equal(model(ids).logits, separate)


def test_a_shared_product_is_right_whatever_the_call_order():
    torch.manual_seed(0)
    lins = [torch.nn.Linear(32, n, bias=b) for n, b in ((48, True), (16, False), (16, True))]
    layers = [PackedLinear(l, FBGEMM_FP16) for l in lins]
    own = [PackedLinear(l, FBGEMM_FP16) for l in lins]  # each with its own packed weight
    product = SharedInputProduct(layers)
    for i, layer in enumerate(layers):
        layer.shared = (product, i)
    x, y = torch.randn(3, 32), torch.randn(1, 5, 32)
    for calls in ([(0, x), (1, x), (2, x)], [(2, x), (0, x), (1, x)], [(0, x), (0, x), (1, y), (2, x)],
                  [(1, y), (1, y), (2, y), (0, x)]):
        for i, inp in calls:
            assert torch.equal(layers[i](inp), own[i](inp)), calls
    for i in range(3):  # served in full: it holds no tensors
        layers[i](x)
    assert product._input is None and product._outputs == []
    z = torch.randn(2, 32, requires_grad=True)  # a gradient to pass: the fp32 product, as before
    layers[1](z).sum().backward()
    assert torch.allclose(z.grad, lins[1].weight.sum(0).expand(2, -1))


@pytest.fixture(scope="module")
def packed_pair():
    target = packed_tiny(seed=0)
    other = make_tiny_llama(VOCAB, seed=1)
    with torch.no_grad():  # a noisy copy of the target (before packing): it agrees often, not always
        plain = make_tiny_llama(VOCAB, seed=0)
        for p_t, p_o in zip(plain.parameters(), other.parameters()):
            p_o.copy_(p_t + 0.1 * p_o.std() * torch.randn_like(p_o))
    other.requires_grad_(False)
    pack_weights(other, FBGEMM_FP16)
    return target, other


@pytest.mark.parametrize("policy", [lambda: Eagle2(top_k=3, depth=4, total_tokens=10), lambda: Eagle1(),
                                    lambda: Chain(depth=4)], ids=["eagle2", "eagle1", "chain"])
@pytest.mark.parametrize("drafter_name", ["self", "noisy", "head"])
def test_greedy_on_a_packed_target_equals_vanilla(packed_pair, policy, drafter_name):
    target, other = packed_pair
    drafter = {"self": lambda: ModelDrafter(target), "noisy": lambda: ModelDrafter(other),
               "head": lambda: EagleDrafter(EagleHead.for_target(target.config), target)}[drafter_name]()
    if drafter_name == "head":
        assert has_packed_weights(drafter.head)  # a packed target's head is packed alike
    g, accepted = torch.Generator().manual_seed(0), 0
    for _ in range(10):
        ids = torch.randint(4, VOCAB, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g)
        ref = generate(target, ids, Vanilla(), max_new_tokens=30)
        out = generate(target, ids, policy(), drafter, max_new_tokens=30)
        assert out.tokens == ref.tokens
        accepted += out.origins.count("draft")
    if drafter_name == "self":
        assert accepted > 10 * 15


def test_greedy_with_an_eagle3_head_and_a_reduced_vocabulary_on_a_packed_target():
    target = packed_tiny(seed=0, layers=6)
    head = Eagle3Head.for_target(target.config, torch.arange(4, 40))
    e3 = EagleDrafter(head, target)
    assert has_packed_weights(e3.head)
    from eagle2.draft import ReducedVocabDrafter

    reduced = ReducedVocabDrafter(EagleHead.for_target(target.config), target, list(range(3, 50)))
    assert reduced.reduced.packed is not None
    for drafter in (e3, reduced):
        for seed in range(4):
            ids = torch.randint(4, VOCAB, (6,), generator=torch.Generator().manual_seed(seed))
            assert (generate(target, ids, Eagle2(top_k=3, depth=3, total_tokens=8), drafter, max_new_tokens=20).tokens
                    == generate(target, ids, Vanilla(), max_new_tokens=20).tokens)


def test_reduced_vocabulary_rows_of_a_packed_lm_head():
    lin = torch.nn.Linear(32, 50, bias=False)
    rows = ReducedLMHead(PackedLinear(lin, FBGEMM_FP16), [3, 7, 11])
    h = torch.randn(4, 32)
    assert torch.allclose(rows.rows(h), F.linear(h, lin.weight.detach()[[3, 7, 11]].half().float()), atol=1e-5)
    assert ReducedLMHead(lin, [3, 7]).packed is None  # an unpacked lm_head keeps the fp32 product


def test_sampling_on_a_packed_target_matches_its_distribution():
    """First 3 sampled tokens of eagle2 against the packed target's own exact distribution."""
    vocab, k = 5, 3
    target = make_tiny_llama(vocab, seed=3, hidden=32, eos=None, init=0.1).requires_grad_(False)
    draft = make_tiny_llama(vocab, seed=4, hidden=32, eos=None, init=0.1).requires_grad_(False)
    pack_weights(target, FBGEMM_FP16)
    pack_weights(draft, FBGEMM_FP16)
    prompt = torch.tensor([1, 2, 0, 4])
    exact = _exact_first_tokens(target, prompt, k, 1.0, 1.0)
    n, counts, accepted = 2000, {}, 0
    for i in range(n):
        r = generate(target, prompt, Eagle2(top_k=2, depth=2, total_tokens=4), ModelDrafter(draft),
                     max_new_tokens=k, temperature=1.0, seed=i)
        counts[tuple(r.tokens)] = counts.get(tuple(r.tokens), 0) + 1
        accepted += r.origins.count("draft")
    assert accepted > n * 0.3
    g, df = g_stat(counts, exact, n)
    assert g < chi2_critical(df), (g, chi2_critical(df))


def test_load_target_and_cli_with_fp16_weights(tiny_dir, tiny_head, capsys):
    t = models.load_target(tiny_dir, dtype="fp16-weights", device="cpu")
    assert t.precision == "fp16-weights" and t.dtype == torch.float32 and has_packed_weights(t.model)
    assert models.load_target(tiny_dir, dtype="float32", device="cpu").precision == "float32"
    code, out, err = run_cli(capsys, "generate", "--model", tiny_dir, "--head", tiny_head, "--dtype", "fp16-weights",
                             "--prompt", "hello world", "--max-new-tokens", "8", "--json")
    assert code == 0, err
    assert '"dtype": "fp16-weights"' in out


def test_where_fp16_weights_apply(tiny_dir, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "has_cpu_bf16", lambda: False)
    assert models.resolve_precision("auto", cpu) == models.resolve_precision("fp16-weights", cpu) == FP16
    assert models.resolve_precision("auto", cuda) != FP16 and models.resolve_precision("float32", cpu) != FP16
    assert models.resolve_precision("auto", cpu, packable=False) == "float32"  # a device map: not packed
    monkeypatch.setattr(precision, "has_cpu_bf16", lambda: True)
    assert models.resolve_precision("auto", cpu) != FP16  # native bf16 and no layer shapes to measure: bf16
    with pytest.raises(ValueError, match="CPU path"):
        models.resolve_precision("fp16-weights", cuda)
    with pytest.raises(ValueError, match="no device_map"):
        models.load_target(tiny_dir, dtype="fp16-weights", device_map={"": "cpu"})
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_precision("int4")


def test_the_probe_measures_both_precisions_on_the_layer_shapes():
    shapes = precision.LayerShapes(hidden=64, intermediate=160, kv=32)
    assert shapes.weights()[-1] == (64, 160) and shapes.params() == 64 * 64 * 2 + 32 * 64 * 2 + 160 * 64 * 3
    result = precision.measure(shapes, rounds=2, params=200_000)
    assert result.layers == -(-200_000 // shapes.params())
    assert set(result.ms) == {"bfloat16", "fp16-weights"}
    assert all(ms > 0 for by_rows in result.ms.values() for ms in by_rows.values())
    faster = min(result.ms, key=result.score)
    assert result.choice == faster


def _fake_probe(choice, calls):
    def measure(shapes, **kw):
        calls.append(shapes)
        return precision.PrecisionProbe(precision.asdict(shapes), 1, {"bfloat16": {1: 2.0}, "fp16-weights": {1: 1.0}},
                                        choice, {})
    return measure


@pytest.mark.parametrize("choice", ["bfloat16", "fp16-weights"])
def test_auto_runs_what_the_probe_measured_faster_once_per_machine(tiny_dir, tmp_path, monkeypatch, choice):
    monkeypatch.setenv("EAGLE2_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "has_cpu_bf16", lambda: True)
    calls = []
    monkeypatch.setattr(precision, "measure", _fake_probe(choice, calls))
    t = models.load_target(tiny_dir, dtype="auto", device="cpu")
    assert t.precision == choice and (packed_format(t.model) is FBGEMM_FP16) == (choice == "fp16-weights")
    assert [c.hidden for c in calls] == [t.config.hidden_size]  # measured on the target's own shapes
    assert models.load_target(tiny_dir, dtype="auto", device="cpu").precision == choice
    assert len(calls) == 1  # the second load read the cached probe
    assert len(list((tmp_path / "precision").glob("*.json"))) == 1
    assert models.load_target(tiny_dir, dtype="float32", device="cpu").precision == "float32"  # asked: no probe
    assert len(calls) == 1


def test_a_target_too_big_for_fp16_weights_stays_bf16(monkeypatch):
    from transformers import LlamaConfig

    monkeypatch.setattr(precision, "has_cpu_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure", lambda *a, **k: pytest.fail("no probe for a target that cannot fit"))
    huge = LlamaConfig(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
                       num_key_value_heads=8, vocab_size=128256)
    assert not precision.fits_packed_weights(huge, 6)
    assert precision.auto_cpu_precision(huge, cache=models.cache_dir()) == "bfloat16"


@pytest.mark.skipif(not fbgemm_fp16_available(), reason="needs FBGEMM (x86 with AVX2)")
def test_a_layer_that_is_not_fp32_is_refused_before_anything_is_packed():
    from torch import nn

    from eagle2.packed import FBGEMM_FP16, PackedLinear, pack_weights

    model = nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16)))
    with pytest.raises(ValueError, match=r"packs fp32 layers; 1\.0 is torch\.bfloat16"):
        pack_weights(model, FBGEMM_FP16)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())  # no half-packed model left
    assert pack_weights(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), FBGEMM_FP16) == 2
