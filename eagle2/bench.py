"""Benchmark: decoding methods on a question set, interleaved, with speedups and a report.

    python -m eagle2 bench --questions ../shared/data/mt_bench.jsonl --methods hf,vanilla,eagle2

Questions are FastChat / Spec-Bench JSONL (`question_id`, `category`, `turns`). Multi-turn
questions run as in MT-bench: turn 2 follows the method's own turn-1 answer, through the chat
template. For each question the methods take turns (their order rotates from question to
question) so slow spells of a shared machine hit all of them alike; one warm-up generation per
method on a prompt of our own comes first.

Methods:
    hf        HF generate() (greedy or sampling): the reference speed
    pld       HF prompt lookup decoding (prompt_lookup_num_tokens = --pld-tokens)
    vanilla   our decode loop without drafting (policy Vanilla)
    chain     a chain of --depth top-1 drafts from the EAGLE head
    eagle1    EAGLE-1's static tree
    eagle2    EAGLE-2's dynamic tree; --total-tokens auto (default) sizes it per cycle for this
              machine (eagle2.autotree), an integer fixes it
    others    any other registered policy (eagle2-auto, eagle2-auto+lookup, plug-ins)

Every method but hf and pld is a policy spec of eagle2.registry (its module doc has the
syntax and keys), so variants compare in one interleaved run, e.g.
`eagle2,eagle2@total=12,eagle2@vocab=8192,eagle2@lookup=10`: total, depth, topk; vocab = a
reduced draft vocabulary of that many tokens (eagle2.vocab); with total=auto also dyn=0 (no
dynamic depth), cal=0 (no acceptance calibration), lookup=N (prompt-lookup chains of up to N
copied tokens, eagle2.lookup) and anchors=A. The flags --top-k, --depth, --total-tokens,
--lookup and --draft-vocab fill what a method's options leave unset.

Outputs in --out: answers.jsonl (one line per question and method: answers, per-turn stats and
tokens), summary.json ({"methods": {...}, "by_category": {...}, "config": {...}, "machine": {...}}),
summary.csv and report.html (Plotly). Aggregates are totals: tokens_per_s = new tokens / seconds,
tau = new tokens / target forwards (1.0 for plain decoding), mean_accepted = tokens per drafting
cycle (EAGLE's τ), identical_to_vanilla = share of answers token-identical to vanilla's;
median_speedup_vs_* = the median over answers of the per-answer speedup (robust to the odd
answer a busy machine slowed down). In bf16, tree and one-token forwards round differently, so
near-ties in the logits can flip and answers drift apart; --dtype float32 checks exactness.
With --calibration, summary.json also gets "calibration": per drafting method, drafted nodes
binned by draft value against the share accepted, and tested nodes by confidence
(eagle2.calibration); the CLI prints the value table.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import device_map_arg, draft_vocab_arg, int_at_least, positive_int, total_tokens_arg
from .models import DTYPE_CHOICES, DTYPE_HELP

if TYPE_CHECKING:
    from .registry import PolicySpec

_nonneg = int_at_least(0)

HF_METHODS = ("hf", "pld")  # HF generate; every other method is a policy of eagle2.registry
DEFAULT_METHODS = "hf,vanilla,pld,chain,eagle1,eagle2,eagle2@lookup=10"
WARMUP_PROMPT = "Write two sentences about the sea."
SUMMARY_KEYS = ("tau", "tokens_per_s", "speedup_vs_hf", "speedup_vs_vanilla", "identical_to_vanilla",
                "new_tokens", "seconds")
CSV_KEYS = ("method",) + SUMMARY_KEYS + ("median_speedup_vs_hf", "median_speedup_vs_vanilla", "mean_accepted",
                                         "turns", "mean_tree_size", "draft_s", "verify_s", "prefill_s")


class BenchError(ValueError):
    """Bad input: one line on stderr, exit code 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)" / "(default: False)"
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of the usage block
        raise BenchError(message)


# ---- questions -------------------------------------------------------------------------------
@dataclass
class Question:
    id: str | int
    category: str
    turns: list[str]


