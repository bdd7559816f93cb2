"""Engine A/B: this checkout's decoder against another checkout's, in one process, one run.

Both decoders share the loaded target and the same head weights; for each question the
methods take turns (order rotating), so a slow spell of the machine hits both alike. The
other checkout's `eagle2/` is imported under the name `eagle2_before` (its imports are
relative). Greedy outputs are compared token for token.

    PYTHONPATH=. python scripts/engine_ab.py /tmp/old --questions ../shared/data/mt_bench.jsonl \
        --max-new-tokens 256 --threads 1 --out runs/ab-mt

With --before-dtype the other checkout runs on a second target of that precision (its own head
copy and its own `hf before` baseline): e.g. float32, the previous auto choice on a CPU without
native bf16, against this checkout's auto (fp16-weights there).

With --before-library-norms the other checkout runs on a second target of the same precision
whose RMSNorms are transformers' own (as every checkout before eagle2.norms ran them), with its
own `hf before` baseline: the one-call norms are then counted as this checkout's, as they are
new code with the same numbers; the fp16 packing stays shared (a precision, chosen alike).

With --before-library-linears (a bf16 target on a CPU) the other checkout's target and head keep
plain nn.Linear layers where this checkout packs bf16 weights for oneDNN (eagle2.packed): the
same numbers, so the packing counts as this checkout's code, with its own `hf before` baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import eagle2
from eagle2.attention import TREE_SDPA, set_attention
from eagle2.bench import load_questions
from eagle2.precision import cpu_model
from eagle2.registry import make_policy


def import_before(checkout: Path):
    """The other checkout's eagle2 package, as module `eagle2_before`."""
    tmp = Path(tempfile.mkdtemp(prefix="eagle2-before-"))
    shutil.copytree(checkout / "eagle2", tmp / "eagle2_before", ignore=shutil.ignore_patterns("heads", "__pycache__"))
    spec = importlib.util.spec_from_file_location("eagle2_before", tmp / "eagle2_before" / "__init__.py",
                                                  submodule_search_locations=[str(tmp / "eagle2_before")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eagle2_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def restore_library_norms(model) -> int:
    """Put transformers' norm back where eagle2.norms swapped in a one-call norm (same weight)."""
    from eagle2.norms import OneCallRMSNorm, swap_modules

    def make(child):
        if not isinstance(child, OneCallRMSNorm):
            return None
        norm = child.library_class(child.normalized_shape[0], eps=child.variance_epsilon)
        norm.weight = child.weight
        return norm

    return swap_modules(model, make)


def restore_library_linears(model) -> int:
    """Put a plain nn.Linear (same weight and bias) back where eagle2.packed packed bf16 weights."""
    from torch import nn

    from eagle2.norms import swap_modules
    from eagle2.packed import FBGEMM_FP16, PackedLinear

    def make(child):
        if not isinstance(child, PackedLinear) or child.format is FBGEMM_FP16:
            return None
        linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        linear.weight, linear.bias = child.weight, child.bias
        return linear

    return swap_modules(model, make)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="the other checkout (e.g. a git worktree of the previous commit)")
    ap.add_argument("--questions", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--methods", default="eagle2,eagle2@lookup=10", help="each run by both decoders")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--full-vocab", action="store_true", help="also run eagle2 now with the whole vocabulary")
    ap.add_argument("--dtype", default="auto", help="this checkout's target precision (--dtype of the CLI)")
    ap.add_argument("--before-dtype", default=None,
                    help="the other checkout's target precision, as a second target with its own head and its own "
                         "hf baseline (`hf before`); default: both share this checkout's target")
    ap.add_argument("--before-library-norms", action="store_true",
                    help="the other checkout's target (and head) keep transformers' RMSNorm; see above")
    ap.add_argument("--before-library-linears", action="store_true",
                    help="the other checkout's target (and head) keep plain nn.Linear layers; see above")
    ap.add_argument("--before-same-vocab", action="store_true",
                    help="the other checkout drafts over this checkout's draft vocabulary (its own ReducedVocabDrafter "
                         "class): for two commits that both have the reduced vocabulary; default: its whole vocabulary "
                         "(the code before the engine issue drafted over all of it)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    before = import_before(args.before.resolve())
    target = eagle2.load_target("default", dtype=args.dtype)
    drafter_now = eagle2.load_drafter(target, head="default")
    if args.before_dtype or args.before_library_norms or args.before_library_linears:  # e.g. float32 (the previous auto on a CPU without native
        # bf16) against fp16-weights; or the same precision with the library's norms
        target_before = eagle2.load_target("default", dtype=args.before_dtype or args.dtype)
        if args.before_library_norms:
            restore_library_norms(target_before.model)
        if args.before_library_linears:
            restore_library_linears(target_before.model)
        head_before = eagle2.load_drafter(target_before, head="default", draft_vocab=0).head
    else:
        target_before, head_before = target, drafter_now.head
    if args.before_same_vocab and getattr(drafter_now, "reduced", None) is not None:
        reduced_before = importlib.import_module(f"{before.__name__}.draft").ReducedVocabDrafter
        drafter_before = reduced_before(head_before, target_before.model, drafter_now.token_ids.tolist(), name="default")
    else:
        drafter_before = before.EagleDrafter(head_before, target_before.model, name="default")
    drafter_full = eagle2.EagleDrafter(drafter_now.head, target.model, name="default")  # now, whole vocabulary
    questions = load_questions(args.questions, limit=args.limit, first_turn_only=True)
    lookups = [int(m.split("lookup=")[1]) if "lookup=" in m else 0 for m in args.methods.split(",")]
    policies = {}
    for m, lk in zip(args.methods.split(","), lookups):
        policies[f"{m} now"] = (make_policy("eagle2", total_tokens="auto", target=target, lookup=lk), drafter_now,
                                 eagle2.generate, False, target)
        old = before.make_policy("eagle2", total_tokens="auto", target=target_before, lookup=lk)
        steers_as_observer = hasattr(old, "on_cycle_end")  # the code before #13: its auto policy learnt as an observer
        policies[f"{m} before"] = (old, drafter_before, before.generate, steers_as_observer, target_before)
        if args.full_vocab and not lk:  # how much of the change is the reduced draft vocabulary
            policies[f"{m} now, full vocabulary"] = (make_policy("eagle2", total_tokens="auto", target=target),
                                                     drafter_full, eagle2.generate, False, target)
    baselines = {"hf": target} if target_before is target else {"hf": target, "hf before": target_before}
    names = list(baselines) + list(policies)
    totals = {n: {"tokens": 0, "seconds": 0.0, "cycles": 0, "new_tokens_in_cycles": 0, "differing_from_hf": 0}
              for n in names}
    mismatches = 0
    warm = eagle2.encode_prompt(target.tokenizer, "Say hello.")
    for name, (pol, dr, gen, obs, tg) in policies.items():  # warm-up (and the latency calibration)
        for module in (tg.model, dr.head):  # each decoder on the attention its code sets
            set_attention(module, "sdpa" if obs else TREE_SDPA)
        gen(tg.model, warm, pol, dr, max_new_tokens=16, eos_token_ids=target.eos_token_ids,
            observers=[pol] if obs else [])
    for qi, q in enumerate(tqdm(questions, desc="questions")):
        ids = eagle2.encode_prompt(target.tokenizer, q.turns[0])
        order = names[qi % len(names):] + names[: qi % len(names)]
        outs = {}
        for name in order:
            if name in baselines:
                set_attention(baselines[name].model, "sdpa")
                r = eagle2.hf_generate(baselines[name].model, ids, max_new_tokens=args.max_new_tokens,
                                       eos_token_ids=target.eos_token_ids)
            else:
                pol, dr, gen, obs, tg = policies[name]
                for module in (tg.model, dr.head):  # may be shared: each decoder on its own code's attention
                    set_attention(module, "sdpa" if obs else TREE_SDPA)
                r = gen(tg.model, ids, pol, dr, max_new_tokens=args.max_new_tokens,
                        eos_token_ids=target.eos_token_ids, observers=[pol] if obs else [])
                totals[name]["cycles"] += len(r.cycles)
                totals[name]["new_tokens_in_cycles"] += sum(c.new_tokens for c in r.cycles)
            totals[name]["tokens"] += len(r.tokens)
            totals[name]["seconds"] += r.seconds
            outs[name] = r.tokens
        for n in policies:  # greedy: each decoder against HF generate() on its own target
            differs = outs[n] != outs["hf before" if policies[n][4] is not target else "hf"]
            totals[n]["differing_from_hf"] += int(differs)
            mismatches += differs
    hf_rate = totals["hf"]["tokens"] / totals["hf"]["seconds"]
    summary = {"command": "python " + " ".join(sys.argv), "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "precision_now": target.precision,
               "precision_before": getattr(target_before, "precision", str(target_before.dtype)),
               "before_norms": "transformers'" if args.before_library_norms else "as this checkout's",
               "before_linears": "nn.Linear" if args.before_library_linears else "as this checkout's",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "questions": len(questions),
               "max_new_tokens": args.max_new_tokens, "outputs_differing_from_hf": mismatches, "methods": {}}
    for n, t in totals.items():
        rate = t["tokens"] / t["seconds"]
        own = "hf before" if n == "hf before" or (n in policies and policies[n][4] is not target) else "hf"
        own_rate = totals[own]["tokens"] / totals[own]["seconds"]
        summary["methods"][n] = {"tokens_per_s": round(rate, 2), "x_hf": round(rate / hf_rate, 3),
                                 "x_own_precision_hf": round(rate / own_rate, 3),
                                 "drafter": getattr(policies[n][1], "name", None) if n in policies else None,
                                 "tau": round(t["new_tokens_in_cycles"] / t["cycles"], 3) if t["cycles"] else None,
                                 "answers_differing_from_hf": t["differing_from_hf"] if n in policies else None,
                                 "ms_per_cycle": round(1e3 * t["seconds"] / t["cycles"], 2) if t["cycles"] else None}
    for m in args.methods.split(","):
        a, b = summary["methods"][f"{m} now"], summary["methods"][f"{m} before"]
        summary["methods"][f"{m} now"]["x_before"] = round(a["tokens_per_s"] / b["tokens_per_s"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
