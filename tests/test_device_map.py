"""Targets spread over several devices (load_target(device_map=...), --device-map).

A CPU offers one device, so two stand-ins for a second one:
  * an explicit multi-part map with every part on "cpu" and accelerate's hooks forced on: the
    dispatched code path with real numbers (decoding must give the undispatched tokens);
  * a map whose last layers sit on "meta": a device that computes shapes only, where any tensor
    left on the wrong device raises (placement and routing: the head beside the lm_head, the
    inputs moved to the embedding, the features and logits back on the lm_head's device).
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_cli
import torch

from eagle2.decode import generate
from eagle2.draft import EagleDrafter, ModelDrafter
from eagle2.head import Eagle3Head, EagleHead
from eagle2.models import Target, dispatch, input_device, load_target, module_device, output_device, target_forward
from eagle2.policies import Chain, Eagle2, Vanilla

from conftest import make_tiny_llama

VOCAB = 96
META = torch.device("meta")


def split_map(layers: int, last: str = "cpu") -> dict:
    """Embedding and the first half of the layers on "cpu", the rest (norm, lm_head) on `last`."""
    m = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    m.update({f"model.layers.{i}": "cpu" if i < layers // 2 else last for i in range(layers)})
    m.update({"model.norm": last, "lm_head": last})
    return m


def prompts(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g) for _ in range(n)]


def hooked(model, device_map):
    """A dispatched copy of `model` (hooks forced on: every part is on the cpu here)."""
    return dispatch(copy.deepcopy(model), device_map, force_hooks=True)


def noisy_copy(model, seed=1):
    """A drafter that agrees with the target often, not always (accepted and rejected drafts)."""
    other = make_tiny_llama(model.config.vocab_size, seed=seed, layers=model.config.num_hidden_layers)
    with torch.no_grad():
        for p_t, p_o in zip(model.parameters(), other.parameters()):
            p_o.copy_(p_t + 0.1 * p_o.std() * torch.randn_like(p_o))
    return other


# ---- exactness through the dispatched code path (real numbers) ----------------------------------
@pytest.mark.parametrize("policy", [lambda: Eagle2(top_k=3, depth=4, total_tokens=10), lambda: Chain(depth=4)],
                         ids=["eagle2", "chain"])
@pytest.mark.parametrize("drafter_kind", ["head", "model"])
def test_dispatched_target_decodes_the_same_tokens(policy, drafter_kind):
    target = make_tiny_llama(VOCAB, layers=4)
    split = hooked(target, split_map(4))
    assert split.hf_device_map == split_map(4)
    assert all(hasattr(m, "_hf_hook") for m in (split.model.embed_tokens, split.model.layers[3], split.lm_head))
    if drafter_kind == "head":
        head = EagleHead.for_target(target.config)
        make = lambda model: EagleDrafter(head, model)  # noqa: E731
    else:
        other = noisy_copy(target)
        make = lambda model: ModelDrafter(other)  # noqa: E731
    accepted = 0
    for ids in prompts():
        ref = generate(target, ids, Vanilla(), max_new_tokens=20)
        assert generate(split, ids, Vanilla(), max_new_tokens=20).tokens == ref.tokens
        plain = generate(target, ids, policy(), make(target), max_new_tokens=20)
        out = generate(split, ids, policy(), make(split), max_new_tokens=20)
        assert out.tokens == ref.tokens
        assert out.origins == plain.origins  # the same drafts accepted: same features, same caches
        accepted += out.origins.count("draft")
    if drafter_kind == "model":
        assert accepted > 0  # the accepted-path cache compaction ran on the dispatched target


def test_hf_generate_baseline_on_a_dispatched_target():
    from eagle2.decode import hf_generate

    target = make_tiny_llama(VOCAB, layers=4)
    split = hooked(target, split_map(4))
    for ids in prompts(2):
        assert hf_generate(split, ids, max_new_tokens=12).tokens == hf_generate(target, ids, max_new_tokens=12).tokens


def test_eagle3_head_fuses_layers_from_several_parts():
    target = make_tiny_llama(VOCAB, layers=6)
    split = hooked(target, split_map(6))
    head = Eagle3Head.for_target(target.config, torch.arange(4, 44))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else p.fill_(1.0)
    for ids in prompts(4):
        ref = generate(target, ids, Vanilla(), max_new_tokens=16)
        plain = generate(target, ids, Eagle2(top_k=3, depth=3, total_tokens=8), EagleDrafter(head, target),
                         max_new_tokens=16)
        out = generate(split, ids, Eagle2(top_k=3, depth=3, total_tokens=8), EagleDrafter(head, split),
                       max_new_tokens=16)
        assert out.tokens == ref.tokens and out.origins == plain.origins


# ---- placement and routing with the last layers on a second device ("meta") ---------------------
@pytest.fixture()
def meta_split():
    """A 4-layer tiny Llama: embedding and layers 0-1 on the cpu, layers 2-3, norm and lm_head on meta."""
    return dispatch(make_tiny_llama(VOCAB, layers=4), split_map(4, last="meta"))


def test_input_and_output_devices(meta_split):
    assert input_device(meta_split) == torch.device("cpu")
    assert output_device(meta_split) == META
    assert module_device(meta_split.model.layers[3]) == META and module_device(meta_split.model.layers[0]).type == "cpu"
    assert meta_split.model.embed_tokens.weight.device.type == "cpu" and meta_split.lm_head.weight.device == META
    # Target.device is where the logits come out (the decode loop and the drafter live there)
    assert Target(meta_split, None, "split").device == META
    plain = make_tiny_llama(VOCAB)
    assert input_device(plain) == output_device(plain) == next(plain.parameters()).device


@pytest.mark.parametrize("layers", [None, (0, 2, 4)])
def test_target_forward_returns_features_and_logits_on_the_output_device(meta_split, layers):
    """(Nothing comes back from meta, so the inputs start on the cpu here.) With feature_layers
    the fused hidden states come from both devices: all are brought to the lm_head's."""
    from transformers import DynamicCache

    cache = DynamicCache()
    feats, logits = target_forward(meta_split, torch.tensor([5, 6, 7]), cache, feature_layers=layers)
    assert feats.device == META and logits.device == META
    assert feats.shape == (3, 64 * (1 if layers is None else 3)) and logits.shape == (3, VOCAB)
    # a tree forward: positions and a tree mask
    feats, logits = target_forward(meta_split, torch.tensor([8, 9]), cache, torch.tensor([[3, 4]]),
                                   torch.zeros(1, 1, 2, 5), layers)
    assert feats.device == META and logits.shape == (2, VOCAB)
    assert [layer.keys.device.type for layer in cache.layers] == ["cpu", "cpu", "meta", "meta"]