def load_questions(path: str | os.PathLike, limit: int | None = None, category: str | None = None,
                   first_turn_only: bool = False) -> list[Question]:
    """FastChat / Spec-Bench question JSONL: `turns` (a list of user messages, or one string);
    `prompt` / `question` / `instruction` are accepted for single-turn files."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"questions file {path} does not exist")
    out: list[Question] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BenchError(f"{path}:{n}: expected a JSON object per line")
            turns = row.get("turns")
            if turns is None:
                turns = next((row[k] for k in ("prompt", "question", "instruction") if k in row), None)
            if isinstance(turns, str):
                turns = [turns]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise BenchError(f"{path}:{n}: needs 'turns', a non-empty list of non-empty strings")
            out.append(Question(row.get("question_id", n), str(row.get("category", "all")),
                                turns[:1] if first_turn_only else list(turns)))
    if not out:
        raise BenchError(f"{path} holds no questions")
    if category:
        cats = sorted({q.category for q in out})
        out = [q for q in out if q.category == category]
        if not out:
            raise BenchError(f"no questions of category {category!r} (there are: {', '.join(cats)})")
    return out[:limit] if limit else out


# ---- methods ---------------------------------------------------------------------------------
def method_names() -> list[str]:
    from . import registry

    return [*HF_METHODS, *registry.names()]


@dataclass
class MethodSpec:
    name: str  # as given, the key in every output
    base: str
    options: dict = field(default_factory=dict)  # as written after the name (keys of eagle2.registry)
    policy: PolicySpec | None = None  # the parsed spec (eagle2.registry); None for hf and pld

    @property
    def drafting(self) -> bool:
        from . import registry

        return self.policy is not None and registry.policy_info(self.base).needs_drafter


def parse_methods(text: str) -> list[MethodSpec]:
    """Comma-separated methods: hf, pld, or policy specs (eagle2.registry.split_specs / parse_spec)."""
    from . import registry

    specs, seen = [], set()
    for item in registry.split_specs(text):
        base = registry.spec_name(item)
        if base not in method_names():
            raise BenchError(f"unknown method {base!r}: choose from {', '.join(method_names())}")
        policy = None
        if base in HF_METHODS and item != base:
            raise BenchError(f"method {base!r} takes no options")
        if base not in HF_METHODS:
            try:
                policy = registry.parse_spec(item)
            except (ValueError, TypeError) as e:
                raise BenchError(str(e)) from None
        if item in seen:
            raise BenchError(f"method {item!r} is given twice")
        seen.add(item)
        specs.append(MethodSpec(item, base, dict(policy.options) if policy else {}, policy))
    if not specs:
        raise BenchError("no methods given")
    return specs


def method_policy(spec: MethodSpec, args):
    """A method's checked policy (registry.PolicyChoice; None for hf and pld): the size, lookup
    and vocabulary flags fill what its options leave unset."""
    if spec.policy is None:
        return None
    from . import registry

    try:
        return registry.resolve_policy(spec.policy, defaults={
            "top_k": args.top_k, "depth": args.depth, "total_tokens": args.total_tokens, "lookup": args.lookup,
            "draft_vocab": args.draft_vocab})
    except (ValueError, TypeError) as e:
        raise BenchError(f"{spec.name}: {e}") from None


def _temperature(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0) or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m eagle2 bench", description=__doc__.split("\n\n")[0],
                formatter_class=_Formatter)
    p.add_argument("--questions", required=True, metavar="FILE.jsonl", help="FastChat / Spec-Bench question file")
    p.add_argument("--limit", type=positive_int, default=None, help="first N questions (after --category)")
    p.add_argument("--category", default=None, help="only questions of this category")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated: hf, pld or policies of eagle2.registry (" + ", ".join(method_names()[2:])
                        + "), with options after '@' (see the module doc)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="per answer")
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling nucleus (with --temperature > 0)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    where.add_argument("--device-map", type=device_map_arg, default=None, metavar="auto|balanced|FILE.json",
                       help="spread a target too big for one device over several (accelerate; FILE.json = "
                            "{module name: device}); the EAGLE head sits with the last layers")
    p.add_argument("--model", default="default", help="target: default | hub id | folder")
    p.add_argument("--head", default="default", help="EAGLE head: default | hub id | folder")
    p.add_argument("--first-turn-only", action="store_true", help="skip second turns")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-DATE-TIME)")
    p.add_argument("--top-k", type=positive_int, default=None, help="eagle2: children per expanded node")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="chain/eagle2: draft depth (with --total-tokens auto: the ceiling)")
    p.add_argument("--total-tokens", type=total_tokens_arg, default="auto", help="eagle2: kept draft tokens, or auto")
    p.add_argument("--draft-vocab", type=draft_vocab_arg, default="auto",
                   help="drafting methods: reduced draft vocabulary size (0 = full; auto = the head's token "
                        "counts where that makes a draft step cheaper here, eagle2.vocab)")
    p.add_argument("--vocab-counts", default=None, metavar="FILE",
                   help="token counts for --draft-vocab (counts JSON or the head's answers.jsonl)")
    p.add_argument("--lookup", type=_nonneg, default=0, metavar="N",
                   help="eagle2 (auto): merge a prompt-lookup chain of up to N copied tokens into the tree "
                        "(eagle2.lookup; 0 = off)")
    p.add_argument("--pld-tokens", type=positive_int, default=10, help="pld: prompt_lookup_num_tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (question i, turn t: seed + 1000 i + t)")
    p.add_argument("--threads", type=_nonneg, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--recalibrate", action="store_true", help="auto tree size: measure the latency curve again")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation per method")
    p.add_argument("--calibration", action="store_true",
                   help="drafting methods: tally draft value and confidence against acceptance for every "
                        "verified node (costs a softmax per node: their timings include it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    return p


# ---- running -----------------------------------------------------------------------------------
def encode_conversation(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template token ids of a conversation, ending with the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return list(tokenizer(text)["input_ids"])


class Method:
    """One benchmarked method: how to run it and what it accumulated."""

    def __init__(self, spec: MethodSpec, policy=None, drafter=None):
        self.spec, self.policy, self.drafter = spec, policy, drafter
        self.tree_sizes: Counter = Counter()
        self.tally = None  # an AcceptanceTally with --calibration

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict:
        d = {"base": self.spec.base, **self.spec.options}
        if self.policy is not None:
            d.update(self.policy.describe())
        if self.drafter is not None:
            d["drafter"] = getattr(self.drafter, "name", None)
            d["head_kind"] = getattr(self.drafter, "kind", None)
            if getattr(self.drafter, "draft_vocab", None):
                d["draft_vocab"] = self.drafter.draft_vocab
        return d


class ForwardCounter:
    """Counts the top-level forwards of an HF model (HF generate's target forwards)."""

    def __init__(self, model):
        self.model, self.count, self._handle = model, 0, None

    def __enter__(self):
        self.count = 0
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, *_):
        self.count += 1

    def __exit__(self, *exc):
        self._handle.remove()


