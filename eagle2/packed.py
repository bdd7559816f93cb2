"""Linear layers with weights packed once for a CPU kernel: the fast CPU paths of a decode step and
a tree verify, whose products have one to a few dozen rows.

**fp16 weights for FBGEMM** (`--dtype fp16-weights`), where bf16 is not native. On CPUs without
AVX-512 BF16 (AVX2 only), fp32 matrix products of 2 to 8 rows (a tree verify, a draft step over
the frontier) cost far more than the one-row product (MKL switches from its matrix-vector kernel
to a packing GEMM), and bf16 weights, emulated there, grow with every row. FBGEMM's fp16-weight
kernel keeps fp32 activations and fp32 accumulation, reads half the bytes of fp32 weights, and
stays nearly flat from one row to eight. `--dtype auto` chooses it on CPUs without native bf16
where FBGEMM runs, and on CPUs with native bf16 where a probe of the target's layer shapes finds
it faster than bf16 (eagle2.precision). Weights are rounded to fp16 once, like `--dtype bfloat16`
rounds them to bf16 (fp16 keeps 3 more mantissa bits).

**bf16 weights for oneDNN**, under `--dtype bfloat16` on a CPU whose oneDNN runs bf16 (AVX-512
BF16, AMX). A plain bf16 `F.linear` there reorders the weight into oneDNN's blocked layout at
every call, which costs more than the product itself at a few rows; reordered once, the products
give the same numbers (tested bit for bit) in less time, and on AMX a product of 32 rows costs
little more than one of a single row.

Either way the model keeps its parameters (`weight` stays the same tensor, so tied embeddings,
shapes and the reduced draft vocabulary's rows still read it); the packed copy is what the
forward multiplies with. Sibling layers that read the same input (an attention's q/k/v
projections, an MLP's gate/up projections) share one packed product over their stacked weights:
one kernel call instead of three or two, with the same numbers (each output column is the same
dot product), and the transformers modules left as they are (`SharedInputProduct`).
docs/benchmarks.md has the measurements.
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


@functools.cache
def onednn_bf16_available() -> bool:
    """Whether this PyTorch build and CPU run oneDNN's bf16 linear on a prepacked weight
    (AVX-512 BF16 or AMX; the kernel Inductor's CPU freezing uses)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=torch.bfloat16), 1)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=torch.bfloat16), w, None, "none", [], "")
        return bool(torch.all(out == 8.0))
    except (RuntimeError, AttributeError):
        return False


def _check_cpu(weight: torch.Tensor) -> None:
    if weight.device.type != "cpu":
        raise ValueError(f"packed weights are a CPU path; this weight is on {weight.device}")


class PackFormat:
    """How a linear layer's weight is packed for a CPU kernel, and the product with it."""

    name = ""

    def prepack(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        raise NotImplementedError

    def linear(self, x: torch.Tensor, packed) -> torch.Tensor:
        """x @ weight.T (+ bias) with the packed weight; any leading dims, out in x's dtype."""
        raise NotImplementedError


class FbgemmFp16(PackFormat):
    """FBGEMM's fp16-weight kernel: fp32 activations and accumulation, weights rounded to fp16."""

    name = "fp16 (FBGEMM)"

    def prepack(self, weight, bias=None):
        _check_cpu(weight)
        return torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(),
                                                       None if bias is None else bias.detach().float())

    def linear(self, x, packed):
        if x.dim() == 1:
            return torch.ops.quantized.linear_dynamic_fp16(x[None], packed)[0]
        return torch.ops.quantized.linear_dynamic_fp16(x, packed)


class OnednnBf16(PackFormat):
    """oneDNN's bf16 product on a bf16 weight reordered once into its blocked layout, instead of
    at every call as a plain bf16 `F.linear` on a CPU does: the same numbers (bf16 inputs, fp32
    accumulation), without the per-call reorder that dominates few-row products. (bf16 products
    under fp32 activations were slower than a bf16 target on the AMX Xeon of session 28, so only
    bf16 layers are packed this way.)"""

    name = "bf16 (oneDNN)"

    def prepack(self, weight, bias=None):
        _check_cpu(weight)
        w = weight.detach().to(torch.bfloat16).contiguous()
        return (torch.ops.mkldnn._reorder_linear_weight(w, 1),
                None if bias is None else bias.detach().to(torch.bfloat16).contiguous())

    def linear(self, x, packed):
        weight, bias = packed
        if x.dim() == 1:
            return torch.ops.mkldnn._linear_pointwise(x[None], weight, bias, "none", [], "")[0]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


FBGEMM_FP16 = FbgemmFp16()
ONEDNN_BF16 = OnednnBf16()


class SharedInputProduct:
    """One packed product for sibling layers that read the same input (q/k/v, gate/up).

    The module code calls each sibling in turn with the same tensor; the first call multiplies x
    by the stacked weights and keeps the other siblings' slices until they ask for them with that
    same tensor object. A call with any other input, or a second call for a slice already handed
    out, multiplies again, so a caller that does not follow the pattern gets correct (only not
    cheaper) results.
    """

    def __init__(self, layers: list["PackedLinear"]):
        self.format = layers[0].format
        biases = [l.bias for l in layers]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else l.weight.new_zeros(l.out_features)
                              for b, l in zip(biases, layers)])
        self.packed = self.format.prepack(torch.cat([l.weight.detach() for l in layers]), bias)
        self.sizes = [l.out_features for l in layers]
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor | None] = []
        self._unserved = 0  # slices of _outputs not handed out yet

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._outputs[index] is None:
            self._outputs = list(self.format.linear(x, self.packed).split(self.sizes, dim=-1))
            self._input, self._unserved = x, len(self.sizes)
        out, self._outputs[index] = self._outputs[index], None
        self._unserved -= 1
        if not self._unserved:
            self._input, self._outputs = None, []  # every sibling served: hold no tensors
        return out


