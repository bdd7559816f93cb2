"""Where a model or a draft head comes from: a local folder or a Hugging Face Hub id, checked up
front so that a bad spec fails at once with one line naming the cause (shared by the CLI, the
bench and the app).

    locate(spec, "model")  ->  Source(kind="folder", path=...)       an existing folder, checked
                               Source(kind="hub", repo_id=..., local_only=...)

A spec is a folder when it exists on disk. It is *meant* as a folder, and a missing one is
reported as "no such folder: X", when it starts with ".", "/" or "~" or is not a valid hub id
but holds a "/" (e.g. "runs/a/b"). Anything else is a hub id:

* HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: the local HF cache only, never the network.
* otherwise the Hub is asked once (`model_info`, PROBE_TIMEOUT_S, in a thread so that even a
  hanging DNS lookup cannot hold the caller; after no answer, questions in the next
  UNREACHABLE_MEMO_S fail at once) before anything is downloaded: an unknown id, a
  gated repo or a repo without config.json / weights is reported at once; an unreachable Hub
  falls back to the local cache (`local_only=True`: load without touching the network, instead
  of the libraries' own retries, ~25 s) or says that the id is not cached.

Every failure is a `SpecError` (a ValueError) whose text is one line.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_S = float(os.environ.get("EAGLE2_HUB_TIMEOUT", "3"))
UNREACHABLE_MEMO_S = 10.0  # after no answer, the next questions within this time fail at once
_unreachable_until = 0.0
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# the files transformers loads (not the duplicates some repos carry, e.g. consolidated.safetensors)
_HF_WEIGHTS = (re.compile(r"model(-\d+-of-\d+)?\.safetensors"), re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin"))


class SpecError(ValueError):
    """A model/head spec that cannot be used; the message is one line naming the cause."""


def one_line(e: BaseException) -> str:
    """An exception as one line: its first line, with its type unless it is a plain OSError/ValueError."""
    text = str(e).strip().splitlines()[0].strip() if str(e).strip() else ""
    if type(e) in (OSError, ValueError) and text:
        return text[:300]
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


@dataclass
class Source:
    """A checked spec: `path` for a folder (kind "folder"), `repo_id` for the Hub (kind "hub");
    local_only: load it from the HF cache without touching the network; info: the Hub's
    model_info when the Hub answered."""

    spec: str
    kind: str
    path: Path | None = None
    repo_id: str | None = None
    local_only: bool = False
    info: object | None = None

    @property
    def load_name(self) -> str:
        """What to hand to `from_pretrained`."""
        return str(self.path) if self.kind == "folder" else self.repo_id

    def load_kwargs(self) -> dict:
        """cache_dir / local_files_only for `from_pretrained` (nothing for a folder)."""
        return {} if self.kind == "folder" else {"cache_dir": cache_dir(), "local_files_only": self.local_only}


# ---- environment ---------------------------------------------------------------------------------------
def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them at import)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def cache_dir() -> str:
    """The HF hub cache, from the environment as it is now (HF_HUB_CACHE, HF_HOME)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return os.path.expanduser(env)
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


# ---- specs ---------------------------------------------------------------------------------------------
def valid_repo_id(spec: str) -> bool:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
        return True
    except ValueError:  # HFValidationError
        return False


def is_local(spec) -> bool:
    """True when the spec names a local path: it exists, starts with ".", "/" or "~", or holds
    a path separator but cannot be a hub id."""
    s = str(spec).strip()
    if not s:
        return False
    if s.startswith((".", "/", "~", "\\")) or Path(s).expanduser().exists():
        return True
    return ("/" in s or "\\" in s) and not valid_repo_id(s)


def has_weights(folder: Path) -> bool:
    return any(next(folder.glob(p), None) is not None for p in WEIGHT_PATTERNS)


def check_model_folder(folder: Path, spec: str, what: str = "model", tokenizer: bool = True) -> None:
    """config.json, weights and (for a model) a tokenizer, or a SpecError naming what is missing."""
    if not folder.is_dir():
        raise SpecError(f"{what} {spec} is a file, not a folder: give the folder that holds config.json and the weights")
    if not (folder / "config.json").is_file():
        raise SpecError(f"{what} folder {spec} has no config.json")
    if not has_weights(folder):
        raise SpecError(f"{what} folder {spec} has no weights (model.safetensors, pytorch_model.bin or a sharded index)")
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SpecError(f"{what} folder {spec} has no tokenizer (tokenizer.json or tokenizer_config.json)")


def no_such_folder(spec: str, what: str = "model") -> SpecError:
    hint = {"model": "a model is a folder with config.json and weights, or a hub id",
            "draft head": "a draft head is a folder with config.json and weights, a hub id or a shipped name"}
    return SpecError(f"no such folder: {spec} ({hint.get(what, 'expected a folder or a hub id')})")


def locate(spec, what: str = "model", tokenizer: bool | None = None) -> Source:
    """Check a model / head spec before loading it (see the module docstring). `what` names it
    in messages ("model", "draft head"); tokenizer: require one in a folder (default: for a model)."""
    s = str(spec).strip()
    if not s:
        raise SpecError(f"{what} name is empty")
    tokenizer = (what == "model") if tokenizer is None else tokenizer
    local = Path(s).expanduser()
    if local.exists():
        check_model_folder(local, s, what, tokenizer=tokenizer)
        return Source(s, "folder", path=local)
    if is_local(s):
        raise no_such_folder(s, what)
    if not valid_repo_id(s):
        raise SpecError(f"{what} {s!r} is neither a folder nor a valid hub id (name or owner/name)")
    return probe(s, what)


