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
    """Keep the prefix plus the given tree nodes (indices after the prefix, increasing): the
    rows that move are copied down in place, then the cache is cut after them."""
    moved = [(prefix_len + j, prefix_len + i) for j, i in enumerate(tree_nodes) if i != j]
    if moved:
        dst = torch.tensor([d for d, _ in moved])
        src = torch.tensor([s for _, s in moved])
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            d, s = dst.to(layer.keys.device), src.to(layer.keys.device)
            layer.keys[..., d, :] = layer.keys[..., s, :]
            layer.values[..., d, :] = layer.values[..., s, :]
    truncate(cache, prefix_len + len(tree_nodes))
