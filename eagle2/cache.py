"""The decoder's KV cache, and surgery on it: keep only the accepted path.

After a tree forward the cache holds prefix + every tree node; re-indexing each layer's keys
and values along the sequence axis keeps the prefix plus the accepted nodes, which is exactly
the cache a fresh prefill of the accepted sequence would build (tested).

`new_cache()` is transformers' DynamicCache with one change of storage (`BufferedLayer`): each
layer's keys and values are views of buffers allocated ahead, so a forward writes its new rows
in place instead of concatenating (which copies the whole cache, every layer, every forward),
and cutting the cache back after a verification is a view. Any DynamicCache works with the
surgery below; the decoder and the drafters use `new_cache()`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 256  # rows a buffer starts with; it doubles when full


class BufferedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are prefix views of larger buffers (seq axis -2)."""

    _keys_buf: torch.Tensor | None = None
    _values_buf: torch.Tensor | None = None

    def _holds_view(self) -> bool:
        """Are keys/values still views of the buffers? (Surgery that builds new tensors, e.g.
        keep_positions, makes them plain tensors; the next update copies them back in.)"""
        buf = self._keys_buf
        return (buf is not None and self.keys.data_ptr() == buf.data_ptr() and self.keys.stride() == buf.stride()
                and self.values.data_ptr() == self._values_buf.data_ptr())

    def _move_to_buffers(self, key_states: torch.Tensor, value_states: torch.Tensor, rows: int) -> None:
        """New buffers of at least `rows` rows (at least twice what is held), holding the cache so far."""
        n = self.get_seq_length()
        cap = max(rows, 2 * n, MIN_CAPACITY)
        keys = key_states.new_empty(key_states.shape[:-2] + (cap, key_states.shape[-1]))
        values = value_states.new_empty(value_states.shape[:-2] + (cap, value_states.shape[-1]))
        if n:
            keys[..., :n, :], values[..., :n, :] = self.keys, self.values
        self._keys_buf, self._values_buf = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.get_seq_length(), key_states.shape[-2]
        if self._keys_buf is None or n + m > self._keys_buf.shape[-2] or (n and not self._holds_view()):
            self._move_to_buffers(key_states, value_states, n + m)
        self._keys_buf[..., n:n + m, :] = key_states
        self._values_buf[..., n:n + m, :] = value_states
        self.keys = self._keys_buf[..., :n + m, :]
        self.values = self._values_buf[..., :n + m, :]
        return self.keys, self.values


def new_cache() -> DynamicCache:
    """An empty cache whose layers are BufferedLayer (created as the model first writes them)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = BufferedLayer
    return cache


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
        on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # the indices, sent once to each device
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            dev = layer.keys.device
            if dev not in on:
                on[dev] = (dst.to(dev), src.to(dev))
            d, s = on[dev]
            layer.keys.index_copy_(-2, d, layer.keys.index_select(-2, s))
            layer.values.index_copy_(-2, d, layer.values.index_select(-2, s))
    truncate(cache, prefix_len + len(tree_nodes))
