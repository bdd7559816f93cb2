"""The EAGLE draft head (EAGLE-1 architecture, reused unchanged by EAGLE-2).

    feature_{i+1} ≈ layer( fc( concat(embed(token_{i+1}), feature_i) ) )

`fc` maps the concatenation back to the hidden size, one Llama decoder layer (without its
input RMSNorm, as in EAGLE) mixes it with the past, and the target's own `lm_head` turns the
predicted feature into next-token logits. The layer is the library's `LlamaDecoderLayer`, not a
copy. Checkpoints use the official EAGLE format: `config.json` (LlamaConfig keys plus an
optional `"bias"`, default true) and `model.safetensors` or `pytorch_model.bin` with keys
`fc.weight`, `fc.bias`, `layers.0.*` and optionally `embed_tokens.weight`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

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

    def __init__(self, config: LlamaConfig, bias: bool = True, with_embeddings: bool = False):
        super().__init__()
        config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 1})
        config._attn_implementation = "sdpa"
        self.config = config
        self.bias = bias
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=bias)
        layer = LlamaDecoderLayer(config, layer_idx=0)
        layer.input_layernorm = nn.Identity()  # EAGLE's first (only) layer has no input norm
        self.layers = nn.ModuleList([layer])
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, h) if with_embeddings else None

    @classmethod
    def for_target(cls, target_config, bias: bool = True, intermediate_size: int | None = None) -> "EagleHead":
        """A fresh head shaped for a target model's config (Llama, Qwen2, Mistral).

        intermediate_size widens (or narrows) the layer's MLP; None keeps the target's. The
        width is recorded in config.json, so the head stays in the official EAGLE format.
        """
        cfg = target_config.to_dict()
        keep = {k: cfg[k] for k in HEAD_CONFIG_KEYS if k in cfg and cfg[k] is not None}
        keep.setdefault("head_dim", target_config.hidden_size // target_config.num_attention_heads)
        if intermediate_size is not None:
            if not isinstance(intermediate_size, int) or intermediate_size < 1:
                raise ValueError(f"intermediate_size must be a positive int, got {intermediate_size!r}")
            keep["intermediate_size"] = intermediate_size
        return cls(LlamaConfig(**keep), bias=bias)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

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
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in self.config.to_dict().items() if k in HEAD_CONFIG_KEYS or k == "num_hidden_layers"}
        cfg.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bias": self.bias})
        (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()
                 if not k.startswith("rotary_emb.")}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "EagleHead":
        """Load config.json + model.safetensors (or pytorch_model.bin, weights only)."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.exists():
            raise ValueError(f"draft head {folder}: config.json is missing")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"draft head {folder}: config.json is not valid JSON ({e})") from None
        bias = bool(raw.pop("bias", True))
        state = _load_state(folder)
        if "fc.weight" not in state:
            raise ValueError(f"draft head {folder}: checkpoint has no fc.weight (not an EAGLE head?)")
        try:
            config = LlamaConfig(**{k: v for k, v in raw.items() if k in HEAD_CONFIG_KEYS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"draft head {folder}: bad config.json ({e})") from None
        head = cls(config, bias=bias, with_embeddings="embed_tokens.weight" in state)
        state = {k: v for k, v in state.items() if not k.startswith("rotary_emb.")
                 and not k.endswith("input_layernorm.weight")}
        try:
            missing, unexpected = head.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"draft head {folder}: weights do not fit config.json ({str(e).splitlines()[-1].strip()[:160]})") from None
        missing = [k for k in missing if not k.startswith("rotary_emb.")]
        if missing or unexpected:
            raise ValueError(f"draft head {folder}: checkpoint does not match its config "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return head


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
