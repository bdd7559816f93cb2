"""EAGLE-2 Tree Lab: watch a draft tree grow, get reranked and verified, token by token.

    python app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT respected)

A thin Gradio layer over `eagle2` (decoding, traces) and `viz` (figures). The target model is
loaded once and shared read-only; every run gets its own drafter (drafters hold a KV cache),
and one lock runs generations one at a time (two CPU cores gain nothing from running two).

Environment knobs:
    EAGLE2_APP_HEAD            initial draft head in the UI (default "default")
    EAGLE2_APP_MAX_NEW_TOKENS  upper bound for max_new_tokens (default 256)
    EAGLE2_APP_POLICIES        extra user policies, "module:Class" or "path/file.py:Class", comma-separated
    EAGLE2_APP_PRELOAD=0       don't load the default model in the background at start-up
"""

from __future__ import annotations

import collections
import html
import importlib
import importlib.util
import inspect
import json
import math
import os
import queue
import tempfile
import uuid
import threading
import time
import warnings
from pathlib import Path

import gradio as gr

import eagle2
from eagle2.autotree import AUTO_DEFAULT_DEPTH, AutoEagle2
from eagle2.head import HEAD_KIND_LABELS, head_kind
from eagle2.policies import POLICIES, Eagle2, Policy, check_size
from eagle2.trace import MAX_TRACE_BYTES, Observer, Trace, TraceRecorder, token_texts
from eagle2.tree import max_candidates
from viz import charts
from viz.data import BONUS_KEY, ROOT_KEY, TokenSpan, cycle_view, display_token, policy_label, summary
from viz.html import CSS as VIZ_CSS
from viz.html import legend_html, summary_html, tokens_html
from viz.tree_figure import stage_caption, stage_names, tree_figure

ROOT = Path(__file__).resolve().parent
EXAMPLE_TRACES = ROOT / "examples" / "traces"
PROMPTS_FILE = ROOT / "examples" / "prompts.json"

MAX_NEW_TOKENS = max(1, int(os.environ.get("EAGLE2_APP_MAX_NEW_TOKENS", "256")))
DEFAULT_NEW_TOKENS = min(64, MAX_NEW_TOKENS)
MAX_PROMPT_CHARS = 4000
# Widget ranges; the server checks the same ranges (and eagle2.policies.check_size the tree).
LIMITS = {"top_k": (1, 12), "depth": (1, 10), "total_tokens": (1, 128), "temperature": (0.0, 2.0),
          "top_p": (0.05, 1.0), "max_new_tokens": (1, MAX_NEW_TOKENS), "seed": (0, 2**31 - 1)}
_EAGLE2_SIG = inspect.signature(Eagle2.__init__).parameters
TREE_DEFAULTS = {k: _EAGLE2_SIG[k].default for k in ("top_k", "depth", "total_tokens")}  # CPU-sized
AUTO = AutoEagle2.name  # "eagle2-auto": EAGLE-2 with the tree size chosen per cycle for this machine
AUTO_LOOKUP = f"{AUTO}+lookup"  # the same, plus a prompt-lookup chain copied from the context (eagle2.lookup)
LOOKUP_TOKENS = 10  # the longest copied chain (the benchmarked setting)
AUTO_POLICIES = (AUTO, AUTO_LOOKUP)
AUTO_DEFAULTS = {"top_k": inspect.signature(AutoEagle2.__init__).parameters["top_k"].default,
                 "depth": AUTO_DEFAULT_DEPTH, "total_tokens": TREE_DEFAULTS["total_tokens"]}
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
DEFAULT_POLICY = AUTO  # like the CLI and the bench
POLICY_INFO = ("eagle2-auto sizes the tree for this machine each cycle (+lookup: also copies from the context, "
               "marked ↪); eagle2 keeps total_tokens")
COMPARE_DEFAULT_A = ("eagle1", TREE_DEFAULTS["top_k"], TREE_DEFAULTS["depth"], TREE_DEFAULTS["total_tokens"])
COMPARE_DEFAULT_B = ("eagle2", TREE_DEFAULTS["top_k"], TREE_DEFAULTS["depth"], TREE_DEFAULTS["total_tokens"])


# ---- policies -----------------------------------------------------------------------------------
def _load_user_policies() -> dict[str, type]:
    """Policies named in EAGLE2_APP_POLICIES ("module:Class" or "file.py:Class")."""
    found: dict[str, type] = {}
    for spec in filter(None, (s.strip() for s in os.environ.get("EAGLE2_APP_POLICIES", "").split(","))):
        try:
            where, _, cls_name = spec.rpartition(":")
            if where.endswith(".py"):
                mspec = importlib.util.spec_from_file_location(Path(where).stem, where)
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
            cls = getattr(module, cls_name)
            if not (isinstance(cls, type) and issubclass(cls, Policy)):
                raise TypeError(f"{cls_name} is not an eagle2 Policy")
            found[getattr(cls, "name", cls_name) or cls_name] = cls
        except Exception as e:  # a bad plug-in must not take the app down
            print(f"[tree-lab] skipping user policy {spec!r}: {type(e).__name__}: {e}")
    return found


USER_POLICIES = _load_user_policies()


def policy_choices() -> list[str]:
    names = [AUTO, AUTO_LOOKUP] + list(POLICIES)
    return names + [n for n in USER_POLICIES if n not in names]


def policy_defaults(name: str) -> dict:
    """The sizes a policy starts from (shown when it is picked)."""
    return dict(AUTO_DEFAULTS if name in AUTO_POLICIES else TREE_DEFAULTS)


def policy_sizes(name: str) -> tuple[str, ...]:
    """Which of top_k / depth / total_tokens a policy uses (the others are greyed out)."""
    if name == "eagle2":
        return ("top_k", "depth", "total_tokens")
    if name in AUTO_POLICIES:  # total_tokens is chosen per cycle; depth is a ceiling
        return ("top_k", "depth")
    if name == "chain":
        return ("depth",)
    if name in ("eagle1", "vanilla"):
        return ()
    cls = USER_POLICIES.get(name) or POLICIES.get(name)
    if cls is None:
        return ()
    params = inspect.signature(cls.__init__).parameters
    return tuple(k for k in ("top_k", "depth", "total_tokens") if k in params)


