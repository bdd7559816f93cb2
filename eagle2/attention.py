"""Tree attention for grouped-query models without copying the cache to every query head.

A tree verification (and a drafter's tree step) is a query of several tokens under an explicit
mask. For that case transformers' "sdpa" attention copies each layer's whole key/value cache
to every query head (`repeat_kv`) when the model groups its key/value heads (SmolLM2: 9 query
heads share 3), while a one-token decode step avoids the copy. torch's SDPA reads shared heads
itself (`enable_gqa`): the same attention without the copy. On CPUs only: on CUDA a masked
`enable_gqa` call may leave the fused kernels for the math one, which this code has not measured.

`TREE_SDPA` is that attention registered with transformers' AttentionInterface (and sdpa's
mask builder under the same name); every other call goes to the library's sdpa attention
unchanged. `use_tree_attention(model)` switches a model (and its sub-configs) that uses
"sdpa" to it; models on other attention implementations are left alone.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TREE_SDPA = "eagle2_tree_sdpa"


def tree_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(B, H, q, d) query over (B, H_kv, kv, d) keys/values; returns (B, q, H, d), like sdpa's."""
    tree_query = query.shape[2] > 1 and attention_mask is not None and query.device.type == "cpu"
    if (tree_query and getattr(module, "num_key_value_groups", 1) > 1 and dropout == 0.0
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(TREE_SDPA, tree_sdpa_attention)
AttentionMaskInterface.register(TREE_SDPA, sdpa_mask)


def set_attention(module: torch.nn.Module, impl: str, only_from: str | None = None) -> None:
    """Put the configs under `module` on attention `impl` (only those now on `only_from`, if given)."""
    seen = set()
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            continue
        seen.add(id(cfg))
        if only_from is None or cfg._attn_implementation == only_from:
            cfg._attn_implementation = impl


def use_tree_attention(module: torch.nn.Module) -> None:
    """Switch the configs under `module` that use "sdpa" to TREE_SDPA (others are kept)."""
    set_attention(module, TREE_SDPA, only_from="sdpa")
