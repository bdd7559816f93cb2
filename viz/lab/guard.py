"""What a visitor of the app may load: no local paths on a public Space, no model too large for
the machine. Each refusal is one line; the checks use eagle2.hub, so the CLI and the app agree on
what is a path and what is a hub id.

Public Space mode: the environment variable SPACE_ID is set (Hugging Face sets it on every
Space) or EAGLE2_APP_PUBLIC=1. Then a model or head given as a local path (one that exists here,
or starts with ".", "/" or "~") is refused; the shipped names stay: model "default", heads
"default", "self", "random" and the heads eagle2.draft.shipped_heads lists.

Model size cap: EAGLE2_APP_MAX_MODEL_BYTES, the bytes of weights a target may have on disk
(a number: "2e9", "2000000000"; 0 = no cap). Default: 2 GB on a public Space (a free CPU Space
has 16 GB of memory and 2 cores: 2 GB of bf16 weights is a ~1B-parameter model, 4 GB once
upcast to fp32, and already slow), 16 GB elsewhere (a workstation loading an 8B model in bf16).
A hub model's size is read from the Hub before anything is downloaded (model_info with file
sizes: model*.safetensors, else pytorch_model*.bin) or, offline, from the local cache; a folder's
from its files. When no size can be found (the Hub cannot be reached, no weights listed) the
check passes and loading says what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import eagle2
from eagle2 import hub

from .config import SPECIAL_HEADS

SPACE_MAX_MODEL_BYTES = 2_000_000_000
LOCAL_MAX_MODEL_BYTES = 16_000_000_000


def public() -> bool:
    """A public Space (SPACE_ID set, or EAGLE2_APP_PUBLIC=1): local paths are refused."""
    return bool(os.environ.get("SPACE_ID", "").strip()) or hub._truthy(os.environ.get("EAGLE2_APP_PUBLIC"))


def allowed_heads() -> set[str]:
    """The head menu's names (default, the shipped heads, self, random): never paths."""
    return set(SPECIAL_HEADS)


def check_specs(target: str, head: str) -> None:
    """On a public Space, refuse local paths as model or head (one line); elsewhere nothing."""
    if not public():
        return
    if target != eagle2.models.DEFAULT_TARGET and hub.is_local(target):
        raise ValueError(f"local paths are disabled on a public Space; use a hub id or the default model "
                         f"(model {target!r} is a path)")
    if head not in allowed_heads() and hub.is_local(head):
        raise ValueError(f"local paths are disabled on a public Space; use a hub id or a shipped head "
                         f"({', '.join(sorted(allowed_heads()))}) (head {head!r} is a path)")


def max_model_bytes() -> int:
    """The cap on a target's weights in bytes (0 = none): EAGLE2_APP_MAX_MODEL_BYTES, else the
    default for a public Space or for a private machine."""
    text = os.environ.get("EAGLE2_APP_MAX_MODEL_BYTES", "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"EAGLE2_APP_MAX_MODEL_BYTES must be a number of bytes (e.g. 2e9), got {text!r}") from None
        return max(0, int(value))
    return SPACE_MAX_MODEL_BYTES if public() else LOCAL_MAX_MODEL_BYTES


def model_bytes(spec: str) -> int | None:
    """Bytes of weights of a model spec, without downloading it: a folder's files, the local HF
    cache's copy, or the Hub's file sizes; None when it cannot be told (the caller lets the load
    say what is wrong)."""
    if spec == eagle2.models.DEFAULT_TARGET:
        return None
    local = Path(spec).expanduser()
    if local.is_dir():
        return hub.folder_weights_bytes(local)
    if hub.is_local(spec) or not hub.valid_repo_id(spec):
        return None
    cached = hub.cached_snapshot(spec)
    if cached is not None:
        return hub.folder_weights_bytes(cached)
    if hub.offline():
        return None
    try:
        info = hub.model_info(spec, files_metadata=True)
    except Exception:  # unknown id, unreachable Hub: load_target reports it in one line
        return None
    return hub.hub_weights_bytes(info)


def check_model_size(spec: str) -> None:
    """Refuse a target whose weights exceed max_model_bytes(), with its size, before loading it."""
    cap = max_model_bytes()
    if not cap:
        return
    size = model_bytes(spec)
    if size is not None and size > cap:
        where = "on this public Space" if public() else "here"
        raise ValueError(f"model {spec!r} is too large for this app: {hub.human_bytes(size)} of weights, at most "
                         f"{hub.human_bytes(cap)} {where} (EAGLE2_APP_MAX_MODEL_BYTES)")