def build_policy(name: str, top_k: int, depth: int, total_tokens: int, target=None) -> Policy:
    """A policy from the UI's choices; eagle2-auto needs the target (its latency calibration)."""
    if name in AUTO_POLICIES:
        if target is None:
            raise ValueError(f"{name} needs the target model to calibrate against")
        return eagle2.make_policy("eagle2", top_k=top_k, depth=depth, total_tokens="auto", target=target,
                                  lookup=LOOKUP_TOKENS if name == AUTO_LOOKUP else 0)
    if name in ("eagle2", "eagle1", "chain", "vanilla"):
        return eagle2.make_policy(name, top_k=top_k, depth=depth, total_tokens=total_tokens)
    cls = USER_POLICIES.get(name) or POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}: choose from {', '.join(policy_choices())}")
    sizes = {"top_k": top_k, "depth": depth, "total_tokens": total_tokens}
    return cls(**{k: sizes[k] for k in policy_sizes(name)})


# ---- parameters -----------------------------------------------------------------------------------
def _as_int(v, label: str) -> int:
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{label} must be a whole number, got {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{label} must be a whole number, got {v!r}")
        v = int(v)
    if not isinstance(v, int):
        try:
            v = int(str(v).strip())
        except ValueError:
            raise ValueError(f"{label} must be a whole number, got {v!r}") from None
    lo, hi = LIMITS[label]
    if not lo <= v <= hi:
        raise ValueError(f"{label} must be between {lo} and {hi}, got {v}")
    return v


def _as_float(v, label: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {v!r}") from None
    lo, hi = LIMITS[label]
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"{label} must be between {lo} and {hi}, got {v!r}")
    return f


def validate(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
             seed) -> dict:
    """Check every run parameter on the server (widgets can be bypassed through the API)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Please type a prompt first (or pick an example below it).")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is too long ({len(prompt)} characters; at most {MAX_PROMPT_CHARS}).")
    if policy not in policy_choices():
        raise ValueError(f"Unknown policy {policy!r}: choose from {', '.join(policy_choices())}.")
    p = {"prompt": prompt, "target": str(target or "default").strip() or "default",
         "head": str(head or "default").strip() or "default", "policy": policy,
         "top_k": _as_int(top_k, "top_k"), "depth": _as_int(depth, "depth"),
         "total_tokens": _as_int(total_tokens, "total_tokens"), "temperature": _as_float(temperature, "temperature"),
         "top_p": _as_float(top_p, "top_p"), "max_new_tokens": _as_int(max_new_tokens, "max_new_tokens"),
         "seed": _as_int(seed, "seed")}
    try:
        if policy in AUTO_POLICIES:  # built once the target is loaded; check the sizes now
            check_size(p["top_k"], p["depth"], 1)
            p["policy_obj"] = None
        else:
            p["policy_obj"] = build_policy(policy, p["top_k"], p["depth"], p["total_tokens"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"Bad tree size: {e}") from None
    return p


def policy_description(p: dict) -> dict:
    if p["policy_obj"] is not None:
        return p["policy_obj"].describe()
    return {"policy": AUTO, "top_k": p["top_k"], "depth": p["depth"], "total_tokens": "auto",
            **({"lookup": LOOKUP_TOKENS} if p["policy"] == AUTO_LOOKUP else {})}


# ---- models: loaded once, shared read-only ----------------------------------------------------------
class Models:
    """Targets (at most two kept) and draft heads, loaded once; a fresh drafter per run."""

    MAX_TARGETS = 2

    def __init__(self):
        self._lock = threading.Lock()
        self._targets: collections.OrderedDict[str, eagle2.Target] = collections.OrderedDict()
        self._heads: dict[tuple[str, str], eagle2.EagleHead] = {}
        self._policies: dict[tuple, Policy] = {}

    def target(self, name: str = "default") -> eagle2.Target:
        with self._lock:
            if name in self._targets:
                self._targets.move_to_end(name)
                return self._targets[name]
            t = eagle2.load_target(name)
            self._targets[name] = t
            while len(self._targets) > self.MAX_TARGETS:
                old, _ = self._targets.popitem(last=False)
                self._heads = {k: v for k, v in self._heads.items() if k[0] != old}
                self._policies = {k: v for k, v in self._policies.items() if k[0] != old}
            return t

    def _head(self, target: eagle2.Target, spec: str) -> eagle2.EagleHead:
        key = (target.name, spec)
        with self._lock:
            if key not in self._heads:
                if spec == "random":
                    import torch

                    with torch.random.fork_rng():
                        torch.manual_seed(0)
                        self._heads[key] = eagle2.EagleHead.for_target(target.model.config)
                else:
                    self._heads[key] = eagle2.load_head(spec, target)
            return self._heads[key]

    def policy(self, target: eagle2.Target, p: dict) -> Policy:
        """The run's policy; eagle2-auto ones are kept per target and size (they learn online).
        Called under GEN_LOCK, so a kept policy is never used by two runs at once."""
        if p["policy_obj"] is not None:
            return p["policy_obj"]
        key = (target.name, p["policy"], p["top_k"], p["depth"])
        with self._lock:
            if key not in self._policies:
                self._policies[key] = build_policy(p["policy"], p["top_k"], p["depth"], 0, target=target)
            return self._policies[key]

    def drafter(self, target: eagle2.Target, spec: str):
        if spec == "self":
            return eagle2.ModelDrafter(target.model, name="self (the target drafts)")
        head = self._head(target, spec)
        kind = HEAD_KIND_LABELS[head.kind]
        label = {"default": f"{kind} (default)", "random": f"random {kind} (untrained)"}.get(spec, f"{kind} {spec}")
        return eagle2.EagleDrafter(head, target.model, name=label)

    def loaded(self) -> list[str]:
        return list(self._targets)


MODELS = Models()
GEN_LOCK = threading.Lock()  # one generation at a time; also guards target eviction


def default_head_missing() -> str | None:
    """Why the default head can't be used yet (None when it is shipped)."""
    from eagle2.draft import DEFAULT_HEADS

    folder = DEFAULT_HEADS.get(eagle2.models.DEFAULT_NAME)
    if folder is not None and (folder / "config.json").exists():
        return None
    return (f"The trained EAGLE head for {eagle2.models.DEFAULT_NAME} is not shipped yet "
            f"(`{Path(folder).relative_to(ROOT) if folder else 'eagle2/heads'}` is missing). Pick head **self** "
            "(the target drafts for itself) or **random** (an untrained head), or open an example trace.")


# ---- generation with streaming ------------------------------------------------------------------------
class Cancelled(Exception):
    pass


class Streamer(Observer):
    """Forwards each cycle's new tokens to a queue (cheap: asks for no records)."""

    wants_records = False

    def __init__(self, q: queue.Queue, cancel: threading.Event):
        self.q, self.cancel = q, cancel

    def on_tokens(self, cycle, tokens, origins):
        if self.cancel.is_set():
            raise Cancelled()
        self.q.put((cycle, list(tokens), list(origins)))


def _friendly(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, ValueError) and "not shipped yet" in msg:
        return default_head_missing() or msg
    return msg


def generate_stream(p: dict, cancel: threading.Event | None = None, wait_note=None):
    """Run one generation in a worker thread; yields ("wait"|"load"|"tokens"|"done"|"error", payload).

    "tokens" carries the TokenSpans so far; "done" the finished Trace.
    """
    cancel = cancel or threading.Event()
    q: queue.Queue = queue.Queue()
    box: dict = {}
    phase = {"v": "wait"}

    def work():
        try:
            with GEN_LOCK:
                if cancel.is_set():
                    raise Cancelled()
                phase["v"] = "load"
                target = MODELS.target(p["target"])
                if p["policy_obj"] is None:
                    phase["v"] = "calibrate"
                policy = MODELS.policy(target, p)
                drafter = MODELS.drafter(target, p["head"]) if policy.needs_drafter else None
                box["tokenizer"] = target.tokenizer
                phase["v"] = "run"
                rec = TraceRecorder(target.tokenizer)
                observers = [Streamer(q, cancel), rec] + ([policy] if isinstance(policy, Observer) else [])
                eagle2.generate_text(target, p["prompt"], drafter=drafter, policy=policy,
                                     observers=observers, max_new_tokens=p["max_new_tokens"],
                                     temperature=p["temperature"], top_p=p["top_p"], seed=p["seed"])
                rec.trace.meta.update(head=p["head"] if policy.needs_drafter else None, target_spec=p["target"])
                box["trace"] = rec.trace
        except Cancelled:
            box["error"] = "cancelled"
        except Exception as e:  # model/head load failures, bad sizes, context overflow ...
            box["error"] = _friendly(e)
        finally:
            q.put(None)

    worker = threading.Thread(target=work, name="tree-lab-generate", daemon=True)
    worker.start()
    spans: list[TokenSpan] = []
    texts: dict[str, str] = {}
    last_phase = None
    try:
        while True:
            try:
                item = q.get(timeout=0.25)
            except queue.Empty:
                if phase["v"] != last_phase:
                    last_phase = phase["v"]
                    yield (last_phase, None)
                continue
            if item is None:
                break
            cycle, toks, origins = item
            tok = box.get("tokenizer")
            missing = [t for t in toks if str(t) not in texts]
            if missing and tok is not None:
                texts.update(token_texts(tok, missing))
            spans += [TokenSpan(t, texts.get(str(t), f"<{t}>"), o, cycle) for t, o in zip(toks, origins)]
            # drain what else arrived, then show it
            while True:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    q.put(None)
                    break
                cycle, toks, origins = more
                missing = [t for t in toks if str(t) not in texts]
                if missing and tok is not None:
                    texts.update(token_texts(tok, missing))
                spans += [TokenSpan(t, texts.get(str(t), f"<{t}>"), o, cycle) for t, o in zip(toks, origins)]
            yield ("tokens", list(spans))
        worker.join()
        if "error" in box:
            yield ("error", box["error"])
        else:
            yield ("done", box["trace"])
    finally:
        cancel.set()  # the client went away (or we finished): stop the worker at its next cycle


# ---- views of a trace ------------------------------------------------------------------------------------
def _clamp_cycle(trace: Trace | None, cycle) -> int:
    n = len(trace.cycles) if trace else 0
    try:
        c = int(cycle)
    except (TypeError, ValueError):
        c = 0
    return min(max(c, 0), max(0, n - 1))


def cycle_info(trace: Trace | None, cycle: int) -> str:
    if trace is None:
        return ""
    if not trace.cycles:
        return "This answer has no drafting cycles (it stopped at the first token)."
    v = cycle_view(trace, cycle)
    root = v.nodes[ROOT_KEY]
    acc = [n for n in v.nodes.values() if n.status == "accepted"]
    acc.sort(key=lambda n: n.depth)
    accepted = " ".join(f"`{display_token(n.text)}`" for n in acc) or "none"
    bonus = f" · bonus ★ `{display_token(v.nodes[BONUS_KEY].text)}`" if BONUS_KEY in v.nodes else ""
    t = v.timings
    return (f"**Cycle {cycle}** of {len(trace.cycles)} · root `{display_token(root.text)}` · accepted ✓ {accepted}"
            f"{bonus} · draft {1000 * t['draft_s']:.0f} ms · verify {1000 * t['verify_s']:.0f} ms")


def safe_tree(trace: Trace | None, cycle: int, **kw):
    if trace is None or not trace.cycles:
        return None
    return tree_figure(trace, _clamp_cycle(trace, cycle), **kw)


def stage_outputs(trace: Trace | None, cycle: int, stage_name: str | None, color_by: str) -> dict:
    if trace is None or not trace.cycles:
        return {"stage": gr.update(choices=["Verify"], value="Verify"), "stage_plot": None, "stage_caption": ""}
    c = _clamp_cycle(trace, cycle)
    v = cycle_view(trace, c)
    names = stage_names(v)
    name = stage_name if stage_name in names else names[0]
    i = names.index(name)
    return {"stage": gr.update(choices=names, value=name),
            "stage_plot": tree_figure(trace, c, view=v, stage=i, color_by=color_by),
            "stage_caption": stage_caption(v, i)}


def cycle_outputs(trace: Trace | None, cycle, color_by: str = "value", show_dropped: bool = True,
                  stage_name: str | None = None) -> dict:
    """Everything that depends on the selected cycle."""
    c = _clamp_cycle(trace, cycle)
    out = {"cycle": gr.update(value=c), "cycle_info": cycle_info(trace, c),
           "answer": tokens_html(trace, selected=c) if trace else tokens_html(None),
           "tree": safe_tree(trace, c, color_by=color_by, show_dropped=show_dropped)}
    out.update(stage_outputs(trace, c, stage_name, color_by))
    return out


def trace_file(trace: Trace) -> str:
    """Write a trace where the download button can serve it (old ones are pruned)."""
    folder = Path(tempfile.gettempdir()) / "eagle2-tree-lab"
    folder.mkdir(exist_ok=True)
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # another request pruned it meanwhile
            return 0.0

    old = sorted(folder.glob("trace-*.json"), key=mtime)
    for f in old[:-40]:
        f.unlink(missing_ok=True)
    path = folder / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(trace.to_json())
    return str(path)


def best_cycle(trace: Trace) -> int:
    """The first cycle that accepted the most draft tokens (a telling tree to open a trace on)."""
    best, most = 0, -1
    for i, rec in enumerate(trace.cycles):
        acc = len(rec.verification.accepted_path) - 1 if rec.verification else 0
        if acc > most:
            best, most = i, acc
    return best


def trace_outputs(trace: Trace, color_by="value", show_dropped=True, calib_by="value", status="",
                  download=True, cycle: int = 0) -> dict:
    """The whole UI for one trace (a fresh run, an upload or an example), showing `cycle`."""
    n = len(trace.cycles)
    cycle = _clamp_cycle(trace, cycle)
    out = cycle_outputs(trace, cycle, color_by, show_dropped)
    out.update({"status": status, "trace": trace, "summary": summary_html(trace),
                "cycle": gr.update(minimum=0, maximum=max(1, n - 1), value=cycle, step=1, interactive=n > 1,
                                   label=f"Cycle (0–{max(0, n - 1)}): drag, or click a token in the answer")})
    figs = charts.all_charts(trace, calib_by)
    out.update({f"chart_{k}": f for k, f in figs.items()})
    out["download"] = gr.update(value=trace_file(trace), interactive=True) if download else gr.update()
    return out


def _msg(kind: str, text: str) -> str:
    icon = {"error": "⚠", "warn": "⚠", "ok": "✓", "info": "ℹ", "busy": "…"}.get(kind, "")
    return f'<div class="tl-status tl-{kind}">{icon} {html.escape(text)}</div>'


def _warn(text: str) -> None:
    """A toast in the browser (outside a request, e.g. in tests, nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gr.Warning(text)
        except Exception:
            pass


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


# ---- handlers (return {name: value}; build_app maps names to components) -----------------------------
RUN_INPUTS = ("prompt", "target", "head", "policy", "top_k", "depth", "total_tokens", "temperature", "top_p",
              "max_new_tokens", "seed", "color_by", "show_dropped", "calib_by")


def run_handler(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
                seed, color_by="value", show_dropped=True, calib_by="value"):
    """Generator: stream the answer, then fill every view."""
    try:
        p = validate(prompt, target, head, policy, top_k, depth, total_tokens, temperature, top_p, max_new_tokens,
                     seed)
    except ValueError as e:
        _warn(str(e))
        yield {"status": _msg("warn", str(e))}
        return
    label = policy_label(policy_description(p))
    for kind, payload in generate_stream(p):
        if kind == "wait":
            yield {"status": _msg("busy", "Waiting for another run to finish (one generation at a time)…")}
        elif kind == "load":
            loaded = p["target"] in MODELS.loaded()
            yield {"status": _msg("busy", "Preparing the drafter…" if loaded else
                                  "Loading the model (first run only: a few seconds)…")}
        elif kind == "calibrate":
            yield {"status": _msg("busy", "Sizing the tree for this machine (the first eagle2-auto run times a few "
                                          "target forwards, ~10 s; cached afterwards)…")}
        elif kind == "run":
            yield {"status": _msg("busy", f"Generating with {label}…")}
        elif kind == "tokens":
            yield {"status": _msg("busy", f"Generating with {label}: {len(payload)} tokens so far…"),
                   "answer": tokens_html(payload, live=True)}
        elif kind == "error":
            _warn(payload)
            yield {"status": _msg("error", payload)}
        elif kind == "done":
            s = summary(payload)
            yield trace_outputs(payload, color_by, show_dropped, calib_by, status=_msg(
                "ok", f"Done: {s['new_tokens']} tokens in {s['cycles']} cycles with {label}, "
                      f"τ = {s['tau']:.2f} tokens per target forward, {s['tokens_per_s']:.1f} tokens/s."))


def load_trace_path(path) -> Trace:
    """Read an uploaded / example trace, with clear errors for bad files."""
    if path is None:
        raise ValueError("No file was uploaded.")
    path = Path(getattr(path, "name", path))
    if not path.is_file():
        raise ValueError(f"Trace file {path.name} was not found.")
    size = path.stat().st_size
    if size > MAX_TRACE_BYTES:
        raise ValueError(f"That trace is too large ({_size(size)}; at most {_size(MAX_TRACE_BYTES)}).")
    if size == 0:
        raise ValueError("That file is empty: not an eagle2 trace.")
    trace = Trace.from_json(path.read_bytes())  # ValueError with a clear message on bad input
    check_trace(trace)
    return trace


def check_trace(trace: Trace) -> None:
    """Reject traces that parse but cannot be drawn (so bad uploads fail here, not in a figure)."""
    try:
        for i in range(len(trace.cycles)):
            cycle_view(trace, i)
        summary(trace)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"trace is malformed: {type(e).__name__}: {e}") from None


def open_trace_handler(path, color_by="value", show_dropped=True, calib_by="value", source="uploaded"):
    try:
        trace = load_trace_path(path)
    except ValueError as e:
        msg = f"Could not open the {source} trace: {e}"
        _warn(msg)
        return {"status": _msg("error", msg)}
    s = summary(trace)
    name = Path(getattr(path, "name", path)).name
    example = source == "example"
    status = _msg("info", f"{'Example' if example else 'Uploaded'} trace {name}: {policy_label({**trace.meta, **s})} "
                          f"on {trace.meta.get('model', '?')}, {s['new_tokens']} tokens, τ = {s['tau']:.2f}. "
                          "No model was run. Type a prompt and press Run to generate your own.")
    return trace_outputs(trace, color_by, show_dropped, calib_by, status=status, download=not example,
                         cycle=best_cycle(trace) if example else 0)


def example_traces() -> list[tuple[str, str]]:
    """(label, path) of the shipped traces."""
    out = []
    for f in sorted(EXAMPLE_TRACES.glob("*.json")):
        label = f.stem
        try:
            head = json.loads(f.read_text())
            meta, s = head.get("meta", {}), head.get("summary", {})
            label = f"{f.stem} · {policy_label({**meta, **s})} · τ {s.get('tau', 0):.2f}"
        except Exception:
            pass
        out.append((label, str(f)))
    return out


def compare_handler(prompt, target, head, temperature, top_p, max_new_tokens, seed, pa, ka, da, ta, pb, kb, db, tb,
                    color_by="value"):
    """Generator: run two policies on the same prompt, one after the other."""
    try:
        a = validate(prompt, target, head, pa, ka, da, ta, temperature, top_p, max_new_tokens, seed)
        b = validate(prompt, target, head, pb, kb, db, tb, temperature, top_p, max_new_tokens, seed)
    except ValueError as e:
        _warn(str(e))
        yield {"cmp_status": _msg("warn", str(e))}
        return
    traces = []
    for tag, p in (("A", a), ("B", b)):
        label = policy_label(policy_description(p))
        for kind, payload in generate_stream(p):
            if kind in ("wait", "load", "calibrate", "run"):
                yield {"cmp_status": _msg("busy", f"Run {tag} ({label}): " + {
                    "wait": "waiting for another run…", "load": "preparing…",
                    "calibrate": "sizing the tree for this machine…", "run": "generating…"}[kind])}
            elif kind == "tokens":
                yield {"cmp_status": _msg("busy", f"Run {tag} ({label}): {len(payload)} tokens…"),
                       f"cmp_answer_{tag.lower()}": tokens_html(payload, live=True)}
            elif kind == "error":
                _warn(payload)
                yield {"cmp_status": _msg("error", f"Run {tag} failed: {payload}")}
                return
            elif kind == "done":
                traces.append(payload)
    yield compare_outputs(traces[0], traces[1], 0, color_by, status=_msg(
        "ok", "Both runs done on the same prompt and settings. Pick a cycle to compare their trees."))


def compare_table(ta: Trace, tb: Trace) -> str:
    sa, sb = summary(ta), summary(tb)
    rows = [("policy", policy_label({**ta.meta, **sa}), policy_label({**tb.meta, **sb})),
            ("τ (tokens / target forward)", f"{sa['tau']:.2f}", f"{sb['tau']:.2f}"),
            ("tokens per cycle", f"{sa['mean_accepted']:.2f}", f"{sb['mean_accepted']:.2f}"),
            ("tokens / second", f"{sa['tokens_per_s']:.1f}", f"{sb['tokens_per_s']:.1f}"),
            ("cycles (target forwards − 1)", str(sa["cycles"]), str(sb["cycles"])),
            ("draft / verify seconds", f"{sa['draft_s']:.2f} / {sa['verify_s']:.2f}",
             f"{sb['draft_s']:.2f} / {sb['verify_s']:.2f}")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(x)}</td><td>{html.escape(y)}</td></tr>"
                   for k, x, y in rows)
    note = answers_note(ta, tb)
    return (f'<table class="tl-cmp"><tr><th></th><th>A</th><th>B</th></tr>{body}</table>'
            f'<div class="tl-cmp-note">{html.escape(note)}</div>')


def answers_note(ta: Trace, tb: Trace) -> str:
    """Do the two answers agree? (Greedy speculative decoding should reproduce the target exactly.)"""
    a, b = ta.output_tokens, tb.output_tokens
    if a == b:
        return "Same answer, token for token: speculative decoding does not change the target's output."
    sampled = (ta.meta.get("temperature") or 0) > 0 or (tb.meta.get("temperature") or 0) > 0
    if sampled:
        return "Different answers: with sampling (temperature > 0) each run draws its own sample."
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if first == min(len(a), len(b)):
        return f"One answer is a prefix of the other: they agree on all {first} shared tokens."
    return (f"The answers agree on the first {first} tokens, then differ. Greedy speculative decoding should "
            "match exactly; a late difference usually means a near-tie flipped under low-precision (bfloat16) "
            "rounding, because trees of different shapes do slightly different arithmetic.")


def compare_outputs(ta: Trace, tb: Trace, cycle, color_by="value", status=None) -> dict:
    n = max(len(ta.cycles), len(tb.cycles))
    c = min(max(int(cycle or 0), 0), max(0, n - 1))
    out = {"cmp_state": (ta, tb), "cmp_table": compare_table(ta, tb),
           "cmp_cycle": gr.update(minimum=0, maximum=max(1, n - 1), value=c, interactive=n > 1),
           "cmp_answer_a": tokens_html(ta, selected=c if c < len(ta.cycles) else None),
           "cmp_answer_b": tokens_html(tb, selected=c if c < len(tb.cycles) else None)}
    for tag, t in (("a", ta), ("b", tb)):
        out[f"cmp_tree_{tag}"] = (tree_figure(t, c, color_by=color_by, show_dropped=False, compact=True,
                                              title=f"{tag.upper()}: {policy_label({**t.meta, **summary(t)})}"
                                                    f" · cycle {c}")
                                  if c < len(t.cycles) else None)
    if status is not None:
        out["cmp_status"] = status
    return out


# ---- the UI ------------------------------------------------------------------------------------------------
APP_CSS = VIZ_CSS + """
.gradio-container { max-width: 1800px !important; margin: 0 auto; }
#tl-header h1 { margin-bottom: 0; }
#tl-header p { margin-top: 4px; color: #57606a; font-size: 15px; }
.tl-status { font-size: 15px; padding: 6px 10px; border-radius: 6px; background: #f6f8fa; }
.tl-status.tl-error, .tl-status.tl-warn { background: #fff1f0; color: #a40e26; border: 1px solid #ffccc7; }
.tl-status.tl-ok { background: #effaf1; }
.tl-status.tl-busy { background: #fff8e6; }
.tl-banner { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 10px; }
table.tl-cmp { border-collapse: collapse; font-size: 15px; width: 100%; }
table.tl-cmp th, table.tl-cmp td { border-bottom: 1px solid #d0d7de; padding: 5px 10px; text-align: left; }
.tl-cmp-note { color: #57606a; margin-top: 6px; }
"""

TOKEN_CLICK_JS = """
element.addEventListener('click', (e) => {
  const c = e.target.closest('[data-cycle]');
  if (c) trigger('click', {cycle: parseInt(c.dataset.cycle)});
});
"""

INTRO = """
**How to read it.** Each cycle, a small *drafter* proposes a tree of likely next tokens (EAGLE-2 grows it by
*value* = product of draft confidences, then keeps the most valuable nodes). The big *target* model checks the
whole tree in **one** forward pass, keeps the longest path it agrees with (✓) and adds one token of its own
(★ bonus). More accepted tokens per target forward (τ) = faster, with exactly the target's output.
"""


COLOR_CHOICES = [("draft value (path)", "value"), ("confidence (per step)", "confidence")]
CALIBRATION_NOTE = """
*Draft value* is the product of confidences along the path: EAGLE-2's estimate that the whole path is
accepted. So against value, every verified draft node counts, and "accepted" means it ended on the accepted path.
*Confidence* is the drafter's probability of this one token given its parent: against confidence, only **tested**
nodes count (their parent was accepted, so the target compared them with its own choice, ✓ or ✗). A well-calibrated drafter puts the
points on the diagonal; with greedy decoding the target accepts exactly its top token, so the curve can bend into an S.
"""


def build_app() -> gr.Blocks:
    C: dict[str, gr.components.Component] = {}

    def wrap(fn, gen=False):
        """Adapt a {name: value} handler to Gradio's {component: value}."""
        if gen:
            def run(*args):
                for d in fn(*args):
                    yield {C[k]: v for k, v in d.items() if k in C}
        else:
            def run(*args):
                return {C[k]: v for k, v in fn(*args).items() if k in C}
        run.__name__ = fn.__name__
        return run

    missing = default_head_missing()
    head0 = os.environ.get("EAGLE2_APP_HEAD", "default")
    prompts = []
    try:
        prompts = [[p["prompt"]] for p in json.loads(PROMPTS_FILE.read_text())]
    except Exception as e:
        print(f"[tree-lab] no prompt examples: {e}")
    examples = example_traces()

    with gr.Blocks(title="EAGLE-2 Tree Lab", analytics_enabled=False, delete_cache=(3600, 7200),
                   fill_width=True) as demo:
        gr.Markdown("# EAGLE-2 Tree Lab\nSpeculative decoding with a dynamic draft tree: watch it grow, "
                    "get pruned and verified, token by token.", elem_id="tl-header")
        if missing:
            gr.HTML(f'<div class="tl-banner">⚠ {html.escape(missing).replace("**", "")}</div>')
        trace_state = gr.State(None, time_to_live=3600)
        cmp_state = gr.State(None, time_to_live=3600)
        C["trace"], C["cmp_state"] = trace_state, cmp_state

        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280, elem_id="settings"):
                gr.Markdown("### Model, head and tree")
                C["target"] = gr.Dropdown(["default"], value="default", allow_custom_value=True, label="Target model",
                                          info="default = embedded SmolLM2-135M-Instruct; or a hub id / folder")
                head_choices = [(v, k) for k, v in SPECIAL_HEADS.items()]
                if head0 not in SPECIAL_HEADS:
                    head_choices.append((head0, head0))
                C["head"] = gr.Dropdown(head_choices, value=head0, allow_custom_value=True, label="Draft head",
                                        info="or an EAGLE head hub id / folder", elem_id="head")
                C["policy"] = gr.Dropdown(policy_choices(), value=DEFAULT_POLICY, label="Tree policy",
                                          elem_id="policy", info=POLICY_INFO)
                d0, used0 = policy_defaults(DEFAULT_POLICY), policy_sizes(DEFAULT_POLICY)
                C["top_k"] = gr.Slider(*LIMITS["top_k"], value=d0["top_k"], step=1, label="top_k",
                                       info="children proposed per expanded node", interactive="top_k" in used0)
                C["depth"] = gr.Slider(*LIMITS["depth"], value=d0["depth"], step=1, label="depth",
                                       info="expansion steps (deepest draft token; a ceiling for eagle2-auto)",
                                       interactive="depth" in used0)
                C["total_tokens"] = gr.Slider(
                    LIMITS["total_tokens"][0],
                    min(LIMITS["total_tokens"][1], max_candidates(d0["top_k"], d0["depth"])),
                    value=d0["total_tokens"], step=1, label="total_tokens",
                    info="draft tokens kept by the rerank (eagle2-auto: chosen per cycle)",
                    interactive="total_tokens" in used0)
                gr.Markdown("### Sampling and length")
                C["temperature"] = gr.Slider(*LIMITS["temperature"], value=0.0, step=0.05,
                                             label="temperature (0 = greedy)")
                C["top_p"] = gr.Slider(*LIMITS["top_p"], value=1.0, step=0.05, label="top_p")
                C["max_new_tokens"] = gr.Slider(*LIMITS["max_new_tokens"], value=DEFAULT_NEW_TOKENS, step=1,
                                                label="max_new_tokens", elem_id="max-new-tokens")
                C["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=LIMITS["seed"][1],
                                      label="seed (sampling only)")
                gr.Markdown("### Traces: no model needed")
                C["example_trace"] = gr.Dropdown(examples, value=None, label="Example traces (open instantly)",
                                                 elem_id="example-trace", interactive=True)
                C["upload"] = gr.UploadButton("⬆ Upload a trace (.json)", file_types=[".json"],
                                              elem_id="upload-trace", size="md")
                C["download"] = gr.DownloadButton("⬇ Download this run's trace", value=None, interactive=False,
                                                  elem_id="download-trace", size="md")

            with gr.Column(scale=4, min_width=560, elem_id="main-col"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=300):
                        C["prompt"] = gr.Textbox(label="Prompt (chat)", lines=3, max_lines=8, elem_id="prompt",
                                                 placeholder="Ask the model something…", max_length=MAX_PROMPT_CHARS)
                        C["run_btn"] = gr.Button("▶ Run", variant="primary", elem_id="run-btn")
                        if prompts:
                            gr.Examples(prompts, inputs=[C["prompt"]], label="Example prompts", examples_per_page=8)
                    with gr.Column(scale=3, min_width=420):
                        C["status"] = gr.HTML(_msg("info", "Type a prompt and press Run, or open an example trace."),
                                              elem_id="status")
                        C["summary"] = gr.HTML("", elem_id="summary")
                        gr.HTML(legend_html())
                        C["answer"] = gr.HTML(tokens_html(None), elem_id="answer", js_on_load=TOKEN_CLICK_JS,
                                              max_height=360)

                C["cycle"] = gr.Slider(0, 1, value=0, step=1, label="Cycle", interactive=False, elem_id="cycle")
                C["cycle_info"] = gr.Markdown("", elem_id="cycle-info")
                with gr.Tabs():
                    with gr.Tab("Draft tree", id="tree"):
                        with gr.Row():
                            C["color_by"] = gr.Radio(COLOR_CHOICES, value="value", label="Colour nodes by", scale=2)
                            C["show_dropped"] = gr.Checkbox(
                                value=True, label="Show candidates dropped by the rerank (faded)", scale=2)
                        C["tree"] = gr.Plot(label="Draft tree of the selected cycle", elem_id="tree-plot")
                    with gr.Tab("Step-through", id="steps"):
                        with gr.Row(equal_height=True):
                            C["stage"] = gr.Radio(["Verify"], value="Verify", label="Stage of the selected cycle",
                                                  elem_id="stage", scale=6)
                            C["prev_btn"] = gr.Button("◀ Prev", size="md", scale=0, min_width=90)
                            C["next_btn"] = gr.Button("Next ▶", size="md", scale=0, min_width=90)
                            C["play_btn"] = gr.Button("Play all", size="md", variant="primary", scale=0, min_width=90)
                        C["stage_caption"] = gr.Markdown("", elem_id="stage-caption")
                        C["stage_plot"] = gr.Plot(label="The selected cycle, step by step", elem_id="stage-plot")
                    with gr.Tab("Insights", id="insights"):
                        with gr.Row():
                            C["chart_tokens_per_cycle"] = gr.Plot(show_label=False)
                            C["chart_time_split"] = gr.Plot(show_label=False)
                            C["chart_accepted_histogram"] = gr.Plot(show_label=False)
                        with gr.Row():
                            C["chart_acceptance_by_depth"] = gr.Plot(show_label=False)
                            C["chart_calibration"] = gr.Plot(show_label=False)
                            with gr.Column():
                                C["calib_by"] = gr.Radio([("draft value", "value"), ("confidence", "confidence")],
                                                         value="value", label="Calibration x-axis")
                                gr.Markdown(CALIBRATION_NOTE)
                        C["chart_context_dependence"] = gr.Plot(show_label=False)
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown("Run two policies on the same prompt (the one above), with the same model, "
                                    "head and sampling settings.")
                        with gr.Row():
                            for tag, (pol, k, d, t) in (("a", COMPARE_DEFAULT_A), ("b", COMPARE_DEFAULT_B)):
                                with gr.Column(variant="panel"):
                                    gr.Markdown(f"**{tag.upper()}**")
                                    C[f"cmp_policy_{tag}"] = gr.Dropdown(policy_choices(), value=pol, label="policy")
                                    with gr.Row():
                                        used = policy_sizes(pol)
                                        C[f"cmp_top_k_{tag}"] = gr.Slider(*LIMITS["top_k"], value=k, step=1,
                                                                          label="top_k", interactive="top_k" in used)
                                        C[f"cmp_depth_{tag}"] = gr.Slider(*LIMITS["depth"], value=d, step=1,
                                                                          label="depth", interactive="depth" in used)
                                        C[f"cmp_total_{tag}"] = gr.Slider(
                                            LIMITS["total_tokens"][0], min(LIMITS["total_tokens"][1],
                                                                           max_candidates(k, d)),
                                            value=t, step=1, label="total_tokens",
                                            interactive="total_tokens" in used)
                        C["cmp_btn"] = gr.Button("▶ Run A and B", variant="primary", elem_id="cmp-btn")
                        C["cmp_status"] = gr.HTML("")
                        C["cmp_table"] = gr.HTML("")
                        with gr.Row():
                            C["cmp_answer_a"] = gr.HTML("", max_height=220)
                            C["cmp_answer_b"] = gr.HTML("", max_height=220)
                        C["cmp_cycle"] = gr.Slider(0, 1, value=0, step=1, label="Cycle (same index in both runs)",
                                                   interactive=False)
                        with gr.Row():
                            C["cmp_tree_a"] = gr.Plot(show_label=False)
                            C["cmp_tree_b"] = gr.Plot(show_label=False)
                with gr.Accordion("How to read it", open=False):
                    gr.Markdown(INTRO)

        view_names = ["status", "trace", "summary", "cycle", "cycle_info", "answer", "tree", "stage", "stage_plot",
                      "stage_caption", "download"] + [f"chart_{k}" for k in (
                          "tokens_per_cycle", "time_split", "accepted_histogram", "acceptance_by_depth",
                          "calibration", "context_dependence")]
        views = [C[k] for k in view_names]
        run_inputs = [C[k] for k in RUN_INPUTS]

        # run (button / enter): streams the answer, then fills every view
        run_evt = C["run_btn"].click(wrap(run_handler, gen=True), run_inputs, views, api_name="run",
                                     concurrency_limit=4)
        C["prompt"].submit(wrap(run_handler, gen=True), run_inputs, views, api_name=False, concurrency_limit=4)
        del run_evt

        # cycle selection: slider, or a click on the answer's tokens
        cyc_out = [C[k] for k in ("cycle", "cycle_info", "answer", "tree", "stage", "stage_plot", "stage_caption")]

        def on_cycle(trace, cycle, color_by, show_dropped, stage):
            return cycle_outputs(trace, cycle, color_by, show_dropped, stage)

        C["cycle"].input(wrap(on_cycle), [trace_state, C["cycle"], C["color_by"], C["show_dropped"], C["stage"]],
                         cyc_out, trigger_mode="always_last", api_name=False)

        def on_token_click(trace, color_by, show_dropped, stage, evt: gr.EventData):
            data = getattr(evt, "_data", None) or {}
            cycle = data.get("cycle", 0) if isinstance(data, dict) else 0
            return cycle_outputs(trace, max(0, int(cycle or 0)), color_by, show_dropped, stage)

        def token_click(trace, color_by, show_dropped, stage, evt: gr.EventData):
            return {C[k]: v for k, v in on_token_click(trace, color_by, show_dropped, stage, evt).items()}

        C["answer"].click(token_click, [trace_state, C["color_by"], C["show_dropped"], C["stage"]], cyc_out,
                          api_name=False)

        def on_tree_opts(trace, cycle, color_by, show_dropped, stage):
            out = {"tree": safe_tree(trace, cycle, color_by=color_by, show_dropped=show_dropped)}
            out.update(stage_outputs(trace, cycle, stage, color_by))
            return out

        tree_out = [C["tree"], C["stage"], C["stage_plot"], C["stage_caption"]]
        for comp in (C["color_by"], C["show_dropped"]):
            comp.change(wrap(on_tree_opts), [trace_state, C["cycle"], C["color_by"], C["show_dropped"], C["stage"]],
                        tree_out, api_name=False)

        # step-through
        st_in = [trace_state, C["cycle"], C["stage"], C["color_by"]]
        st_out = [C["stage"], C["stage_plot"], C["stage_caption"]]

        def on_stage(trace, cycle, stage, color_by):
            return stage_outputs(trace, cycle, stage, color_by)

        def step(delta):
            def go(trace, cycle, stage, color_by):
                if trace is None or not trace.cycles:
                    return stage_outputs(trace, cycle, stage, color_by)
                names = stage_names(cycle_view(trace, _clamp_cycle(trace, cycle)))
                i = names.index(stage) if stage in names else 0
                return stage_outputs(trace, cycle, names[min(max(i + delta, 0), len(names) - 1)], color_by)
            go.__name__ = f"step_{'next' if delta > 0 else 'prev'}"
            return go

        def play(trace, cycle, stage, color_by):
            if trace is None or not trace.cycles:
                yield stage_outputs(trace, cycle, stage, color_by)
                return
            for name in stage_names(cycle_view(trace, _clamp_cycle(trace, cycle))):
                yield stage_outputs(trace, cycle, name, color_by)
                time.sleep(1.2)

        C["stage"].input(wrap(on_stage), st_in, st_out, api_name=False, trigger_mode="always_last")
        C["prev_btn"].click(wrap(step(-1)), st_in, st_out, api_name=False)
        C["next_btn"].click(wrap(step(+1)), st_in, st_out, api_name=False)
        C["play_btn"].click(wrap(play, gen=True), st_in, st_out, api_name=False)

        # insights
        def on_calib(trace, by):
            return {"chart_calibration": charts.calibration(trace, by) if trace is not None else None}

        C["calib_by"].change(wrap(on_calib), [trace_state, C["calib_by"]], [C["chart_calibration"]], api_name=False)

        # traces: upload / example
        def on_upload(path, color_by, show_dropped, calib_by):
            return open_trace_handler(path, color_by, show_dropped, calib_by, source="uploaded")

        def on_example(path, color_by, show_dropped, calib_by):
            if not path:
                return {"status": gr.skip()}
            return open_trace_handler(path, color_by, show_dropped, calib_by, source="example")

        opts = [C["color_by"], C["show_dropped"], C["calib_by"]]
        C["upload"].upload(wrap(on_upload), [C["upload"]] + opts, views, api_name="open_trace")
        C["example_trace"].change(wrap(on_example), [C["example_trace"]] + opts, views, api_name=False)

        # policy widgets: grey out the sizes a policy ignores; cap total_tokens by the tree's capacity
        def on_policy(name):  # a new policy: its own default sizes, and grey out the ones it ignores
            used, d = policy_sizes(name), policy_defaults(name)
            cap = min(LIMITS["total_tokens"][1], max_candidates(d["top_k"], d["depth"]))
            return (gr.update(value=d["top_k"], interactive="top_k" in used),
                    gr.update(value=d["depth"], interactive="depth" in used),
                    gr.update(value=min(d["total_tokens"], cap), maximum=cap, interactive="total_tokens" in used))

        def on_size(top_k, depth, total):  # total_tokens can't exceed what top_k x depth can hold
            cap = min(LIMITS["total_tokens"][1], max_candidates(int(top_k), int(depth)))
            return gr.update(maximum=cap, value=min(int(total), cap))

        for tag in ("", "cmp_a", "cmp_b"):
            pol, k, d, t = ((C["policy"], C["top_k"], C["depth"], C["total_tokens"]) if not tag else
                            (C[f"cmp_policy_{tag[-1]}"], C[f"cmp_top_k_{tag[-1]}"], C[f"cmp_depth_{tag[-1]}"],
                             C[f"cmp_total_{tag[-1]}"]))
            pol.input(on_policy, [pol], [k, d, t], api_name=False)
            for comp in (k, d):
                comp.input(on_size, [k, d, t], [t], api_name=False)

        # compare
        cmp_in = [C[k] for k in ("prompt", "target", "head", "temperature", "top_p", "max_new_tokens", "seed",
                                 "cmp_policy_a", "cmp_top_k_a", "cmp_depth_a", "cmp_total_a",
                                 "cmp_policy_b", "cmp_top_k_b", "cmp_depth_b", "cmp_total_b", "color_by")]
        cmp_out = [C[k] for k in ("cmp_status", "cmp_state", "cmp_table", "cmp_cycle", "cmp_answer_a",
                                  "cmp_answer_b", "cmp_tree_a", "cmp_tree_b")]
        C["cmp_btn"].click(wrap(compare_handler, gen=True), cmp_in, cmp_out, api_name="compare", concurrency_limit=4)

        def on_cmp_cycle(state, cycle, color_by):
            if not state:
                return {"cmp_status": gr.skip()}
            return compare_outputs(state[0], state[1], cycle, color_by)

        C["cmp_cycle"].input(wrap(on_cmp_cycle), [cmp_state, C["cmp_cycle"], C["color_by"]], cmp_out,
                             trigger_mode="always_last", api_name=False)

        # open the first example trace on page load, so the whole UI shows something at once
        if examples:
            def on_load(color_by, show_dropped, calib_by):
                out = open_trace_handler(examples[0][1], color_by, show_dropped, calib_by, source="example")
                out["example_trace"] = gr.update(value=None)
                return out

            demo.load(wrap(on_load), opts, views + [C["example_trace"]], api_name=False)
    demo.tl_components = C  # for tests
    return demo


def _preload():
    try:
        MODELS.target("default")
    except Exception as e:
        print(f"[tree-lab] the default model could not be preloaded: {e}")


def limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas: each Gradio worker thread otherwise keeps its own freed memory,
    and the RSS climbs with every concurrent user (no leak, but it looks like one)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def main():
    limit_malloc_arenas()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if os.environ.get("EAGLE2_APP_PRELOAD", "1") != "0":
        threading.Thread(target=_preload, name="tree-lab-preload", daemon=True).start()
    demo = build_app()
    demo.queue(default_concurrency_limit=4, max_size=32)
    theme = gr.themes.Soft(primary_hue="blue", neutral_hue="slate",
                           font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                           font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"])
    demo.launch(css=APP_CSS, theme=theme, max_file_size=MAX_TRACE_BYTES + 1024 * 1024, ssr_mode=False,
                show_error=True, run_history=False, footer_links=["api", "settings"])


if __name__ == "__main__":
    main()