def run_turn(target, method: Method, ids: list[int], max_new_tokens: int, args, seed: int) -> dict:
    """Generate one answer; returns its stats (and tokens)."""
    from .decode import generate, hf_generate

    eos = target.eos_token_ids
    base = method.spec.base
    if base in ("hf", "pld"):
        with ForwardCounter(target.model) as fc:
            res = hf_generate(target.model, ids, max_new_tokens=max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=seed, eos_token_ids=eos,
                              prompt_lookup=args.pld_tokens if base == "pld" else None)
        forwards, cycles = fc.count, []
    else:
        observers = [method.policy] if _is_observer(method.policy) else []
        if method.tally is not None:
            observers.append(method.tally)
        res = generate(target.model, ids, method.policy, method.drafter, max_new_tokens=max_new_tokens,
                       temperature=args.temperature, top_p=args.top_p, seed=seed, eos_token_ids=eos,
                       observers=observers)
        forwards, cycles = res.target_forwards, res.cycles
        method.tree_sizes.update(c.tree_size for c in cycles)
    n = len(res.tokens)
    return {
        "prompt_tokens": len(ids), "new_tokens": n, "seconds": res.seconds,
        "tokens_per_s": n / res.seconds if res.seconds > 0 else 0.0,
        "target_forwards": forwards, "tau": n / forwards if forwards else None,
        "cycles": len(cycles), "cycle_tokens": sum(c.new_tokens for c in cycles),
        "mean_accepted": sum(c.new_tokens for c in cycles) / len(cycles) if cycles else None,
        "mean_tree_size": sum(c.tree_size for c in cycles) / len(cycles) if cycles else None,
        "prefill_s": res.prefill_s, "draft_s": sum(c.draft_s for c in cycles),
        "verify_s": sum(c.verify_s for c in cycles), "update_s": sum(c.update_s for c in cycles),
        "stop_reason": res.stop_reason, "max_new_tokens": max_new_tokens, "tokens": list(res.tokens),
    }


