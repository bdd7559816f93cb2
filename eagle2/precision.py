"""Which precision `--dtype auto` runs a target in on a CPU: bf16 or fp16-packed weights, measured.

A CPU's flags do not say which is faster. On some CPUs with AVX-512 BF16 the bf16 matrix products
of one to eight rows (a decode step, a tree verify) run at a fraction of the memory bandwidth,
and FBGEMM's fp16-weight kernel (eagle2.packed) is much faster; on others (AMX, or a faster bf16
path) bf16 wins. So where both run, a short probe multiplies the target's own layer shapes at
one and at eight rows in each precision, as the target would run them (bf16 with weights packed
for oneDNN where it runs, fp16 packed for FBGEMM), and keeps the faster, cached per machine,
torch version and shapes like the latency curve (eagle2.autotree). Without native bf16 there is
nothing to measure: fp16-weights where FBGEMM runs, else fp32.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .files import write_text_atomic
from .packed import FBGEMM_FP16, FP16_WEIGHTS, ONEDNN_BF16, fbgemm_fp16_available, onednn_bf16_available

PROBE_SCHEMA = "eagle2-precision-probe-3"  # 2: fp16 timed with shared q/k/v and gate/up products; 3: bf16 packed alike
PROBE_ROWS = (1, 8)  # a decode step and a typical tree verify
PROBE_PARAMS = 24_000_000  # weights per probe pass: past a CPU's last-level cache, like a real forward
PROBE_ROUNDS = 7
PROBE_MAX_LAYERS = 48  # tiny models: enough products to time, not thousands


@functools.cache
def cpu_flags_and_name() -> tuple[str, str]:
    """(flags, model name) from /proc/cpuinfo; empty where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "", ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    return text, name


def cpu_model() -> str:
    """The CPU's model name (the platform's processor string where /proc/cpuinfo is missing):
    every figure in a report names it."""
    return cpu_flags_and_name()[1] or platform.processor() or platform.machine()


def machine_info() -> dict:
    """What decides a forward's speed, from the Python and torch APIs (no /proc read: the latency
    calibration keys on it): host, processor and its vector capability, threads, accelerator,
    library versions. Reports add the CPU's model name (`cpu_model`)."""
    import transformers

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def has_cpu_bf16() -> bool:
    """Whether the CPU has native bf16 instructions (AVX-512 BF16 or AMX)."""
    flags, _ = cpu_flags_and_name()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class LayerShapes:
    """The linear layers of one decoder layer (out, in): what a forward multiplies with."""

    hidden: int
    intermediate: int
    kv: int  # key/value projection width (grouped-query attention)

    @classmethod
    def of(cls, config) -> "LayerShapes":
        hidden = int(config.hidden_size)
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        return cls(hidden, int(getattr(config, "intermediate_size", 4 * hidden)), kv_heads * head_dim)

    def weights(self) -> list[tuple[int, int]]:
        """(out, in) of q, k, v, o, gate, up, down."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]

    def params(self) -> int:
        return sum(o * n for o, n in self.weights())


@dataclass
class PrecisionProbe:
    """One probe's result: milliseconds of a pass over the probe layers, per precision and rows."""

    shapes: dict
    layers: int
    ms: dict  # precision -> {rows: median ms}
    choice: str
    machine: dict

    def score(self, precision: str) -> float:
        """Milliseconds at one row plus at eight: decode steps and tree verifies weigh alike."""
        return sum(self.ms[precision].values())


