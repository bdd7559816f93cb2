"""Linear layers with fp16 weights packed for FBGEMM: the fast CPU path where bf16 is not native.

On CPUs without AVX-512 BF16 (AVX2 only), fp32 matrix products of 2 to 8 rows (a tree verify,
a draft step over the frontier) cost far more than the one-row product (MKL switches from its
matrix-vector kernel to a packing GEMM), and bf16 weights, emulated there, grow with every row.
Both make speculation pay little on such a machine. FBGEMM's fp16-weight kernel keeps fp32
activations and fp32 accumulation, reads half the bytes of fp32 weights, and stays nearly flat
from one row to eight: the target runs faster token by token and a tree verify costs little more
than a one-token forward (docs/benchmarks.md has the measurements).

`--dtype fp16-weights` asks for it; `--dtype auto` chooses it on CPUs without native bf16 where
FBGEMM runs, and on CPUs with native bf16 where a probe of the target's layer shapes finds it
faster than bf16 (eagle2.precision: true of some AVX-512 BF16 CPUs too). The model keeps its
fp32 parameters (`weight` stays the same tensor, so tied embeddings, shapes and the reduced draft
vocabulary's rows still read it); the packed copy is what the forward multiplies with. Weights
are rounded to fp16 once, like `--dtype bfloat16` rounds them to bf16 (fp16 keeps 3 more
mantissa bits).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

FP16_WEIGHTS = "fp16-weights"


@functools.cache
def fbgemm_fp16_available() -> bool:
    """Whether this PyTorch build and CPU run FBGEMM's fp16-weight linear (x86 with AVX2)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
        out = torch.ops.quantized.linear_dynamic_fp16(torch.ones(2, 8), packed)
        return bool(torch.all(out == 8.0))
    except (RuntimeError, AttributeError):
        return False


def prepack(weight: torch.Tensor, bias: torch.Tensor | None = None):
    """FBGEMM's packed fp16 copy of a (out, in) weight (and its fp32 bias)."""
    if weight.device.type != "cpu":
        raise ValueError(f"fp16-packed weights are a CPU path; this weight is on {weight.device}")
    return torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(),
                                                   None if bias is None else bias.detach().float())


def packed_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """x @ weight.T (+ bias) with the packed fp16 weight; fp32 in and out, any leading dims."""
    if x.dim() == 1:
        return torch.ops.quantized.linear_dynamic_fp16(x[None], packed)[0]
    return torch.ops.quantized.linear_dynamic_fp16(x, packed)


class Fp16WeightLinear(nn.Module):
    """An nn.Linear whose forward multiplies with an fp16 copy of its weight packed for FBGEMM.
    `weight` and `bias` stay the original parameters: read by whoever needs rows or shapes, and
    multiplied with only when a gradient must flow through (training a head on this target)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.packed = prepack(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.numel() == 0:  # a gradient to pass (training a head on this target's outputs:
            # the packed kernel has no backward), or no rows
            return nn.functional.linear(x, self.weight, self.bias)
        return packed_linear(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp16 (FBGEMM)"


def pack_fp16_weights(module: nn.Module) -> int:
    """Replace every nn.Linear inside `module` (fp32, on the CPU) by an Fp16WeightLinear, in
    place; returns how many."""
    if not fbgemm_fp16_available():
        raise ValueError("fp16-weights needs PyTorch's FBGEMM on an x86 CPU with AVX2; use --dtype float32")
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if child.weight.dtype != torch.float32:
                    raise ValueError(f"fp16-weights packs fp32 layers; {name} is {child.weight.dtype}")
                setattr(parent, name, Fp16WeightLinear(child))
                count += 1
    return count


def has_packed_weights(module: nn.Module) -> bool:
    return any(isinstance(m, Fp16WeightLinear) for m in module.modules())