def test_head_sits_with_the_last_layers_and_embeds_on_the_first(meta_split):
    drafter = EagleDrafter(EagleHead.for_target(meta_split.config), meta_split)
    assert drafter.device == META
    assert all(p.device == META for p in drafter.head.parameters())
    assert drafter.embed is meta_split.model.embed_tokens  # the target's embedding, on the cpu
    calls = []
    hook = drafter.embed.register_forward_pre_hook(lambda m, args: calls.append(args[0].device))
    try:
        feats = torch.zeros(3, 64, device=META)  # target features come from the lm_head's device
        logp = drafter.commit(torch.tensor([5, 6, 7, 8]), feats)
        assert logp.device == META and logp.shape == (VOCAB,)
        logp = drafter.step(torch.tensor([9, 10]), [-1, -1])
        assert logp.device == META and logp.shape == (2, VOCAB)
        logp = drafter.step(torch.tensor([11]), [0])
        assert logp.shape == (1, VOCAB)
    finally:
        hook.remove()
    assert len(calls) == 3 and all(d.type == "cpu" for d in calls)  # embedded on the target's first device
    assert all(layer.keys.device == META for layer in drafter.cache.layers)  # the head's KV cache too


# ---- load_target ---------------------------------------------------------------------------------
def test_load_target_with_a_device_map(tiny_dir, tiny_target):
    t = load_target(tiny_dir, dtype="float32", device_map=split_map(2))
    assert t.device_map == {"": "cpu"}  # one device: transformers places it without hooks
    assert t.device == torch.device("cpu")
    ids = torch.tensor([5, 9, 14, 20])
    ref = generate(tiny_target.model, ids, max_new_tokens=12)
    assert generate(t.model, ids, max_new_tokens=12).tokens == ref.tokens
    assert load_target(tiny_dir, dtype="float32", device_map="auto").device_map == {"": "cpu"}
    assert tiny_target.device_map is None


