"""KV-cache surgery on transformers' DynamicCache: keep only the accepted path.

After a tree forward the cache holds prefix + every tree node; re-indexing each layer's keys
and values along the sequence axis keeps the prefix plus the accepted nodes, which is exactly
the cache a fresh prefill of the accepted sequence would build (tested).
"""

from __future__ import annotations

import torch


def cache_length(cache) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0


def keep_positions(cache, index: torch.Tensor) -> None:
    """Keep the cache entries at `index` (1D, sequence positions), in that order."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


def truncate(cache, length: int) -> None:
    """Drop everything after the first `length` positions."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def keep_prefix_and(cache, prefix_len: int, tree_nodes: list[int]) -> None:
    """Keep the prefix plus the given tree nodes (indices after the prefix)."""
    if tree_nodes == list(range(len(tree_nodes))):
        truncate(cache, prefix_len + len(tree_nodes))
        return
    index = torch.cat([torch.arange(prefix_len), prefix_len + torch.tensor(tree_nodes, dtype=torch.long)])
    keep_positions(cache, index)