class PackedLinear(nn.Module):
    """An nn.Linear whose forward multiplies with a copy of its weight packed for a CPU kernel
    (`format`). `weight` and `bias` stay the original parameters: read by whoever needs rows or
    shapes, and multiplied with only when a gradient must flow through (training a head on this
    target: the packed kernels have no backward)."""

    def __init__(self, linear: nn.Linear, format: PackFormat):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.format = format
        self.packed = format.prepack(linear.weight, linear.bias)
        self.shared: tuple[SharedInputProduct, int] | None = None  # (the siblings' product, this one's slice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.numel() == 0:  # a gradient to pass, or no rows
            return nn.functional.linear(x, self.weight, self.bias)
        if self.shared is not None:
            product, index = self.shared
            return product.output(index, x)
        return self.format.linear(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.format.name}"


# Sibling layers that transformers' attention and MLP modules (Llama, Qwen2, Mistral, the EAGLE
# heads' layers) call one after the other with the same input.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def share_input_products(module: nn.Module) -> int:
    """Give each group of packed siblings in SHARED_INPUT_GROUPS one product; returns how many groups."""
    count = 0
    for parent in module.modules():
        for names in SHARED_INPUT_GROUPS:
            layers = [getattr(parent, n, None) for n in names]
            if not all(isinstance(l, PackedLinear) for l in layers):
                continue
            if len({l.in_features for l in layers}) != 1 or len({l.weight.dtype for l in layers}) != 1:
                continue
            product = SharedInputProduct(layers)
            for i, layer in enumerate(layers):
                layer.shared, layer.packed = (product, i), None  # the product replaces each own copy
            count += 1
    return count


def pack_weights(module: nn.Module, format: PackFormat) -> int:
    """Replace every nn.Linear inside `module` (on the CPU) by a PackedLinear of `format`, in
    place, with shared products for siblings that read the same input; returns how many layers.
    FBGEMM's fp16 packs fp32 layers, oneDNN's bf16 packs bf16 layers."""
    if format is FBGEMM_FP16 and not fbgemm_fp16_available():
        raise ValueError("fp16-weights needs PyTorch's FBGEMM on an x86 CPU with AVX2; use --dtype float32")
    if format is ONEDNN_BF16 and not onednn_bf16_available():
        raise ValueError("bf16-packed weights need oneDNN's bf16 kernels (a CPU with AVX-512 BF16 or AMX)")
    dtype, label = (torch.float32, "fp32") if format is FBGEMM_FP16 else (torch.bfloat16, "bf16")
    for name, layer in module.named_modules():  # checked before any layer is swapped
        if type(layer) is nn.Linear:
            if layer.weight.dtype != dtype:
                raise ValueError(f"{format.name} packs {label} layers; {name} is {layer.weight.dtype}")
            _check_cpu(layer.weight)
    count = swap_modules(module, lambda child: PackedLinear(child, format) if type(child) is nn.Linear else None)
    share_input_products(module)
    return count


def packed_format(module: nn.Module) -> PackFormat | None:
    """The format of `module`'s packed layers, or None when it has none."""
    return next((m.format for m in module.modules() if isinstance(m, PackedLinear)), None)


def has_packed_weights(module: nn.Module) -> bool:
    return packed_format(module) is not None


def has_shared_products(module: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) and m.shared is not None for m in module.modules())
