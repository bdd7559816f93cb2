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

Sibling layers that read the same input (an attention's q/k/v projections, an MLP's gate/up
projections) share one packed product over their stacked weights: one FBGEMM call instead of
three or two, with the same numbers (each output column is the same dot product), and the
transformers modules left as they are (`SharedInputProduct`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .norms import swap_modules

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


class SharedInputProduct:
    """One packed product for sibling layers that read the same input (q/k/v, gate/up).

    The module code calls each sibling in turn with the same tensor; the first call multiplies x
    by the stacked weights and keeps the other siblings' slices until they ask for them with that
    same tensor object. A call with any other input, or a second call for a slice already handed
    out, multiplies again, so a caller that does not follow the pattern gets correct (only not
    cheaper) results.
    """

    def __init__(self, layers: list["Fp16WeightLinear"]):
        biases = [l.bias for l in layers]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach().float() if b is not None else torch.zeros(l.out_features)
                              for b, l in zip(biases, layers)])
        self.packed = prepack(torch.cat([l.weight.detach().float() for l in layers]), bias)
        self.sizes = [l.out_features for l in layers]
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor | None] = []
        self._unserved = 0  # slices of _outputs not handed out yet

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._outputs[index] is None:
            self._outputs = list(packed_linear(x, self.packed).split(self.sizes, dim=-1))
            self._input, self._unserved = x, len(self.sizes)
        out, self._outputs[index] = self._outputs[index], None
        self._unserved -= 1
        if not self._unserved:
            self._input, self._outputs = None, []  # every sibling served: hold no tensors
        return out


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
        self.shared: tuple[SharedInputProduct, int] | None = None  # (the siblings' product, this one's slice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.numel() == 0:  # a gradient to pass (training a head on this target's outputs:
            # the packed kernel has no backward), or no rows
            return nn.functional.linear(x, self.weight, self.bias)
        if self.shared is not None:
            product, index = self.shared
            return product.output(index, x)
        return packed_linear(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp16 (FBGEMM)"


# Sibling layers that transformers' attention and MLP modules (Llama, Qwen2, Mistral, the EAGLE
# heads' layers) call one after the other with the same input.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def share_input_products(module: nn.Module) -> int:
    """Give each group of packed siblings in SHARED_INPUT_GROUPS one product; returns how many groups."""
    count = 0
    for parent in module.modules():
        for names in SHARED_INPUT_GROUPS:
            layers = [getattr(parent, n, None) for n in names]
            if not all(isinstance(l, Fp16WeightLinear) for l in layers):
                continue
            if len({l.in_features for l in layers}) != 1:
                continue
            product = SharedInputProduct(layers)
            for i, layer in enumerate(layers):
                layer.shared, layer.packed = (product, i), None  # the product replaces each own copy
            count += 1
    return count


def pack_fp16_weights(module: nn.Module) -> int:
    """Replace every nn.Linear inside `module` (fp32, on the CPU) by an Fp16WeightLinear, in
    place, with shared products for siblings that read the same input; returns how many layers."""
    if not fbgemm_fp16_available():
        raise ValueError("fp16-weights needs PyTorch's FBGEMM on an x86 CPU with AVX2; use --dtype float32")
    for name, layer in module.named_modules():  # checked before any layer is swapped
        if type(layer) is nn.Linear and layer.weight.dtype != torch.float32:
            raise ValueError(f"fp16-weights packs fp32 layers; {name} is {layer.weight.dtype}")
    count = swap_modules(module, lambda child: Fp16WeightLinear(child) if type(child) is nn.Linear else None)
    share_input_products(module)
    return count


def has_packed_weights(module: nn.Module) -> bool:
    return any(isinstance(m, Fp16WeightLinear) for m in module.modules())


def has_shared_products(module: nn.Module) -> bool:
    return any(isinstance(m, Fp16WeightLinear) and m.shared is not None for m in module.modules())