# ---- the Hub -------------------------------------------------------------------------------------------
def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a repo (its main revision) when it holds config.json and
    weights, else None. Reads the disk only."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir())
    except Exception:  # a damaged cache reads as "not cached"
        return None
    if not isinstance(hit, str):
        return None
    folder = Path(hit).parent
    return folder if has_weights(folder) else None


def model_info(repo_id: str, files_metadata: bool = False, timeout: float | None = None):
    """huggingface_hub's model_info, bounded: run in a daemon thread so that a slow DNS lookup
    (not covered by the HTTP timeout) cannot hold the caller longer than `timeout` (+1 s).
    Raises what model_info raises, or TimeoutError."""
    global _unreachable_until
    from huggingface_hub import HfApi

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    if time.monotonic() < _unreachable_until:  # it just failed: do not wait on it twice in a row
        raise ConnectionError("the Hugging Face Hub could not be reached a moment ago")
    box: dict = {}

    def ask():
        try:
            box["info"] = HfApi().model_info(repo_id, files_metadata=files_metadata, timeout=timeout)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=ask, name="eagle2-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        _unreachable_until = time.monotonic() + UNREACHABLE_MEMO_S
        raise TimeoutError(f"no answer from the Hugging Face Hub in {timeout:g} s")
    if "error" in box:
        e = box["error"]
        if not _answered(e):
            _unreachable_until = time.monotonic() + UNREACHABLE_MEMO_S
        raise e
    return box["info"]


def _answered(e: BaseException) -> bool:
    """Whether an error is the Hub's answer (an HTTP status) rather than no answer at all."""
    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, HfHubHTTPError)


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def probe(repo_id: str, what: str = "model") -> Source:
    """Ask the Hub once about `repo_id` (see the module docstring); a Source or a SpecError."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = cached_snapshot(repo_id)
    local_hint = " (and no folder of that name here)" if "/" in repo_id else ""
    verb = "cannot load model" if what == "model" else f"cannot fetch {what}"
    if offline():
        if cached is not None:
            return Source(repo_id, "hub", repo_id=repo_id, local_only=True)
        raise SpecError(f"{verb} {repo_id!r}: the Hugging Face Hub is off (HF_HUB_OFFLINE is set) and it is not in "
                        f"the local cache{local_hint}")
    try:
        info = model_info(repo_id)
    except GatedRepoError:
        if cached is not None:
            return Source(repo_id, "hub", repo_id=repo_id, local_only=True)
        raise SpecError(f"{what} {repo_id!r} is gated on the Hugging Face Hub: accept its terms at "
                        f"https://huggingface.co/{repo_id} and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        if cached is not None:  # e.g. a private repo downloaded with a token that is gone now
            return Source(repo_id, "hub", repo_id=repo_id, local_only=True)
        raise SpecError(f"no {what} {repo_id!r} on the Hugging Face Hub{local_hint} (check the spelling; a "
                        "private repo needs a login)") from None
    except HfHubHTTPError as e:
        if cached is not None:
            return Source(repo_id, "hub", repo_id=repo_id, local_only=True)
        code = _status(e)
        raise SpecError(f"{verb} {repo_id!r}: the Hugging Face Hub answered {code or 'with an error'} and it is "
                        "not in the local cache") from None
    except Exception:  # connection refused, DNS, timeouts, proxies: the Hub cannot be reached
        if cached is not None:
            return Source(repo_id, "hub", repo_id=repo_id, local_only=True)
        raise SpecError(f"{verb} {repo_id!r}: the Hugging Face Hub cannot be reached (offline?) and it is not in "
                        f"the local cache{local_hint}") from None
    files = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
    if files:
        if "config.json" not in files:
            raise SpecError(f"{what} {repo_id!r} on the Hugging Face Hub has no config.json (not a transformers "
                            "checkpoint: GGUF-only or another format?)")
        if not weight_files(files):
            raise SpecError(f"{what} {repo_id!r} on the Hugging Face Hub has no weights in safetensors or PyTorch "
                            "format")
    return Source(repo_id, "hub", repo_id=repo_id, info=info)


# ---- sizes ---------------------------------------------------------------------------------------------
def weight_files(names) -> list[str]:
    """The weight files transformers would load, from a list of repo file names (top level only):
    model*.safetensors, else pytorch_model*.bin, else any *.safetensors / *.bin."""
    top = [n for n in names if "/" not in n]
    for pat in _HF_WEIGHTS:
        hit = [n for n in top if pat.fullmatch(n)]
        if hit:
            return hit
    return [n for n in top if n.endswith((".safetensors", ".bin"))]


def hub_weights_bytes(info) -> int | None:
    """Bytes of weights of a model_info(..., files_metadata=True); None when sizes are missing."""
    sizes = {s.rfilename: getattr(s, "size", None) for s in (getattr(info, "siblings", None) or [])}
    files = weight_files(sizes)
    if not files or any(sizes[f] is None for f in files):
        return None
    return int(sum(sizes[f] for f in files))


def folder_weights_bytes(folder: Path) -> int | None:
    """Bytes of weights in a folder (links followed, as in the HF cache); None when it has none."""
    folder = Path(folder)
    files = weight_files([p.name for p in folder.iterdir() if p.is_file()]) if folder.is_dir() else []
    if not files:
        return None
    return int(sum((folder / f).stat().st_size for f in files))


def human_bytes(n: int | float) -> str:
    """1.2 GB / 350 MB / 12 kB (decimal units, as the Hub shows them)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
