"""Draft heads in the official EAGLE formats: EAGLE-1 (reused unchanged by EAGLE-2) and EAGLE-3.

    feature_{i+1} ≈ layer( fc( concat(embed(token_{i+1}), feature_i) ) )

`fc` maps the concatenation back to the hidden size, one Llama decoder layer (without its
input RMSNorm, as in EAGLE) mixes it with the past, and the target's own `lm_head` turns the
predicted feature into next-token logits. The layer is the library's `LlamaDecoderLayer`, not a
copy. Checkpoints use the official EAGLE format: `config.json` (LlamaConfig keys plus an
optional `"bias"`, default true) and `model.safetensors` or `pytorch_model.bin` with keys
`fc.weight`, `fc.bias`, `layers.0.*` and optionally `embed_tokens.weight`. The format allows
`num_hidden_layers` > 1 (EAGLE's code builds that many layers): `layers.1.*` onwards each have
an `input_layernorm`; released heads have one layer.

EAGLE-3 (`Eagle3Head`) drafts from a fusion of three target layers and has its own output
vocabulary:

    h_0     = fc( concat(x_low, x_mid, x_high) )       the hidden states entering target layers
                                                       2, n/2 and n-3 (3·H → H, no bias)
    h_{k+1} = layer( norm(embed(token)), norm(h_k) )   attention reads both (2·H wide); the
                                                       residual stream is h_k
    logits  = lm_head( norm(h) )                       over a draft vocabulary of N tokens;
                                                       draft id d is target id d + d2t[d]

After the first step the head feeds back its own output h (no fc). Checkpoint keys: `fc.weight`,
`midlayer.{hidden_norm,input_layernorm,self_attn.*,post_attention_layernorm,mlp.*}`,
`norm.weight`, `lm_head.weight`, buffers `d2t`, `t2d`; config.json carries `draft_vocab_size`
and optionally `target_hidden_size`. The embedding is the target's. `load_head_folder` tells
the two formats apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
)

EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"
HEAD_KIND_LABELS = {"eagle1": "EAGLE-1/2 head", "eagle3": "EAGLE-3 head"}
HEAD_CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "max_position_embeddings",
    "vocab_size", "hidden_act", "attention_bias", "mlp_bias", "pad_token_id", "bos_token_id",
    "eos_token_id",
)


def causal_mask(q_len: int, past: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive (1, 1, q_len, past + q_len) mask: 0 = attend, finfo.min = blocked."""
    kv = past + q_len
    allowed = torch.ones(q_len, kv, dtype=torch.bool, device=device).tril(diagonal=past)
    mask = torch.zeros(q_len, kv, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


class EagleHead(nn.Module):
    """fc over concat(token embedding, target feature) → one decoder layer → predicted feature."""

    kind = "eagle1"  # the EAGLE-1/2 checkpoint format

    def __init__(self, config: LlamaConfig, bias: bool = True, with_embeddings: bool = False, num_layers: int = 1):
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"an EAGLE head needs at least one decoder layer, got num_layers={num_layers!r}")
        config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": num_layers})
        config._attn_implementation = "sdpa"
        self.config = config
        self.bias = bias
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=bias)
        layers = [LlamaDecoderLayer(config, layer_idx=i) for i in range(num_layers)]
        layers[0].input_layernorm = nn.Identity()  # EAGLE's first layer has no input norm; later ones do
        self.layers = nn.ModuleList(layers)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, h) if with_embeddings else None

    @classmethod
    def for_target(cls, target_config, bias: bool = True, intermediate_size: int | None = None,
                   num_layers: int = 1) -> "EagleHead":
        """A fresh head shaped for a target model's config (Llama, Qwen2, Mistral).

        intermediate_size widens (or narrows) the layer's MLP; None keeps the target's. Width and
        num_layers are recorded in config.json, so the head stays in the official EAGLE format.
        """
        cfg = target_config.to_dict()
        keep = {k: cfg[k] for k in HEAD_CONFIG_KEYS if k in cfg and cfg[k] is not None}
        keep.setdefault("head_dim", target_config.hidden_size // target_config.num_attention_heads)
        if intermediate_size is not None:
            if not isinstance(intermediate_size, int) or intermediate_size < 1:
                raise ValueError(f"intermediate_size must be a positive int, got {intermediate_size!r}")
            keep["intermediate_size"] = intermediate_size
        return cls(LlamaConfig(**keep), bias=bias, num_layers=num_layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def grown(self, num_layers: int) -> "EagleHead":
        """A copy with `num_layers` decoder layers that drafts exactly as this head does.

        Each added layer starts as a copy of the last one (with a fresh input norm) whose output
        projections (o_proj, down_proj) are zero, so it adds nothing to the residual stream until
        training moves them: a trained head can grow deeper without losing what it learnt.
        """
        if not isinstance(num_layers, int) or num_layers < self.num_layers:
            raise ValueError(f"a head with {self.num_layers} layers cannot grow to {num_layers!r}")
        bigger = type(self)(self.config, bias=self.bias, with_embeddings=self.embed_tokens is not None,
                            num_layers=num_layers)
        bigger = bigger.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        own = self.state_dict()
        last = f"layers.{self.num_layers - 1}."
        state = dict(own)
        for i in range(self.num_layers, num_layers):
            for k, v in own.items():
                if k.startswith(last) and "input_layernorm" not in k:
                    zero = k.endswith(("o_proj.weight", "o_proj.bias", "down_proj.weight", "down_proj.bias"))
                    state[f"layers.{i}." + k[len(last):]] = torch.zeros_like(v) if zero else v.clone()
            state[f"layers.{i}.input_layernorm.weight"] = bigger.layers[i].input_layernorm.weight.detach().clone()
        bigger.load_state_dict(state)
        return bigger

    def feature_layers(self, num_layers: int) -> None:
        """EAGLE-1/2 heads read the target's last hidden state (after its final norm)."""
        return None

    def forward(
        self,
        input_embeds: torch.Tensor,
        features: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """(B, T, H) embeddings of token_{i+1} and features_i → (B, T, H) predicted features_{i+1}.

        attention_mask: additive 4D (B or 1, 1, T, past + T); None means causal over the cache.
        """
        x = self.fc(torch.cat((input_embeds, features.to(input_embeds.dtype)), dim=-1))
        if attention_mask is None:
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = causal_mask(x.shape[1], past, x.dtype, x.device)
        pos_emb = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                      use_cache=cache is not None, position_embeddings=pos_emb)
        return x

    # ---- official EAGLE checkpoint format -------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        cfg = {k: v for k, v in self.config.to_dict().items() if k in HEAD_CONFIG_KEYS or k == "num_hidden_layers"}
        cfg.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bias": self.bias})
        state = {k: v.detach().to(dtype or v.dtype) for k, v in self.state_dict().items()
                 if not k.startswith("rotary_emb.")}
        write_head_files(folder, cfg, state)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "EagleHead":
        """Load config.json + model.safetensors (or pytorch_model.bin, weights only)."""
        folder = Path(folder)
        raw = read_head_config(folder)
        bias = bool(raw.pop("bias", True))
        state = _load_state(folder)
        if "fc.weight" not in state:
            raise ValueError(f"draft head {folder}: checkpoint has no fc.weight (not an EAGLE head?)")
        try:
            config = LlamaConfig(**{k: v for k, v in raw.items() if k in HEAD_CONFIG_KEYS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"draft head {folder}: bad config.json ({e})") from None
        layers = raw.get("num_hidden_layers", 1)
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"draft head {folder}: config.json num_hidden_layers must be a positive int, "
                             f"got {layers!r}")
        head = cls(config, bias=bias, with_embeddings="embed_tokens.weight" in state, num_layers=layers)
        state = {k: v for k, v in state.items() if not k.startswith("rotary_emb.")
                 and k != "layers.0.input_layernorm.weight"}  # the first layer has none (some checkpoints keep one)
        _load_into(head, state, folder)
        return head


def eagle3_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """Indices into a target's `hidden_states` (entry i = the input of layer i): the official
    EAGLE-3 code fuses the states entering layers 2, n/2 and n-3."""
    return (2, num_layers // 2, num_layers - 3)


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: attention over concat(norm(embedding), norm(hidden)), 2·H wide;
    the residual stream is the hidden state. Built from the library's Llama modules."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.hidden_norm = LlamaRMSNorm(h, eps=eps)
        self.input_layernorm = LlamaRMSNorm(h, eps=eps)
        attn = LlamaAttention(config, layer_idx=0)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attn, name)
            setattr(attn, name, nn.Linear(2 * h, old.out_features, bias=old.bias is not None))
        self.self_attn = attn
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=eps)
        self.mlp = LlamaMLP(config)

    def forward(self, embeds, hidden, position_embeddings, attention_mask, cache=None):
        x = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        hidden = hidden + self.self_attn(x, position_embeddings=position_embeddings,
                                         attention_mask=attention_mask, cache=cache)[0]
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Head(nn.Module):
    """EAGLE-3: three fused target layers in, its own draft-vocabulary lm_head out."""

    kind = "eagle3"

    def __init__(self, config: LlamaConfig, draft_vocab_size: int, target_hidden_size: int | None = None,
                 with_embeddings: bool = False):
        super().__init__()
        config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 1})
        config._attn_implementation = "sdpa"
        self.config = config
        h = config.hidden_size
        self.draft_vocab_size = int(draft_vocab_size)
        self.target_hidden_size = int(target_hidden_size or h)
        self.fc = nn.Linear(3 * self.target_hidden_size, h, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(h, self.draft_vocab_size, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, h) if with_embeddings else None
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))

    @classmethod
    def for_target(cls, target_config, draft_ids, target_model=None) -> "Eagle3Head":
        """A fresh head for a target; `draft_ids` are the target token ids it can propose. With
        `target_model`, the output norm and lm_head rows start as the target's own."""
        cfg = target_config.to_dict()
        keep = {k: cfg[k] for k in HEAD_CONFIG_KEYS if k in cfg and cfg[k] is not None}
        keep.setdefault("head_dim", target_config.hidden_size // target_config.num_attention_heads)
        ids = torch.as_tensor(sorted({int(t) for t in draft_ids}), dtype=torch.long)
        if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= target_config.vocab_size:
            raise ValueError(f"draft_ids must be non-empty ids in [0, {target_config.vocab_size})")
        head = cls(LlamaConfig(**keep), draft_vocab_size=ids.numel())
        head.set_draft_vocab(ids)
        if target_model is not None:
            with torch.no_grad():
                head.lm_head.weight.copy_(target_model.lm_head.weight[ids.to(target_model.lm_head.weight.device)])
                head.norm.weight.copy_(target_model.model.norm.weight)
        return head

    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        ids = ids.to(self.d2t.device)
        self.d2t.copy_(ids - torch.arange(ids.numel(), device=ids.device))
        self.t2d.zero_()
        self.t2d[ids] = True

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def draft_ids(self) -> torch.Tensor:
        """Target token id of each draft-vocabulary entry."""
        return self.d2t + torch.arange(self.draft_vocab_size, device=self.d2t.device)

    def feature_layers(self, num_layers: int) -> tuple[int, int, int]:
        return eagle3_feature_layers(num_layers)

    def forward(self, input_embeds, features, position_ids, attention_mask=None, cache=None) -> torch.Tensor:
        """(B, T, H) token embeddings and either fused target features (B, T, 3·H_target) or the
        head's own earlier outputs (B, T, H) → (B, T, H) hidden states (before `norm`)."""
        h = features.to(input_embeds.dtype)
        if h.shape[-1] != self.hidden_size:
            h = self.fc(h)
        if attention_mask is None:
            past = cache.get_seq_length() if cache is not None else 0
            attention_mask = causal_mask(h.shape[1], past, h.dtype, h.device)
        pos_emb = self.rotary_emb(h, position_ids)
        return self.midlayer(input_embeds, h, pos_emb, attention_mask, cache)

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (in draft-id order)."""
        return self.lm_head(self.norm(hidden))

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        cfg = {k: v for k, v in self.config.to_dict().items() if k in HEAD_CONFIG_KEYS or k == "num_hidden_layers"}
        cfg.update({"architectures": [EAGLE3_ARCHITECTURE], "model_type": "llama",
                    "draft_vocab_size": self.draft_vocab_size, "target_hidden_size": self.target_hidden_size})
        state = {k: v.detach().to(dtype or v.dtype) if v.is_floating_point() else v
                 for k, v in self.state_dict().items() if not k.startswith("rotary_emb.")}
        write_head_files(folder, cfg, state)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "Eagle3Head":
        folder = Path(folder)
        raw = read_head_config(folder)
        state = _load_state(folder)
        if "draft_vocab_size" not in raw:
            raise ValueError(f"draft head {folder}: config.json has no draft_vocab_size (not an EAGLE-3 head?)")
        for key in ("fc.weight", "lm_head.weight", "d2t"):
            if key not in state:
                raise ValueError(f"draft head {folder}: EAGLE-3 checkpoint has no {key}")
        try:
            config = LlamaConfig(**{k: v for k, v in raw.items() if k in HEAD_CONFIG_KEYS})
            head = cls(config, raw["draft_vocab_size"], raw.get("target_hidden_size"),
                       with_embeddings="embed_tokens.weight" in state)
        except (TypeError, ValueError) as e:
            raise ValueError(f"draft head {folder}: bad config.json ({e})") from None
        if "t2d" not in state:  # derivable from d2t
            t2d = torch.zeros(head.config.vocab_size, dtype=torch.bool)
            t2d[state["d2t"].long() + torch.arange(state["d2t"].numel())] = True
            state["t2d"] = t2d
        state = {k: v for k, v in state.items() if not k.startswith("rotary_emb.")}
        state["d2t"], state["t2d"] = state["d2t"].long(), state["t2d"].bool()
        _load_into(head, state, folder)
        return head


def read_head_config(folder: str | os.PathLike) -> dict:
    """A head folder's config.json as a dict, or a one-line ValueError."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"draft head {folder}: config.json is missing")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"draft head {folder}: config.json is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"draft head {folder}: config.json is not a JSON object")
    return raw


def _load_into(head: nn.Module, state: dict, folder: Path) -> None:
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"draft head {folder}: weights do not fit config.json ({str(e).splitlines()[-1].strip()[:160]})") from None
    missing = [k for k in missing if not k.startswith("rotary_emb.")]
    if missing or unexpected:
        raise ValueError(f"draft head {folder}: checkpoint does not match its config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def config_head_kind(raw: dict) -> str:
    """"eagle3" for an EAGLE-3 config.json (its architecture name or draft_vocab_size), else "eagle1"."""
    archs = raw.get("architectures") or []
    if "draft_vocab_size" in raw or any("eagle3" in str(a).lower() for a in archs):
        return "eagle3"
    return "eagle1"


def head_kind(folder: str | os.PathLike) -> str:
    """The checkpoint format of a head folder: "eagle1" (EAGLE-1/2) or "eagle3"."""
    return config_head_kind(read_head_config(Path(folder)))


def load_head_folder(folder: str | os.PathLike) -> "EagleHead | Eagle3Head":
    """Load either official format from a folder, telling them apart by config.json."""
    cls = Eagle3Head if head_kind(folder) == "eagle3" else EagleHead
    return cls.from_pretrained(folder)


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    st, binf = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st.exists():
            from safetensors.torch import load_file

            return load_file(str(st))
        if binf.exists():
            return torch.load(str(binf), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types; report one line
        raise ValueError(f"draft head {folder}: cannot read weights ({type(e).__name__}: {str(e)[:120]})") from None
    raise ValueError(f"draft head {folder}: no model.safetensors or pytorch_model.bin")


def write_head_files(folder: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write a head folder in the official layout: config.json and model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def average_head_folders(folders: list[str | os.PathLike], dest: str | os.PathLike) -> dict:
    """Write the element-wise mean of several heads' weights to `dest` (a weight "soup").

    Why: two runs continued from one head end close to each other, and the mean of their weights
    can score above both (as in stochastic weight averaging and model soups) with no training.
    The heads must share one config.json (kind, shapes, draft vocabulary); integer buffers (an
    EAGLE-3 head's d2t / t2d) must be equal. Weights keep their dtype; the mean is taken in fp32.
    Returns {"sources", "tensors", "parameters", "counts_from"}; `dest` gets config.json,
    model.safetensors and the token_counts.json (the draft-vocabulary counts) of the first source
    that has one.
    """
    import shutil

    from .vocab import COUNTS_FILE

    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError("averaging needs at least two head folders")
    dest = Path(dest)
    if any(dest.resolve() == f.resolve() for f in folders):
        raise ValueError(f"the destination {dest} is one of the heads being averaged; write elsewhere")
    configs = [read_head_config(f) for f in folders]
    for f, cfg in zip(folders[1:], configs[1:]):
        if cfg != configs[0]:
            diff = sorted(k for k in set(cfg) | set(configs[0]) if cfg.get(k) != configs[0].get(k))
            raise ValueError(f"draft head {f}: config.json differs from {folders[0]}'s ({', '.join(diff[:4])}); "
                             "only heads of one shape can be averaged")
    states = [_load_state(f) for f in folders]
    first = states[0]
    for f, state in zip(folders[1:], states[1:]):
        if state.keys() != first.keys():
            odd = sorted(set(state) ^ set(first))[:3]
            raise ValueError(f"draft head {f}: weights differ in names from {folders[0]}'s ({odd})")
        bad = next((k for k in first if state[k].shape != first[k].shape), None)
        if bad is not None:
            raise ValueError(f"draft head {f}: {bad} has shape {tuple(state[bad].shape)}, not {tuple(first[bad].shape)}")
    mean: dict[str, torch.Tensor] = {}
    for key, ref in first.items():
        if not ref.is_floating_point():  # index maps (d2t / t2d) are kept, never averaged
            if any(not torch.equal(s[key], ref) for s in states[1:]):
                raise ValueError(f"draft heads differ in the integer buffer {key} (different draft vocabularies?)")
            mean[key] = ref
            continue
        mean[key] = torch.stack([s[key].float() for s in states]).mean(0).to(ref.dtype)
    write_head_files(dest, configs[0], mean)
    # The answer-token counts pick the reduced draft vocabulary that auto drafting uses; without
    # them a head drafts over the full vocabulary (slower, other trees), so the soup keeps them.
    counts_from = next((f for f in folders if (f / COUNTS_FILE).exists()), None)
    if counts_from is not None:
        shutil.copyfile(counts_from / COUNTS_FILE, dest / COUNTS_FILE)
    return {"sources": [str(f) for f in folders], "tensors": len(mean),
            "parameters": sum(v.numel() for v in mean.values()),
            "counts_from": None if counts_from is None else str(counts_from)}