def _is_observer(policy) -> bool:
    from .trace import Observer

    return isinstance(policy, Observer)


class _Shared:
    """What the methods share, loaded on first use: the head, the token counts, one drafter
    per draft vocabulary size, the latency curve; `extra` is config to record."""

    def __init__(self, target, args, log):
        self.target, self.args, self.log = target, args, log
        self.extra: dict = {}
        self.head = self.head_dir = self.counts = self.latency_curve = None
        self.drafters: dict[int, object] = {}

    def drafter(self, vocab: int | str):
        target, args = self.target, self.args
        if self.head is None:
            from .draft import load_head, resolve_head

            self.head_dir = resolve_head(args.head, target)
            self.head = load_head(self.head_dir, target)
        if vocab in self.drafters:
            return self.drafters[vocab]
        from .draft import EagleDrafter
        from .draft import reduce_drafter
        from .vocab import coverage

        drafter = EagleDrafter(self.head, target.model, name=str(args.head))
        if vocab == "auto" and not args.vocab_counts:
            drafter = reduce_drafter(drafter, target, self.head_dir, "auto")
        elif vocab:
            if self.counts is None:
                from .vocab import counts_for

                self.log("counting token frequencies for the reduced draft vocabulary ...")
                self.counts, source = counts_for(target, self.head_dir, args.vocab_counts)
                self.extra["vocab_counts"] = source
            size = 8192 if vocab == "auto" else vocab
            drafter = reduce_drafter(drafter, target, self.head_dir, size, counts=self.counts)
            ids = drafter.token_ids  # None: the size covers the whole vocabulary
            if ids is not None:
                self.extra.setdefault("vocab_coverage_of_counts", {})[str(size)] = round(
                    coverage(self.counts, ids.tolist()), 5)
        self.drafters[vocab] = drafter
        return drafter

    def latency(self):
        if self.latency_curve is None:
            from .autotree import load_or_calibrate

            self.log("verify latency against tree size (calibrated once per machine + model + dtype) ...")
            lat = self.latency_curve = load_or_calibrate(self.target.model, refresh=self.args.recalibrate)
            self.extra["latency"] = {"sizes": lat.sizes, "seconds": lat.seconds,
                                     "cache_file": lat.meta.get("cache_file"), "cached": lat.meta.get("cached")}
        return self.latency_curve


def build_methods(specs: list[MethodSpec], choices: list, target, args, log) -> tuple[list[Method], dict]:
    """Policies (from each method's checked registry.PolicyChoice) and drafters for each method;
    the head, vocabulary counts and latency curve are loaded once and shared. Returns the
    methods and extra config to record."""
    shared = _Shared(target, args, log)
    methods = []
    for spec, choice in zip(specs, choices):
        if choice is None:  # hf, pld
            methods.append(Method(spec))
            continue
        drafter = shared.drafter(choice.draft_vocab) if choice.needs_drafter else None
        latency = shared.latency() if choice.needs_target else None
        methods.append(Method(spec, choice.build(target=target, latency=latency), drafter))
    return methods, shared.extra


