"""RMSNorm as one call: the same numbers as transformers' norm, with less per-call overhead on CPUs.

A decode step of a small model is a long run of small ops, and on a CPU each op costs a few
microseconds of dispatch whatever its size. transformers' Llama-family RMSNorm is six of them
(cast, pow, mean, add, rsqrt, two multiplies), twice per layer plus the final norm: 61 norms a
forward in SmolLM2-135M. torch's `F.rms_norm` does the same work in one call. In fp32 it gives
bit-identical results (tested on the norms' own inputs, every shape the decoder uses), so a
target whose activations are fp32 (`--dtype float32`, `--dtype fp16-weights`) on a CPU gets its
norms swapped at load time (`fuse_rms_norms`), like its linear layers get fp16-packed weights
(eagle2.packed). Other dtypes keep the library's norm, whose casts round differently.

The swapped module keeps the norm's own `weight` parameter (state dict, tied names and shapes
unchanged).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# transformers' norms that compute weight * (x / sqrt(mean(x²) + eps)) in fp32 (not Gemma's 1 + weight)
RMS_NORM_CLASSES = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")


class OneCallRMSNorm(nn.Module):
    """A Llama-family RMSNorm computed by `F.rms_norm` (fp32 inputs; others fall back to the
    library's formula, cast for cast)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.library_class = type(norm)  # what it replaced (an A/B can put it back)
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self.normalized_shape = tuple(norm.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.normalized_shape, self.weight, self.variance_epsilon)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.variance_epsilon}, one call"


def swap_modules(module: nn.Module, make) -> int:
    """Replace, in place, every submodule `m` of `module` for which make(m) returns a module; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def fuse_rms_norms(module: nn.Module) -> int:
    """Swap every Llama-family RMSNorm inside `module` whose weight is fp32 on a CPU for an
    OneCallRMSNorm, in place; returns how many."""
    def make(child):
        weight = getattr(child, "weight", None)
        if (type(child).__name__ in RMS_NORM_CLASSES and isinstance(weight, torch.Tensor)
                and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and hasattr(child, "variance_epsilon")):
            return OneCallRMSNorm(child)
        return None

    return swap_modules(module, make)


def has_one_call_norms(module: nn.Module) -> bool:
    return any(isinstance(m, OneCallRMSNorm) for m in module.modules())
