"""Mean τ of draft heads (EAGLE-1/2 or EAGLE-3, told apart by config.json) on a few prompts:
examples/prompts.json (chat) or, with --long, examples/long_prompts.jsonl (given texts, math,
code); fixed eagle2 4/5/12 tree, 96 tokens, bf16.

    PYTHONPATH=. python scripts/compare_heads.py [--long] [--threads N] HEAD_FOLDER [HEAD_FOLDER ...]
"""
import argparse
import json

import torch

import eagle2
from eagle2.head import load_head_folder

ap = argparse.ArgumentParser()
ap.add_argument("heads", nargs="+")
ap.add_argument("--long", action="store_true")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
t = eagle2.load_target()
if args.long:
    prompts = [json.loads(line)["turns"][0] for line in open("examples/long_prompts.jsonl")][::4]
else:
    prompts = [p["prompt"] for p in json.load(open("examples/prompts.json"))][:6]
for path in args.heads:
    d = eagle2.EagleDrafter(load_head_folder(path), t.model)
    taus = [eagle2.generate_text(t, p, drafter=d, policy=eagle2.make_policy("eagle2"), max_new_tokens=96).tau
            for p in prompts]
    print(path, d.kind, "mean tau", round(sum(taus) / len(taus), 3), [round(x, 2) for x in taus], flush=True)