# ---- aggregation ----------------------------------------------------------------------------
def aggregate(rows: list[dict]) -> dict:
    """Totals over turns: rates are total / total, never means of per-answer rates."""
    new = sum(r["new_tokens"] for r in rows)
    secs = sum(r["seconds"] for r in rows)
    fwd = sum(r["target_forwards"] for r in rows)
    cyc = sum(r["cycles"] for r in rows)
    ident = [r["identical_to_vanilla"] for r in rows if r.get("identical_to_vanilla") is not None]
    return {
        "tau": new / fwd if fwd else None,
        "tokens_per_s": new / secs if secs > 0 else 0.0,
        "identical_to_vanilla": sum(ident) / len(ident) if ident else None,
        "new_tokens": new, "seconds": secs, "turns": len(rows),
        "mean_accepted": sum(r["cycle_tokens"] for r in rows) / cyc if cyc else None,
        "mean_tree_size": sum((r["mean_tree_size"] or 0) * r["cycles"] for r in rows) / cyc if cyc else None,
        "draft_s": sum(r["draft_s"] for r in rows), "verify_s": sum(r["verify_s"] for r in rows),
        "prefill_s": sum(r["prefill_s"] for r in rows),
    }


def add_speedups(table: dict) -> dict:
    for name, m in table.items():
        for ref in ("hf", "vanilla"):
            r = table.get(ref)
            m[f"speedup_vs_{ref}"] = (m["tokens_per_s"] / r["tokens_per_s"]
                                      if r and r["tokens_per_s"] > 0 else None)
    return table


def summarize(records: list[dict], names: list[str]) -> tuple[dict, dict]:
    """(methods, by_category) from the answer records."""
    rows: dict[str, list[dict]] = defaultdict(list)
    cat_rows: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        rows[rec["method"]].extend(rec["turn_stats"])
        cat_rows[rec["category"]][rec["method"]].extend(rec["turn_stats"])
    methods = add_speedups({n: aggregate(rows[n]) for n in names if rows[n]})
    by_cat = {c: add_speedups({n: aggregate(v[n]) for n in names if v[n]}) for c, v in sorted(cat_rows.items())}
    add_median_speedups(methods, records)
    return methods, by_cat


def add_median_speedups(methods: dict, records: list[dict]) -> None:
    """Median over answers of (tokens/s) / (the reference's tokens/s on the same question and
    turn): robust to the odd answer that a busy machine slowed down tenfold."""
    tps = {(r["method"], r["question_id"], s["turn"]): s["tokens_per_s"] for r in records for s in r["turn_stats"]}
    for name, m in methods.items():
        for ref in ("hf", "vanilla"):
            ratios = sorted(v / tps[(ref, q, t)] for (n, q, t), v in tps.items()
                            if n == name and tps.get((ref, q, t), 0) > 0)
            m[f"median_speedup_vs_{ref}"] = _median(ratios) if ratios else None


def _median(xs: list[float]) -> float:
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2


def _round(x, nd=4):
    if isinstance(x, float):
        return round(x, nd) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    return x


def format_table(methods: dict) -> str:
    cols = [("method", "{}"), ("tau", "{:.2f}"), ("tok/s", "{:.1f}"), ("x hf", "{:.2f}"), ("x vanilla", "{:.2f}"),
            ("median x vanilla", "{:.2f}"), ("identical", "{:.0%}"), ("tokens", "{}"), ("seconds", "{:.1f}")]
    keys = [None, "tau", "tokens_per_s", "speedup_vs_hf", "speedup_vs_vanilla", "median_speedup_vs_vanilla",
            "identical_to_vanilla", "new_tokens", "seconds"]
    lines = []
    for name, m in methods.items():
        cells = [name] + [("-" if m.get(k) is None else f.format(m[k])) for (_, f), k in zip(cols[1:], keys[1:])]
        lines.append(cells)
    widths = [max(len(c[0]), *(len(row[i]) for row in lines)) for i, c in enumerate(cols)]
    head = "  ".join(c[0].ljust(w) if i == 0 else c[0].rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    body = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
            for row in lines]
    return "\n".join([head, "-" * len(head), *body])


