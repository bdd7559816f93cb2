"""The Tree Lab's settings: paths, environment knobs, widget ranges, and the head and policy menus.

The policy menu is eagle2.registry's (names, which sizes each takes, their defaults), plus the
plug-ins named in EAGLE2_APP_POLICIES, registered there by `install_user_policies`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import eagle2
from eagle2 import registry
from eagle2.head import HEAD_KIND_LABELS, head_kind
from eagle2.trace import MAX_TRACE_BYTES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TRACES = ROOT / "examples" / "traces"
PROMPTS_FILE = ROOT / "examples" / "prompts.json"

MAX_NEW_TOKENS = max(1, int(os.environ.get("EAGLE2_APP_MAX_NEW_TOKENS", "256")))
DEFAULT_NEW_TOKENS = min(64, MAX_NEW_TOKENS)
MAX_PROMPT_CHARS = 4000
# trace uploads: eagle2.trace's limit, or less (EAGLE2_APP_MAX_TRACE_BYTES, e.g. on a small Space)
MAX_UPLOAD_BYTES = min(MAX_TRACE_BYTES, int(float(os.environ.get("EAGLE2_APP_MAX_TRACE_BYTES", MAX_TRACE_BYTES))))
# Widget ranges; the server checks the same ranges (and the registry the tree's capacity).
LIMITS = {"top_k": (1, 12), "depth": (1, 10), "total_tokens": (1, 128), "temperature": (0.0, 2.0),
          "top_p": (0.05, 1.0), "max_new_tokens": (1, MAX_NEW_TOKENS), "seed": (0, 2**31 - 1)}


# ---- heads ----------------------------------------------------------------------------------------
def _shipped_head_choices() -> dict[str, str]:
    """The heads shipped for the embedded target, labelled by kind (EAGLE-1/2 or EAGLE-3)."""
    from eagle2.draft import shipped_heads

    out = {}
    for name, folder in shipped_heads(eagle2.models.DEFAULT_NAME).items():
        try:
            kind = HEAD_KIND_LABELS[head_kind(folder)]
        except ValueError:
            continue
        out[name] = f"{name}: the trained {kind}" + (" (earlier head kind, for comparison)" if name != "default" else "")
    return out


SPECIAL_HEADS = {
    "default": "default: the trained head",
    **_shipped_head_choices(),
    "self": "self: the target drafts for itself (accepts all)",
    "random": "random: an untrained head (accepts ~nothing)",
}


# ---- policies (eagle2.registry) ----------------------------------------------------------------------
DEFAULT_POLICY = registry.DEFAULT_POLICY  # like the CLI and the bench
AUTO_LOOKUP = "eagle2-auto+lookup"  # eagle2-auto plus a prompt-lookup chain copied from the context
LOOKUP_TOKENS = registry.LOOKUP_TOKENS
TREE_DEFAULTS = dict(registry.policy_info("eagle2").defaults)  # CPU-sized: top_k, depth, total_tokens


def total_cap(top_k: int, depth: int) -> int:
    """The largest total_tokens a top_k x depth tree can hold (within the slider's range)."""
    from eagle2.tree import max_candidates

    return min(LIMITS["total_tokens"][1], max_candidates(int(top_k), int(depth)))


def policy_choices() -> list[str]:
    return registry.names()


def policy_sizes(name: str) -> tuple[str, ...]:
    """Which of top_k / depth / total_tokens a policy uses (the others are greyed out)."""
    try:
        return registry.policy_info(name).sizes
    except ValueError:
        return ()


def policy_defaults(name: str) -> dict:
    """The sizes a policy starts from (shown when it is picked): its defaults, and the sizes it
    really runs where it fixes them (eagle1's static tree: 25 nodes, depth 5); sliders for sizes
    it neither takes nor fixes keep the fixed tree's defaults."""
    try:
        out = {**TREE_DEFAULTS, **registry.policy_info(name).defaults}
        runs = registry.resolve_policy(name).describe()
    except (ValueError, TypeError):
        return dict(TREE_DEFAULTS)
    out.update({k: v for k, v in runs.items() if k in out and isinstance(v, int) and not isinstance(v, bool)})
    return out


def default_head() -> str:
    """The draft head the page starts with (EAGLE2_APP_HEAD, else the shipped default)."""
    return os.environ.get("EAGLE2_APP_HEAD", "default")


def default_choice() -> registry.PolicyChoice:
    """The policy the page starts with, at the sizes its sliders start from."""
    d = policy_defaults(DEFAULT_POLICY)
    return registry.resolve_policy(DEFAULT_POLICY, defaults={k: d[k] for k in ("top_k", "depth", "total_tokens")})


def _compare_default(name: str) -> tuple[str, int, int, int]:
    d = policy_defaults(name)
    return name, d["top_k"], d["depth"], d["total_tokens"]


COMPARE_DEFAULT_A = _compare_default("eagle1")  # the static tree: its real sizes, greyed out
COMPARE_DEFAULT_B = _compare_default("eagle2")


def load_user_policies() -> dict[str, registry.PolicyInfo]:
    """Policies named in EAGLE2_APP_POLICIES ("module:Class" or "file.py:Class"), as registry
    entries; a bad entry is skipped with a note (a bad plug-in must not take the app down)."""
    found: dict[str, registry.PolicyInfo] = {}
    for spec in filter(None, (s.strip() for s in os.environ.get("EAGLE2_APP_POLICIES", "").split(","))):
        try:
            where, _, cls_name = spec.rpartition(":")
            if where.endswith(".py"):
                mspec = importlib.util.spec_from_file_location(Path(where).stem, where)
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
            info = registry.PolicyInfo.from_class(getattr(module, cls_name))
            found[info.name] = info
        except Exception as e:
            print(f"[tree-lab] skipping user policy {spec!r}: {type(e).__name__}: {e}")
    return found


def install_user_policies() -> list[str]:
    """Register the plug-ins of EAGLE2_APP_POLICIES; a name taken already is skipped. Returns
    the names registered."""
    names = []
    for name, info in load_user_policies().items():
        try:
            registry.register(info)
            names.append(name)
        except ValueError as e:
            print(f"[tree-lab] skipping user policy {name!r}: {e}")
    return names
