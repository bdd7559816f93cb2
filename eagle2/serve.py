"""Serve a target + EAGLE head + tree settings at scale: the SGLang or vLLM launch command.

    from eagle2.serve import ServeSettings, serve_command
    cmd = serve_command(ServeSettings(top_k=10, depth=6, total_tokens=60), "sglang")
    print(cmd.shell); print("\\n".join(cmd.notes))

Conventions (README, "depth"): our `depth` is the depth of the deepest draft token (a cycle yields
at most depth + 1 tokens) and our `total_tokens` counts draft tokens, not the root. The engines'
conventions, read from their sources (versions in tests/test_serve.py):

* SGLang (`python/sglang/srt/speculative/eagle_worker_v2.py` `draft_forward`,
  `eagle_utils.py` `organize_draft_results`, `arg_groups/speculative_hook.py`):
  `--speculative-num-steps` is the number of tree levels (level 1 = the top-k children of the
  root proposed by the draft-extend pass, then num_steps - 1 draft forwards, each adding one level)
  = our depth; `--speculative-eagle-topk` = our top_k (the same expand-by-path-probability and
  rerank as EAGLE-2, over top_k + (num_steps - 1)·top_k² candidates); `--speculative-num-draft-tokens`
  counts the verified root too (it keeps num_draft_tokens - 1 candidates) = our total_tokens + 1.
  With topk 1 SGLang forces num_draft_tokens = num_steps + 1.
* vLLM (`vllm/v1/spec_decode/llm_base_proposer.py`, `vllm/config/speculative.py`): the EAGLE
  proposer drafts a chain of `num_speculative_tokens` tokens (one per draft step) and verifies
  num_speculative_tokens + 1; there is no tree, top_k or rerank.
* Official EAGLE code (`eagle/model/ea_model.py`, `cnets.py`): `EaModel.from_pretrained(total_token=T,
  depth=D, top_k=K)` keeps T - 1 draft tokens and expands D levels after the first, so it is our
  total_tokens = T - 1, depth = D + 1.

Only the standard library is imported here.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .head import config_head_kind, read_head_config

ENGINES = ("sglang", "vllm")
HEAD_KINDS = ("eagle1", "eagle3")  # EAGLE-1/2 checkpoint format, EAGLE-3 checkpoint format (eagle2.head)
ENGINE_METHOD = {"eagle1": "eagle", "eagle3": "eagle3"}  # the engines' names for them
DTYPES = ("auto", "bfloat16", "float16", "float32")  # accepted by both engines' --dtype
DEFAULT_TARGET_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub original of our embedded GGUF
DEFAULT_HEAD_DIR = Path(__file__).resolve().parent / "heads" / "smollm2-135m-instruct"
# total_tokens="auto" sizes the tree each cycle from a CPU latency calibration; engines take a fixed
# tree, so auto (and any size left unset) becomes the EAGLE-2 paper's GPU tree, in our convention.
FIXED_TREE = {"top_k": 10, "depth": 6, "total_tokens": 60}
SGLANG_DEFAULT_LLAMA = (5, 4, 8)  # SGLang's own (num_steps, topk, num_draft_tokens) for Llama targets
SGLANG_EAGLE_ARCHS = ("LlamaForCausalLMEagle", "Qwen2ForCausalLMEagle", "MistralForCausalLMEagle")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _positive_int(label: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{label} must be an int >= 1, got {v!r}")
    if v < 1:
        raise ValueError(f"{label} must be >= 1, got {v}")
    return v


def max_candidates(top_k: int, depth: int) -> int:
    """Candidates an EAGLE-2 expansion proposes (ours and SGLang's): top_k, then top_k² per level."""
    return top_k + (depth - 1) * top_k * top_k


def check_tree(top_k: int, depth: int, total_tokens: int) -> None:
    """Raise ValueError (one line) unless the sizes describe a tree EAGLE-2 can build."""
    for label, v in (("top_k", top_k), ("depth", depth), ("total_tokens", total_tokens)):
        _positive_int(label, v)
    cap = max_candidates(top_k, depth)
    if total_tokens > cap:
        raise ValueError(f"total_tokens={total_tokens} is more than a top_k={top_k}, depth={depth} tree can "
                         f"hold ({cap})")


def effective_depth(depth: int, total_tokens: int) -> int:
    """Levels that can hold a kept node: a kept node's ancestors are kept too, so at most total_tokens.

    Expansion at a level depends only on the levels above it, so dropping the deeper levels leaves the
    reranked tree unchanged."""
    return min(depth, total_tokens)


def sglang_tree(top_k: int, depth: int, total_tokens: int) -> dict:
    """Our (top_k, depth, total_tokens) as SGLang's speculative_* server arguments (same tree)."""
    check_tree(top_k, depth, total_tokens)
    steps = effective_depth(depth, total_tokens)
    return {"speculative_num_steps": steps, "speculative_eagle_topk": top_k,
            "speculative_num_draft_tokens": total_tokens + 1}


def from_sglang(num_steps: int, eagle_topk: int, num_draft_tokens: int) -> dict:
    """SGLang's (num_steps, eagle_topk, num_draft_tokens) in our convention."""
    for label, v in (("num_steps", num_steps), ("eagle_topk", eagle_topk), ("num_draft_tokens", num_draft_tokens)):
        _positive_int(label, v)
    if num_draft_tokens < 2:
        raise ValueError(f"num_draft_tokens counts the root, so it must be >= 2, got {num_draft_tokens}")
    if eagle_topk == 1:  # SGLang overrides num_draft_tokens to num_steps + 1 for chains
        num_draft_tokens = num_steps + 1
    out = {"top_k": eagle_topk, "depth": num_steps, "total_tokens": num_draft_tokens - 1}
    check_tree(**out)
    return out


def vllm_chain(depth: int, total_tokens: int) -> int:
    """vLLM's num_speculative_tokens for our tree: its depth (the chain is the tree's top-1 path)."""
    _positive_int("depth", depth)
    _positive_int("total_tokens", total_tokens)
    return effective_depth(depth, total_tokens)


def eagle_repo_settings(top_k: int, depth: int, total_tokens: int) -> dict:
    """The official EAGLE code's EaModel.from_pretrained(total_token, depth, top_k) for our sizes."""
    check_tree(top_k, depth, total_tokens)
    return {"total_token": total_tokens + 1, "depth": depth - 1, "top_k": top_k}


def detect_head_kind(folder: str | Path) -> str:
    """The checkpoint format of a head folder, from its config.json."""
    return config_head_kind(read_head_config(folder))


@dataclass
class ServeSettings:
    """What to serve: target, draft head and tree sizes in this project's conventions."""

    model: str = "default"  # default | hub id | local folder
    head: str = "default"  # default (the shipped head) | hub id | local folder
    head_kind: str = "auto"  # auto | eagle1 (EAGLE-1/2 format) | eagle3
    top_k: int | None = None
    depth: int | None = None
    total_tokens: int | str = "auto"
    dtype: str = "auto"
    tp: int = 1  # tensor-parallel size
    host: str | None = None
    port: int | None = None


@dataclass
class ServeCommand:
    """An engine's launch command plus what maps from our settings and what does not."""

    engine: str
    argv: list[str]
    notes: list[str]
    resolved: dict = field(default_factory=dict)

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "command": self.shell, "argv": list(self.argv), "notes": list(self.notes),
                "settings": dict(self.resolved)}


