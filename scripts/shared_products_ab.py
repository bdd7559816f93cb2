"""Shared q/k/v and gate/up products (eagle2.packed) on and off, in one process, interleaved.

With fp16-packed weights (`--dtype fp16-weights`, the auto choice on CPUs without fast bf16) the
siblings that read the same input share one FBGEMM product. This times HF `generate()` and
eagle2-auto with the shared products and with each layer's own packed weight, taking turns on
every question (the order flips each question), so a slow spell of the machine hits both alike.
Greedy answers must be identical across all four; the auto policy calibrates its latency curve
separately for each layout.

    PYTHONPATH=. python scripts/shared_products_ab.py [--questions examples/long_prompts.jsonl]
        [--limit 12] [--max-new-tokens 128] [--temperature 0] [--threads 2]
"""
import argparse
import collections
import json

import torch

import eagle2
from eagle2.bench import load_questions
from eagle2.decode import hf_generate
from eagle2.packed import FBGEMM_FP16, PackedLinear
from eagle2.precision import cpu_model
from eagle2.registry import build_policy

ap = argparse.ArgumentParser()
ap.add_argument("--questions", default="examples/long_prompts.jsonl")
ap.add_argument("--limit", type=int, default=12)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--temperature", type=float, default=0.0)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
target = eagle2.load_target("default", dtype="fp16-weights")
drafter = eagle2.load_drafter(target, head="default")
layers = [m for m in list(target.model.modules()) + list(drafter.head.modules())
          if isinstance(m, PackedLinear) and m.shared is not None]
shared = [m.shared for m in layers]
for m in layers:  # each layer's own packed weight, for the runs without sharing
    m.packed = FBGEMM_FP16.prepack(m.weight, m.bias)


def use_shared(on: bool) -> None:
    for m, s in zip(layers, shared):
        m.shared = s if on else None


totals = collections.defaultdict(lambda: [0, 0.0, 0])  # (method, shared) -> tokens, seconds, target forwards


def run(method: str, on: bool, ids, seed: int) -> list[int]:
    use_shared(on)
    if method == "hf":
        r = hf_generate(target.model, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        seed=seed, eos_token_ids=target.eos_token_ids)
        forwards = len(r.tokens)
    else:
        r = eagle2.generate(target.model, ids, build_policy("eagle2-auto", target=target), drafter,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=seed,
                            eos_token_ids=target.eos_token_ids)
        forwards = r.target_forwards
    t = totals[(method, on)]
    t[0], t[1], t[2] = t[0] + len(r.tokens), t[1] + r.seconds, t[2] + forwards
    return r.tokens


warm = eagle2.encode_prompt(target.tokenizer, "Say hello.")
for on in (False, True):  # warm-up, and each layout's latency calibration
    run("eagle2", on, warm, 0)
    run("hf", on, warm, 0)
totals.clear()
order = [("hf", False), ("hf", True), ("eagle2", False), ("eagle2", True)]
for i, q in enumerate(load_questions(args.questions, limit=args.limit, first_turn_only=True)):
    ids = eagle2.encode_prompt(target.tokenizer, q.turns[0])
    outs = {k: run(*k, ids, i) for k in (order if i % 2 == 0 else order[::-1])}
    if args.temperature == 0 and len({tuple(o) for o in outs.values()}) != 1:
        raise SystemExit(f"question {i}: greedy answers differ between layouts")


def rate(method: str, on: bool) -> float:
    return totals[(method, on)][0] / totals[(method, on)][1]


summary = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "temperature": args.temperature,
           "questions": args.limit, "max_new_tokens": args.max_new_tokens,
           "tokens_per_s": {f"{m} {'shared' if on else 'separate'}": round(rate(m, on), 2) for m, on in order},
           "tau": {f"eagle2 {'shared' if on else 'separate'}": round(totals[("eagle2", on)][0] / totals[("eagle2", on)][2], 3)
                   for on in (False, True)},
           "hf_shared_over_separate": round(rate("hf", True) / rate("hf", False), 3),
           "eagle2_shared_over_separate": round(rate("eagle2", True) / rate("eagle2", False), 3),
           "eagle2_x_hf_separate": round(rate("eagle2", False) / rate("hf", False), 3),
           "eagle2_x_hf_shared": round(rate("eagle2", True) / rate("hf", True), 3)}
print(json.dumps(summary, indent=1))
