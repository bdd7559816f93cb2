"""Write a random share of a training-token file (export_tokens format) to a new file.

Why: a machine that lost an earlier run's features.pt must recompute the features of every
sequence it trains on (~15 minutes per million tokens on a 2-core CPU). Continuing a head on its
new data plus a sample of the data it already learned (against forgetting) costs a fraction of that.

    python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/old_quarter.npz --frac 0.25 --seed 15
"""
import argparse
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("source", type=Path)
ap.add_argument("dest", type=Path)
ap.add_argument("--frac", type=float, required=True, help="share of the sequences to keep (0, 1]")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
if not 0 < args.frac <= 1:
    ap.error(f"--frac must be in (0, 1], got {args.frac}")
try:
    d = dict(np.load(args.source, allow_pickle=False))
except (OSError, ValueError) as e:
    ap.error(f"{args.source}: {e}")
offsets = d["offsets"]
n = len(offsets) - 1
keep = np.sort(np.random.default_rng(args.seed).choice(n, size=max(1, round(n * args.frac)), replace=False))
lengths = offsets[1:] - offsets[:-1]
out = {k: d[k][keep] for k in ("answer_start", "temperature", "finished", "task")}
out["ids"] = np.concatenate([d["ids"][offsets[i]:offsets[i + 1]] for i in keep])
out["offsets"] = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
out["schema"] = d["schema"]
args.dest.parent.mkdir(parents=True, exist_ok=True)
np.savez_compressed(args.dest, **out)
print(f"{args.dest}: {len(keep)} of {n} sequences ({int(out['task'].sum())} task), {out['ids'].size} tokens")
