"""The official EAGLE checkpoint format, and clear errors for heads that do not fit."""

import json

import pytest
import torch

from eagle2.draft import EagleDrafter, load_head
from eagle2.head import EagleHead

from conftest import make_tiny_llama

HID, VOCAB = 64, 96


def official_config(**extra):
    """config.json as EAGLE's released heads write it: LlamaConfig keys plus "bias"."""
    cfg = {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": HID, "initializer_range": 0.02, "intermediate_size": 2 * HID,
        "max_position_embeddings": 512, "model_type": "llama", "num_attention_heads": 4,
        "num_hidden_layers": 1, "num_key_value_heads": 2, "pad_token_id": 0, "rms_norm_eps": 1e-6,
        "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.28.1", "use_cache": True, "vocab_size": VOCAB, "bias": True,
    }
    cfg.update(extra)
    return cfg


def official_state(bias=True, embeddings=True, seed=0):
    """The key names of EAGLE's released pytorch_model.bin (no input_layernorm in layer 0)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    kvd = HID // 4 * 2
    state = {
        "fc.weight": r(HID, 2 * HID),
        "layers.0.self_attn.q_proj.weight": r(HID, HID), "layers.0.self_attn.k_proj.weight": r(kvd, HID),
        "layers.0.self_attn.v_proj.weight": r(kvd, HID), "layers.0.self_attn.o_proj.weight": r(HID, HID),
        "layers.0.mlp.gate_proj.weight": r(2 * HID, HID), "layers.0.mlp.up_proj.weight": r(2 * HID, HID),
        "layers.0.mlp.down_proj.weight": r(HID, 2 * HID), "layers.0.post_attention_layernorm.weight": torch.ones(HID),
    }
    if bias:
        state["fc.bias"] = r(HID)
    if embeddings:
        state["embed_tokens.weight"] = r(VOCAB, HID)
    return state


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("bias", [True, False])
def test_loads_official_format(tmp_path, fmt, bias):
    state = official_state(bias=bias)
    (tmp_path / "config.json").write_text(json.dumps(official_config(bias=bias)))
    if fmt == "bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / "model.safetensors"))
    head = EagleHead.from_pretrained(tmp_path)
    assert head.bias == bias and (head.fc.bias is not None) == bias
    assert torch.equal(head.fc.weight, state["fc.weight"])
    assert torch.equal(head.layers[0].mlp.down_proj.weight, state["layers.0.mlp.down_proj.weight"])
    assert torch.equal(head.embed_tokens.weight, state["embed_tokens.weight"])
    assert isinstance(head.layers[0].input_layernorm, torch.nn.Identity)
    # and it drafts for a target of the same shape
    target = make_tiny_llama(VOCAB, hidden=HID)
    drafter = EagleDrafter(head, target)
    assert drafter.embed is head.embed_tokens  # a head's own embeddings win over the target's
    seq = torch.tensor([5, 6, 7, 8])
    logp = drafter.commit(seq, torch.randn(3, HID))
    assert logp.shape == (VOCAB,) and abs(float(logp.exp().sum()) - 1) < 1e-4


def test_save_and_reload_round_trip(tmp_path):
    target = make_tiny_llama(VOCAB, hidden=HID)
    head = EagleHead.for_target(target.config)
    head.save_pretrained(tmp_path)
    again = EagleHead.from_pretrained(tmp_path)
    for (k, a), b in zip(head.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["bias"] is True and cfg["hidden_size"] == HID


def test_wider_head_keeps_the_official_format(tmp_path):
    target = make_tiny_llama(VOCAB, hidden=HID)
    head = EagleHead.for_target(target.config, intermediate_size=3 * HID)
    head.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["intermediate_size"] == 3 * HID
    again = EagleHead.from_pretrained(tmp_path)
    assert again.layers[0].mlp.gate_proj.weight.shape == (3 * HID, HID)
    with pytest.raises(ValueError, match="intermediate_size"):
        EagleHead.for_target(target.config, intermediate_size=0)


def test_deeper_official_heads_load_and_a_trained_head_grows_without_changing_its_drafts(tmp_path):
    """EAGLE's format allows num_hidden_layers > 1 (layers after the first have an input norm);
    grown() adds layers that start by adding nothing, so a trained head can be deepened."""
    state = official_state(embeddings=False)
    state.update({k.replace("layers.0.", "layers.1."): v.flip(0) for k, v in state.items() if k.startswith("layers.0.")})
    state["layers.1.input_layernorm.weight"] = torch.full((HID,), 0.5)
    (tmp_path / "config.json").write_text(json.dumps(official_config(num_hidden_layers=2)))
    torch.save(state, tmp_path / "pytorch_model.bin")
    two = EagleHead.from_pretrained(tmp_path)
    assert two.num_layers == 2 and isinstance(two.layers[0].input_layernorm, torch.nn.Identity)
    assert torch.equal(two.layers[1].input_layernorm.weight, state["layers.1.input_layernorm.weight"])

    one = EagleHead.from_pretrained(_one_layer_head(tmp_path / "one"))
    three = one.grown(3)
    assert three.num_layers == 3 and three.config.num_hidden_layers == 3
    assert not torch.equal(three.layers[2].self_attn.q_proj.weight, torch.zeros_like(three.layers[2].self_attn.q_proj.weight))
    e, f, pos = torch.randn(1, 5, HID), torch.randn(1, 5, HID), torch.arange(5)[None]
    with torch.no_grad():
        assert torch.equal(one(e, f, pos), three(e, f, pos))
    three.save_pretrained(tmp_path / "three")
    assert json.loads((tmp_path / "three" / "config.json").read_text())["num_hidden_layers"] == 3
    again = EagleHead.from_pretrained(tmp_path / "three")
    for (k, a), b in zip(three.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="cannot grow"):
        three.grown(2)
    (tmp_path / "config.json").write_text(json.dumps(official_config(num_hidden_layers=0)))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        EagleHead.from_pretrained(tmp_path)


def _one_layer_head(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(official_config()))
    torch.save(official_state(embeddings=False), folder / "pytorch_model.bin")
    return folder


def test_head_that_does_not_fit(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(official_config(hidden_size=32, intermediate_size=64)))
    st = {k: v for k, v in official_state(embeddings=False).items()}
    torch.save({k: v[:32, :64] if v.dim() == 2 else v[:32] for k, v in st.items()}, tmp_path / "pytorch_model.bin")
    target = make_tiny_llama(VOCAB, hidden=HID)
    with pytest.raises(ValueError, match="does not fit|do not fit"):
        EagleDrafter(EagleHead.from_pretrained(tmp_path), target)


def test_vocab_mismatch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(official_config(vocab_size=50)))
    torch.save(official_state(embeddings=False), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="vocab"):
        EagleDrafter(EagleHead.from_pretrained(tmp_path), make_tiny_llama(VOCAB, hidden=HID))


@pytest.mark.parametrize("damage, msg", [
    ("no_config", "config.json is missing"), ("bad_json", "not valid JSON"), ("no_weights", "no model.safetensors"),
    ("corrupt_bin", "cannot read weights"), ("corrupt_st", "cannot read weights"), ("wrong_keys", "fc.weight"),
    ("wrong_shapes", "do not fit"),
])
def test_missing_or_corrupt_checkpoint(tmp_path, damage, msg):
    (tmp_path / "config.json").write_text(json.dumps(official_config()))
    torch.save(official_state(), tmp_path / "pytorch_model.bin")
    if damage == "no_config":
        (tmp_path / "config.json").unlink()
    elif damage == "bad_json":
        (tmp_path / "config.json").write_text("{not json")
    elif damage == "no_weights":
        (tmp_path / "pytorch_model.bin").unlink()
    elif damage == "corrupt_bin":
        (tmp_path / "pytorch_model.bin").write_bytes(b"\x00garbage" * 10)
    elif damage == "corrupt_st":
        (tmp_path / "pytorch_model.bin").unlink()
        (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    elif damage == "wrong_keys":
        torch.save({"foo": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    elif damage == "wrong_shapes":
        st = official_state()
        st["layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
        torch.save(st, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=msg):
        EagleHead.from_pretrained(tmp_path)


def test_unsafe_pickle_is_refused(tmp_path):
    """weights_only loading: a checkpoint that smuggles an object is an error, not code execution."""
    (tmp_path / "config.json").write_text(json.dumps(official_config()))
    torch.save({"fc.weight": torch.zeros(1), "evil": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot read weights"):
        EagleHead.from_pretrained(tmp_path)


def test_missing_head_paths(tiny_target, tmp_path):
    with pytest.raises(ValueError, match="no draft head is shipped"):
        load_head("default", tiny_target)
    with pytest.raises(ValueError, match="config.json is missing"):
        load_head(str(tmp_path), tiny_target)


def _write_official(folder, seed, dtype=torch.bfloat16, **cfg):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(official_config(**cfg)))
    save_file({k: v.to(dtype) for k, v in official_state(seed=seed).items()}, str(folder / "model.safetensors"))
    return folder


def test_average_of_heads_is_the_mean_of_their_weights_and_loads(tmp_path):
    from eagle2.head import average_head_folders

    a, b = _write_official(tmp_path / "a", 1), _write_official(tmp_path / "b", 2)
    (b / "token_counts.json").write_text('{"counts": {"5": 3}}')  # picks the draft vocabulary: kept
    info = average_head_folders([a, b], tmp_path / "soup")
    assert info["tensors"] == len(official_state()) and info["sources"] == [str(a), str(b)]
    assert info["counts_from"] == str(b) and (tmp_path / "soup" / "token_counts.json").read_text() == '{"counts": {"5": 3}}'
    from safetensors.torch import load_file

    sa, sb, ss = (load_file(str(p / "model.safetensors")) for p in (a, b, tmp_path / "soup"))
    for k in official_state():
        want = ((sa[k].float() + sb[k].float()) / 2).to(torch.bfloat16)
        assert ss[k].dtype == torch.bfloat16 and torch.equal(ss[k], want), k
    assert not torch.equal(ss["fc.weight"], sa["fc.weight"])  # a real mean, not a copy of one head
    assert json.loads((tmp_path / "soup" / "config.json").read_text()) == official_config()
    soup = EagleHead.from_pretrained(tmp_path / "soup")  # loads as a head like any other
    assert torch.equal(soup.fc.weight.detach(), ss["fc.weight"].float())


def test_average_refuses_heads_of_different_shapes_and_bad_requests(tmp_path):
    from eagle2.head import average_head_folders

    a = _write_official(tmp_path / "a", 1)
    wide = _write_official(tmp_path / "wide", 2, intermediate_size=4 * HID)
    with pytest.raises(ValueError, match="config.json differs.*intermediate_size"):
        average_head_folders([a, wide], tmp_path / "soup")
    with pytest.raises(ValueError, match="at least two"):
        average_head_folders([a], tmp_path / "soup")
    with pytest.raises(ValueError, match="destination"):
        average_head_folders([a, _write_official(tmp_path / "b", 2)], a)
    no_bias = tmp_path / "nobias"
    no_bias.mkdir()
    (no_bias / "config.json").write_text(json.dumps(official_config()))
    torch.save(official_state(bias=False), no_bias / "pytorch_model.bin")
    with pytest.raises(ValueError, match="differ in names"):
        average_head_folders([a, no_bias], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_average_keeps_equal_eagle3_vocab_maps_and_refuses_different_ones(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig

    from eagle2.head import Eagle3Head, average_head_folders

    cfg = LlamaConfig(hidden_size=HID, intermediate_size=2 * HID, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=VOCAB)
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        Eagle3Head(cfg, 32, HID).save_pretrained(tmp_path / name)
    average_head_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "soup")
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert torch.equal(soup["d2t"], load_file(str(tmp_path / "a" / "model.safetensors"))["d2t"])
    state = load_file(str(tmp_path / "b" / "model.safetensors"))
    state["d2t"] = state["d2t"] + 1
    save_file(state, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(ValueError, match="integer buffer d2t"):
        average_head_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "soup2")


def test_average_heads_script_reports_a_bad_request_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    a = _write_official(tmp_path / "a", 1)
    r = subprocess.run([sys.executable, str(root / "scripts" / "average_heads.py"), str(a), str(tmp_path / "missing"),
                        "--out", str(tmp_path / "soup")], capture_output=True, text=True,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "config.json is missing" in r.stderr
    b = _write_official(tmp_path / "b", 2)
    (b / "report.json").write_text(json.dumps({"command": "train b"}))
    r = subprocess.run([sys.executable, str(root / "scripts" / "average_heads.py"), str(a), str(b),
                        "--out", str(tmp_path / "soup")], capture_output=True, text=True,
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "soup" / "report.json").read_text())
    assert report["averaged"] == [str(a), str(b)] and report["source_reports"] == {str(b): {"command": "train b"}}
