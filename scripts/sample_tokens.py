"""Write a random share of a training-token file (export_tokens format) to a new file.

Why: a machine that lost an earlier run's features.pt must recompute the features of every
sequence it trains on (~15 minutes per million tokens on a 2-core CPU). Continuing a head on its
new data plus a sample of the data it already learned (against forgetting) costs a fraction of that.

    PYTHONPATH=. python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/old_quarter.npz --frac 0.25 --seed 15
"""
import argparse
from pathlib import Path

import numpy as np

from eagle2 import train_data as td

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("source", type=Path)
ap.add_argument("dest", type=Path)
ap.add_argument("--frac", type=float, required=True, help="share of the sequences to keep (0, 1]")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
if not 0 < args.frac <= 1:
    ap.error(f"--frac must be in (0, 1], got {args.frac}")
try:
    with np.load(args.source, allow_pickle=False) as f:
        n = len(f["offsets"]) - 1
        tasks = f["task"]
    keep = np.sort(np.random.default_rng(args.seed).choice(n, size=max(1, round(n * args.frac)), replace=False))
    info = td.select_tokens(args.source, args.dest, keep)
except (OSError, ValueError, KeyError) as e:
    ap.error(f"{args.source}: {e}")
print(f"{args.dest}: {info['rows']} of {n} sequences ({int(tasks[keep].sum())} task), {info['tokens']} tokens")