def _is_local(spec: str) -> bool:
    return Path(spec).expanduser().exists()


def _resolve_model(spec: str, notes: list[str]) -> str:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model must be default, a hub id or a local folder, got {spec!r}")
    if spec == "default":
        notes.append(f"target: `default` is served as the hub model {DEFAULT_TARGET_HUB_ID} (engines load hub "
                     "or safetensors checkpoints, not the GGUF this project embeds; the head was trained on the "
                     "GGUF's dequantized weights, so check the acceptance rate)")
        return DEFAULT_TARGET_HUB_ID
    if _is_local(spec):
        return str(Path(spec).expanduser().resolve())
    if _HUB_ID.match(spec):
        return spec
    raise ValueError(f"model {spec!r} is neither a local folder nor a hub id (owner/name)")


def _resolve_head(settings: ServeSettings, model_id: str, notes: list[str]) -> tuple[str, str, dict | None]:
    spec, kind = settings.head, settings.head_kind
    if kind not in ("auto",) + HEAD_KINDS:
        raise ValueError(f"head_kind must be auto, eagle1 or eagle3, got {kind!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"head must be default, a hub id or a local folder, got {spec!r}")
    if spec == "default":
        if model_id != DEFAULT_TARGET_HUB_ID:
            raise ValueError(f"no draft head is shipped for {model_id!r}: pass a head folder or hub id")
        folder = DEFAULT_HEAD_DIR
    elif _is_local(spec):
        folder = Path(spec).expanduser().resolve()
    elif _HUB_ID.match(spec):
        if kind == "auto":
            kind = "eagle3" if "eagle3" in spec.lower() else "eagle1"
            notes.append(f"head: {spec} is a hub id, its kind ({kind}) is guessed from the name; "
                         "pass the head kind to be sure")
        return spec, kind, None
    else:
        raise ValueError(f"head {spec!r} is neither a local folder nor a hub id (owner/name)")
    if not folder.is_dir():
        raise ValueError(f"head {str(folder)!r} is not a folder")
    config = read_head_config(folder)
    found = config_head_kind(config)
    if kind != "auto" and kind != found:
        raise ValueError(f"head_kind {kind!r} does not match {str(folder)!r}, whose config.json describes an "
                         f"{found!r} head")
    return str(folder), found, config


def _resolve_tree(settings: ServeSettings, notes: list[str]) -> tuple[int, int, int]:
    total = settings.total_tokens
    if isinstance(total, str) and total != "auto":
        raise ValueError(f"total_tokens must be an int >= 1 or 'auto', got {total!r}")
    top_k = FIXED_TREE["top_k"] if settings.top_k is None else _positive_int("top_k", settings.top_k)
    depth = FIXED_TREE["depth"] if settings.depth is None else _positive_int("depth", settings.depth)
    if total == "auto":
        total = min(FIXED_TREE["total_tokens"], max_candidates(top_k, depth))
        notes.append(f"tree: total_tokens=auto (sized each cycle from a CPU latency calibration) has no engine "
                     f"equivalent: fixed tree top_k={top_k}, depth={depth}, total_tokens={total} (unset sizes: the "
                     "EAGLE-2 paper's GPU tree 10/6/60; SGLang's own Llama default "
                     f"{'/'.join(map(str, SGLANG_DEFAULT_LLAMA))} is our 4/5/7, better for large batches)")
    elif settings.top_k is None or settings.depth is None:
        notes.append(f"tree: unset sizes take the EAGLE-2 paper's GPU tree: top_k={top_k}, depth={depth}")
    check_tree(top_k, depth, total)
    eagle = eagle_repo_settings(top_k, depth, total)
    notes.append(f"tree: top_k={top_k}, depth={depth}, total_tokens={total} here is the official EAGLE code's "
                 f"EaModel.from_pretrained(total_token={eagle['total_token']}, depth={eagle['depth']}, "
                 f"top_k={eagle['top_k']}) (it counts the root in total_token and one level less in depth)")
    if effective_depth(depth, total) < depth:
        notes.append(f"tree: depth={depth} is cut to {total}: with total_tokens={total} no kept token can be deeper "
                     "(same tree, fewer draft steps)")
    return top_k, depth, total


def resolve(settings: ServeSettings) -> tuple[dict, dict | None, list[str]]:
    """Check the settings and fill in defaults: (resolved settings, head config or None, notes)."""
    if not isinstance(settings, ServeSettings):
        raise ValueError(f"settings must be a ServeSettings, got {type(settings).__name__}")
    notes: list[str] = []
    if settings.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    _positive_int("tp", settings.tp)
    if settings.port is not None and not (isinstance(settings.port, int) and not isinstance(settings.port, bool)
                                          and 1 <= settings.port <= 65535):
        raise ValueError(f"port must be an int in 1..65535, got {settings.port!r}")
    if settings.host is not None and (not isinstance(settings.host, str) or not settings.host.strip()):
        raise ValueError(f"host must be a non-empty string, got {settings.host!r}")
    top_k, depth, total = _resolve_tree(settings, notes)
    model_id = _resolve_model(settings.model, notes)
    head, kind, config = _resolve_head(settings, model_id, notes)
    resolved = {**asdict(settings), "model": model_id, "head": head, "head_kind": kind, "top_k": top_k,
                "depth": depth, "total_tokens": total}
    return resolved, config, notes


def _common_flags(r: dict, tp_flag: str) -> list[str]:
    out = []
    if r["dtype"] != "auto":
        out += ["--dtype", r["dtype"]]
    if r["tp"] > 1:
        out += [tp_flag, str(r["tp"])]
    if r["host"] is not None:
        out += ["--host", r["host"]]
    if r["port"] is not None:
        out += ["--port", str(r["port"])]
    return out


def sglang_command(settings: ServeSettings) -> ServeCommand:
    """`python3 -m sglang.launch_server ...` with SGLang's EAGLE / EAGLE3 tree drafting."""
    r, config, notes = resolve(settings)
    tree = sglang_tree(r["top_k"], r["depth"], r["total_tokens"])
    algorithm = "EAGLE3" if r["head_kind"] == "eagle3" else "EAGLE"
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", r["model"],
            "--speculative-algorithm", algorithm, "--speculative-draft-model-path", r["head"],
            "--speculative-num-steps", str(tree["speculative_num_steps"]),
            "--speculative-eagle-topk", str(tree["speculative_eagle_topk"]),
            "--speculative-num-draft-tokens", str(tree["speculative_num_draft_tokens"])]
    argv += _common_flags(r, "--tp-size")
    notes.append(f"sglang: --speculative-num-steps {tree['speculative_num_steps']} = our depth (tree levels), "
                 f"--speculative-eagle-topk {r['top_k']} = our top_k, --speculative-num-draft-tokens "
                 f"{tree['speculative_num_draft_tokens']} = our total_tokens + 1 (SGLang counts the root)")
    notes.append("sglang: maps: EAGLE-2's dynamic tree (top_k frontier by path probability, rerank to the kept "
                 "size); does not map: the per-cycle auto size and prompt lookup (--lookup)")
    if r["top_k"] == 1:
        notes.append("sglang: with topk 1 it drafts a chain and sets num_draft_tokens = num_steps + 1 itself")
    if algorithm == "EAGLE" and config is not None:
        archs = [str(a) for a in config.get("architectures") or []]
        if not any(a in SGLANG_EAGLE_ARCHS for a in archs):
            want = next((a + "Eagle" for a in archs if a + "Eagle" in SGLANG_EAGLE_ARCHS), SGLANG_EAGLE_ARCHS[0])
            notes.append(f"sglang: it builds the draft from config.json `architectures` ({', '.join(archs) or 'none'} "
                         f"here); EAGLE-1/2 drafts need [\"{want}\"]: serve a copy of the head folder with that "
                         "config.json change (the weights' fc.*/layers.0.* names load as they are)")
        if config.get("bias", True) is False:
            notes.append("sglang: its EAGLE draft's fc has a bias; this head has none (config bias=false), so "
                         "the checkpoint leaves it unset")
    return ServeCommand("sglang", argv, notes, {**r, **tree, "speculative_algorithm": algorithm})