# ---- outputs ----------------------------------------------------------------------------------
def write_csv(methods: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_KEYS)
        for name, m in methods.items():
            w.writerow([name] + ["" if m.get(k) is None else m.get(k) for k in CSV_KEYS[1:]])


def write_report(summary: dict, path: Path, tree_sizes: dict | None = None) -> None:
    """A self-contained Plotly page: speedups, τ and speedup by category, latency curve
    (just the tables when plotly is not installed)."""
    methods = summary["methods"]
    try:
        figs = _figures(summary, tree_sizes)
        import plotly.io as pio

        parts = [pio.to_html(f, full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    except ImportError:
        parts = ["<p>(plotly is not installed: no charts)</p>"]
    cfg = summary.get("config", {})
    mach = summary.get("machine", {})
    rows = "".join(
        "<tr>" + f"<td>{html.escape(n)}</td>" + "".join(
            f"<td>{'' if m.get(k) is None else (f'{m[k]:.3f}' if isinstance(m[k], float) else m[k])}</td>"
            for k in SUMMARY_KEYS) + "</tr>" for n, m in methods.items())
    table = ("<table><tr><th>method</th>" + "".join(f"<th>{k}</th>" for k in SUMMARY_KEYS) + "</tr>"
             + rows + "</table>")
    esc = html.escape
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>eagle2 bench</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}</style></head>
<body><h1>eagle2 bench</h1>
<p>{esc(str(cfg.get('model', '')))} · {esc(str(cfg.get('dtype', '')))} · {esc(str(cfg.get('questions_file', '')))}
({cfg.get('questions', '')} questions, {cfg.get('turns', '')} turns) · max_new_tokens {cfg.get('max_new_tokens', '')}
· temperature {cfg.get('temperature', '')} · {esc(str(mach.get('gpu') or mach.get('cpu', '')))},
{mach.get('torch_threads', '')} threads</p>
{table}
{''.join(parts)}
<h2>Config</h2><pre>{esc(json.dumps(cfg, indent=1, default=str))}</pre>
<h2>Machine</h2><pre>{esc(json.dumps(mach, indent=1, default=str))}</pre>
</body></html>"""
    path.write_text(page, encoding="utf-8")


def _figures(summary: dict, tree_sizes: dict | None) -> list:
    import plotly.graph_objects as go

    methods = summary["methods"]
    names = list(methods)
    figs = []

    fig = go.Figure()
    for ref, colour in (("hf", "#4c78a8"), ("vanilla", "#f58518")):
        vals = [methods[n].get(f"speedup_vs_{ref}") for n in names]
        if any(v is not None for v in vals):
            fig.add_bar(name=f"vs {ref}", x=names, y=vals, marker_color=colour,
                        text=[f"{v:.2f}x" if v is not None else "" for v in vals], textposition="outside")
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_layout(title="Speedup (tokens/s over tokens/s)", barmode="group", yaxis_title="speedup")
    figs.append(fig)

    fig = go.Figure()
    fig.add_bar(x=names, y=[methods[n]["tokens_per_s"] for n in names], marker_color="#54a24b",
                text=[f"{methods[n]['tokens_per_s']:.1f}" for n in names], textposition="outside")
    fig.update_layout(title="Throughput", yaxis_title="new tokens / s")
    figs.append(fig)

    by_cat = summary.get("by_category", {})
    cats = list(by_cat)
    for key, title, ytitle in (("tau", "τ (new tokens per target forward) by category", "τ"),
                               ("speedup_vs_hf", "Speedup vs HF generate by category", "speedup"),
                               ("speedup_vs_vanilla", "Speedup vs vanilla by category", "speedup")):
        fig = go.Figure()
        for n in names:
            ys = [by_cat[c].get(n, {}).get(key) for c in cats]
            if any(y is not None for y in ys):
                fig.add_bar(name=n, x=cats, y=ys)
        if fig.data:
            fig.update_layout(title=title, barmode="group", yaxis_title=ytitle)
            figs.append(fig)

    lat = summary.get("config", {}).get("latency")
    if lat:
        fig = go.Figure()
        fig.add_scatter(x=lat["sizes"], y=[1e3 * s for s in lat["seconds"]], mode="lines+markers",
                        name="calibrated")
        fig.update_layout(title="Verify latency vs tree tokens (calibration)", xaxis_title="tree tokens (root + drafts)",
                          yaxis_title="ms")
        figs.append(fig)
    cal = summary.get("calibration") or {}
    if cal:
        fig = go.Figure()
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                        line=dict(color="grey", dash="dash"))
        for n, c in cal.items():
            for by, dash in (("by_value", "solid"), ("by_confidence", "dot")):
                rows = c[by]
                fig.add_scatter(x=[r["mean"] for r in rows], y=[r["rate"] for r in rows], mode="lines+markers",
                                name=f"{n} {by.replace('_', ' ')}", line=dict(dash=dash),
                                text=[f"{r['n']} nodes" for r in rows])
        fig.update_layout(title="Calibration: draft value (all nodes) and confidence (tested nodes) vs acceptance",
                          xaxis_title="draft value / confidence (bin mean)", yaxis_title="measured acceptance rate")
        figs.append(fig)
    if tree_sizes:
        fig = go.Figure()
        for n, counts in tree_sizes.items():
            if counts:
                xs = sorted(counts)
                total = sum(counts.values())
                fig.add_bar(name=n, x=xs, y=[counts[x] / total for x in xs])
        if fig.data:
            fig.update_layout(title="Draft tree sizes per cycle", xaxis_title="draft tokens verified",
                              yaxis_title="share of cycles", barmode="group")
            figs.append(fig)

    return figs


class _NoBar:
    def update(self, n=1): ...
    def set_postfix_str(self, s): ...
    def close(self): ...


def _progress(total: int, quiet: bool):
    if quiet:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="bench", unit="answer", file=sys.stderr)


# ---- main -----------------------------------------------------------------------------------
def machine_info() -> dict:
    """The calibration's machine facts (eagle2.precision) plus the CPU's model name."""
    from .precision import cpu_model, machine_info as facts

    return {**facts(), "cpu": cpu_model()}


def run(args) -> dict:
    import torch

    from .decode import context_limit
    from .models import cache_dir, load_target
    from .precision import LayerShapes, cached_probe, has_cpu_bf16

    specs = parse_methods(args.methods)
    choices = [method_policy(s, args) for s in specs]  # checked before the model loads
    questions = load_questions(args.questions, args.limit, args.category, args.first_turn_only)
    if args.top_p is not None and not (0 < args.top_p <= 1):
        raise BenchError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file")
    quiet = args.no_progress

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"loading {args.model} ...")
    try:
        target = load_target(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    except ValueError as e:
        raise BenchError(str(e)) from None
    tok = target.tokenizer
    try:
        methods, extra = build_methods(specs, choices, target, args, log)
    except (ValueError, TypeError) as e:
        raise BenchError(str(e)) from None

    limit = context_limit(target.model)
    out.mkdir(parents=True, exist_ok=True)

    def budget(ids: list[int]) -> int:
        return min(args.max_new_tokens, limit - len(ids))

    if not args.no_warmup:  # first calls of every shape allocate; drafters and policies settle
        ids = encode_conversation(tok, [{"role": "user", "content": WARMUP_PROMPT}])
        for m in methods:
            run_turn(target, m, ids, max(1, min(32, budget(ids))), args, args.seed)
            m.tree_sizes.clear()

    names = [m.name for m in methods]
    if args.calibration:
        from .calibration import AcceptanceTally

        for m in methods:
            if m.spec.drafting:
                m.tally = AcceptanceTally()
    total = sum(len(q.turns) for q in questions) * len(methods)
    bar = _progress(total, quiet)
    records: list[dict] = []
    t_start = time.time()
    with open(out / "answers.jsonl", "w", encoding="utf-8") as answers_file:
        for qi, q in enumerate(questions):
            shift = qi % len(methods)
            order = methods[shift:] + methods[:shift]
            history: dict[str, list[dict]] = {m.name: [] for m in methods}
            stats: dict[str, list[dict]] = {m.name: [] for m in methods}
            texts: dict[str, list[str]] = {m.name: [] for m in methods}
            for ti, turn in enumerate(q.turns):
                for m in order:
                    messages = history[m.name] + [{"role": "user", "content": turn}]
                    ids = encode_conversation(tok, messages)
                    n = budget(ids)
                    if n < 1:
                        raise BenchError(f"question {q.id} turn {ti + 1}: the prompt ({len(ids)} tokens) fills "
                                         f"the model's context ({limit})")
                    s = run_turn(target, m, ids, n, args, args.seed + 1000 * qi + ti)
                    text = tok.decode(s["tokens"], skip_special_tokens=True).strip()
                    history[m.name] = messages + [{"role": "assistant", "content": text}]
                    s["turn"] = ti + 1
                    stats[m.name].append(s)
                    texts[m.name].append(text)
                    bar.set_postfix_str(f"q{q.id} {m.name} {s['tokens_per_s']:.1f} tok/s")
                    bar.update(1)
            ref = stats.get("vanilla")
            for m in methods:
                for ti, s in enumerate(stats[m.name]):
                    s["identical_to_vanilla"] = (s["tokens"] == ref[ti]["tokens"]) if ref else None
                rec = {"question_id": q.id, "category": q.category, "method": m.name, "turns": texts[m.name],
                       "turn_stats": stats[m.name]}
                records.append(rec)
                answers_file.write(json.dumps(_round(rec, 6), ensure_ascii=False) + "\n")
            answers_file.flush()
    bar.close()

    table, by_cat = summarize(records, names)
    autotree = {m.name: m.policy.stats() for m in methods if hasattr(m.policy, "stats")}
    config = {
        "questions_file": str(args.questions), "questions": len(questions),
        "turns": sum(len(q.turns) for q in questions), "limit": args.limit, "category": args.category,
        "first_turn_only": args.first_turn_only, "methods": {m.name: m.describe() for m in methods},
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "seed": args.seed, "model": target.name, "head": args.head, "dtype": target.precision,
        "device": str(target.device), "device_map": target.device_map, "pld_tokens": args.pld_tokens,
        "draft_vocab": args.draft_vocab, "lookup": args.lookup,
        "warmup": not args.no_warmup, "wall_s": time.time() - t_start, "autotree": autotree,
        "method_order": "rotated per question", **extra,
    }
    decided_by_probe = args.dtype == "auto" and target.device.type == "cpu"
    probe = cached_probe(LayerShapes.of(target.config), cache_dir()) if decided_by_probe else None
    machine = {**machine_info(), "cpu_bf16": has_cpu_bf16(), "loadavg_start": load0,
               "precision_probe_ms": probe.ms if probe else None,  # what --dtype auto measured (eagle2.precision)
               "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    summary = {"methods": _round(table, 6), "by_category": _round(by_cat, 6), "config": _round(config, 6),
               "machine": machine}
    if args.calibration:
        summary["calibration"] = _round({m.name: {"nodes": len(m.tally.nodes), "by_value": m.tally.table("value"),
                                                  "by_confidence": m.tally.table("confidence")}
                                         for m in methods if m.tally is not None}, 6)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    write_csv(summary["methods"], out / "summary.csv")
    write_report(summary, out / "report.html",
                 {m.name: m.tree_sizes for m in methods if m.spec.drafting})
    summary["out"] = str(out)
    return summary


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        summary = run(args)
    except BenchError as e:
        print(f"eagle2 bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(format_table(summary["methods"]))
    from .calibration import format_table as calibration_table

    for name, cal in summary.get("calibration", {}).items():
        print(f"\n{name}: draft value vs acceptance ({cal['nodes']} drafted nodes)")
        print(calibration_table(cal["by_value"], "value"))
    print(f"\nwrote {summary['out']}/ (answers.jsonl, summary.json, summary.csv, report.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