def measure(shapes: LayerShapes, rounds: int = PROBE_ROUNDS, params: int = PROBE_PARAMS) -> PrecisionProbe:
    """Time bf16 products against fp16-packed weights on `shapes` (as many layers as make
    `params` weights), each as eagle2.packed runs it (q/k/v stacked into one product, gate/up
    into another; bf16 packed for oneDNN where it runs, else a plain F.linear), alternating,
    median of `rounds`."""
    n_layers = min(PROBE_MAX_LAYERS, max(1, -(-params // shapes.params())))
    gen = torch.Generator().manual_seed(0)
    fp32 = [[torch.randn(o, n, generator=gen) * 0.02 for o, n in shapes.weights()] for _ in range(n_layers)]

    def stacked(layer, pack):
        return [pack(torch.cat(layer[0:3])), pack(layer[3]), pack(torch.cat(layer[4:6])), pack(layer[6])]

    if onednn_bf16_available():
        bf16 = [stacked(layer, ONEDNN_BF16.prepack) for layer in fp32]
        bf16_linear = ONEDNN_BF16.linear
    else:
        bf16 = [stacked(layer, torch.Tensor.bfloat16) for layer in fp32]
        bf16_linear = torch.nn.functional.linear
    fp16 = [stacked(layer, FBGEMM_FP16.prepack) for layer in fp32]
    del fp32
    inputs = {rows: (torch.randn(rows, shapes.hidden, generator=gen), torch.randn(rows, shapes.intermediate,
                                                                                  generator=gen))
              for rows in PROBE_ROWS}

    def run(precision: str, rows: int) -> float:
        xh, xi = inputs[rows]
        layers, linear = (bf16, bf16_linear) if precision == "bfloat16" else (fp16, FBGEMM_FP16.linear)
        if precision == "bfloat16":
            xh, xi = xh.bfloat16(), xi.bfloat16()
        t0 = time.perf_counter()
        for layer in layers:
            for k, w in enumerate(layer):
                linear(xi if k == len(layer) - 1 else xh, w)
        return (time.perf_counter() - t0) * 1e3

    samples: dict = {p: {r: [] for r in PROBE_ROWS} for p in ("bfloat16", FP16_WEIGHTS)}
    for p in samples:  # warm-up: first touches, kernel selection
        for r in PROBE_ROWS:
            run(p, r)
    for _ in range(rounds):
        for r in PROBE_ROWS:
            for p in samples:
                samples[p][r].append(run(p, r))
    ms = {p: {r: round(statistics.median(v), 3) for r, v in by_rows.items()} for p, by_rows in samples.items()}
    result = PrecisionProbe(asdict(shapes), n_layers, ms, "bfloat16", _machine())
    if result.score(FP16_WEIGHTS) < result.score("bfloat16"):  # a tie keeps bf16 (half the memory)
        result.choice = FP16_WEIGHTS
    return result


def _machine() -> dict:
    return {"host": platform.node(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def probe_path(shapes: LayerShapes, cache: Path) -> Path:
    ident = json.dumps({"schema": PROBE_SCHEMA, **_machine(), **asdict(shapes)}, sort_keys=True)
    return cache / "precision" / f"{hashlib.sha1(ident.encode()).hexdigest()[:16]}.json"


def cached_probe(shapes: LayerShapes, cache: Path) -> PrecisionProbe | None:
    """The probe measured earlier on this machine for these shapes under the cache folder
    `cache` (eagle2.models.cache_dir()), if any (reports show it)."""
    path = probe_path(shapes, cache)
    try:
        raw = json.loads(path.read_text())
        if raw.pop("schema", None) == PROBE_SCHEMA:
            return PrecisionProbe(**raw)
    except (ValueError, TypeError, OSError):
        pass  # none yet, or a damaged file: measured again
    return None


def probe(shapes: LayerShapes, cache: Path) -> PrecisionProbe:
    """The cached probe for this machine and these shapes, measured once (about a second)."""
    cached = cached_probe(shapes, cache)
    if cached is not None:
        return cached
    result = measure(shapes)
    path = probe_path(shapes, cache)
    try:
        write_text_atomic(path, json.dumps({"schema": PROBE_SCHEMA, **asdict(result)}, indent=1))
    except OSError:
        pass  # a read-only cache: measure again next time
    return result


def fits_packed_weights(config, bytes_per_weight: int) -> bool:
    """Packed weights live beside the parameters (fp16-weights: 4 + 2 bytes a weight; bf16 packed
    for oneDNN: 2 + 2): pack only where that stays well inside the machine's memory."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    shapes = LayerShapes.of(config)
    vocab, hidden = int(getattr(config, "vocab_size", 0)), shapes.hidden
    params = int(getattr(config, "num_hidden_layers", 1)) * shapes.params() + 2 * vocab * hidden
    return bytes_per_weight * params < 0.6 * memory


def auto_cpu_precision(config=None, allow_fp16_weights: bool = True, cache: Path | None = None) -> str:
    """What `--dtype auto` runs on this CPU: "bfloat16", FP16_WEIGHTS or "float32".

    Native bf16 and FBGEMM both present: the probe decides on the target's layer shapes, cached
    under `cache` (without a config or a cache folder, bf16). Only one of them: that one.
    Neither: fp32."""
    bf16, fp16 = has_cpu_bf16(), allow_fp16_weights and fbgemm_fp16_available()
    if bf16 and fp16:
        if config is None or cache is None or not fits_packed_weights(config, 6):
            return "bfloat16"
        return probe(LayerShapes.of(config), cache).choice
    if fp16:
        return FP16_WEIGHTS
    return "bfloat16" if bf16 else "float32"