def vllm_command(settings: ServeSettings) -> ServeCommand:
    """`vllm serve MODEL --speculative-config JSON`: EAGLE / EAGLE-3 chain drafting."""
    r, config, notes = resolve(settings)
    n = vllm_chain(r["depth"], r["total_tokens"])
    method = ENGINE_METHOD[r["head_kind"]]
    spec = {"method": method, "model": r["head"], "num_speculative_tokens": n}
    argv = ["vllm", "serve", r["model"], "--speculative-config", json.dumps(spec, separators=(",", ":"))]
    argv += _common_flags(r, "--tensor-parallel-size")
    notes.append(f"vllm: drafts a chain, not a tree: num_speculative_tokens {n} = our depth (a cycle verifies "
                 f"{n + 1} tokens, yields at most {n + 1}); it is the tree's top-1 path, like our `chain` policy")
    notes.append(f"vllm: does not map: top_k={r['top_k']}, the rerank to total_tokens={r['total_tokens']} and "
                 "EAGLE-2's dynamic tree (vLLM 0.33's SpeculativeConfig has no tree option; older releases' "
                 "experimental static speculative_token_tree is not emitted), the auto size and prompt lookup")
    notes.append("vllm: method is set explicitly: vLLM would otherwise guess it from the head's name "
                 "(\"eagle-\" or \"eagle3\" in it)")
    if method == "eagle" and config is not None and config.get("bias", True) is not False:
        notes.append("vllm: warning: its EAGLE-1/2 Llama draft (EagleLlamaForCausalLM) builds fc without a bias; "
                     "this head has fc.bias (config bias is true or absent, EAGLE's default), which vLLM "
                     "rejects when loading: serve this head with SGLang, or use a head trained without the bias")
    return ServeCommand("vllm", argv, notes, {**r, "num_speculative_tokens": n, "method": method})


def serve_command(settings: ServeSettings, engine: str) -> ServeCommand:
    """The launch command for `engine` (sglang | vllm)."""
    if engine == "sglang":
        return sglang_command(settings)
    if engine == "vllm":
        return vllm_command(settings)
    raise ValueError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