@pytest.mark.parametrize("kwargs, msg", [
    ({"device": "cpu", "device_map": "auto"}, "not both"),
    ({"device_map": "sideways"}, "device_map must be auto, balanced"),
    ({"device_map": {}}, "non-empty"),
    ({"device_map": {"model": "gpu", "lm_head": "cpu"}}, "'gpu' is not a device"),
    ({"device_map": {"model": -1}}, "is not a device"),
    ({"device_map": {"model": 0, "lm_head": "disk"}}, "offloading is not supported"),
    ({"device_map": {"model": "cuda:0", "lm_head": "cpu"}}, "offloads lm_head"),
])
def test_load_target_refuses_bad_maps(tiny_dir, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        load_target(tiny_dir, dtype="float32", **kwargs)


def test_dispatch_refuses_offload_and_incomplete_maps():
    offloading = {"model.embed_tokens": "meta", "model.rotary_emb": "meta", "model.layers.0": "meta",
                  "model.layers.1": "cpu", "model.norm": "meta", "lm_head": "meta"}
    with pytest.raises(ValueError, match="offloads model.layers.1"):  # main device meta: cpu parts offloaded
        dispatch(make_tiny_llama(VOCAB), offloading)
    with pytest.raises(ValueError):
        dispatch(make_tiny_llama(VOCAB), {"model": "cpu"})  # lm_head has no device
    with pytest.raises(ValueError, match="explicit"):
        dispatch(make_tiny_llama(VOCAB), "auto")


# ---- command line --------------------------------------------------------------------------------
def test_generate_with_a_device_map_file(tiny_dir, tiny_head, tmp_path, capsys):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(split_map(2)))
    common = ["generate", "--prompt", "write a poem", "--model", tiny_dir, "--head", tiny_head, "--dtype", "float32",
              "--max-new-tokens", "12", "--json", "--policy", "eagle2", "--top-k", "3", "--depth", "3",
              "--total-tokens", "8", "--draft-vocab", "0"]
    code, out, err = run_cli(capsys, *common, "--device-map", str(path))
    assert code == 0, err
    code, ref, err = run_cli(capsys, *common, "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["text"] == json.loads(ref)["text"]


@pytest.mark.parametrize("value, msg", [
    ("sideways", "expected auto or balanced or a JSON file"),
    ("missing.json", "cannot read missing.json"),
    ("@list", "device_map must be auto, balanced or a non-empty"),
    ("@baddev", "is not a device"),
    ("@notjson", "is not JSON"),
])
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_bad_device_map_values_exit_2_with_one_line(tiny_dir, tmp_path, capsys, command, value, msg):
    files = {"@list": "[1, 2]", "@baddev": '{"model": "gpu:7", "lm_head": "cpu"}', "@notjson": "{model: cpu"}
    if value in files:
        (tmp_path / "m.json").write_text(files[value])
        value = str(tmp_path / "m.json")
    args = (["generate", "--prompt", "hi"] if command == "generate" else
            ["bench", "--questions", str(tmp_path / "q.jsonl")])
    code, out, err = run_cli(capsys, *args, "--model", tiny_dir, "--device-map", value)
    assert code == 2
    assert msg in err and "--device-map" in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_device_and_device_map_are_exclusive(tiny_dir, tmp_path, capsys, command):
    args = (["generate", "--prompt", "hi"] if command == "generate" else
            ["bench", "--questions", str(tmp_path / "q.jsonl")])
    code, out, err = run_cli(capsys, *args, "--model", tiny_dir, "--device", "cpu", "--device-map", "auto")
    assert code == 2
    assert "not allowed with argument --device" in err and err.strip().count("\n") == 0
