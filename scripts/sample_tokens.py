"""Write a share of a training-token file (export_tokens format) to a new file.

Why: a machine that lost an earlier run's features.pt must recompute the features of every
sequence it trains on (~15 minutes per million tokens on a 2-core CPU). Continuing a head on its
new data plus a sample of the data it already learned (against forgetting) costs a fraction of that.
Where earlier runs' features.pt files are still on the machine, `--featured-in` keeps exactly the
sequences they hold instead: passed with the same runs to `--features-from`, a round then copies
every old feature and spends its minutes training (session 49). `--frac` with `--skip-featured-in`
draws the share from the sequences those runs do not hold: new sequences whose features a round
computes, to train on beside a replayed share of the cached ones (session 50). `--task-frac` draws
the task sequences at their own share, to lean a round toward chats (or tasks) (session 54).

    PYTHONPATH=. python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/old_quarter.npz --frac 0.25 --seed 15
    PYTHONPATH=. python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/cached.npz --featured-in runs/s48/v31a runs/s47/v30a
    PYTHONPATH=. python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/fresh.npz --frac 0.4 --skip-featured-in runs/s49/v32a
    PYTHONPATH=. python scripts/sample_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz runs/chatty.npz --frac 0.3 --task-frac 0.1
"""
import argparse
from pathlib import Path

import numpy as np

from eagle2 import train_data as td

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("source", type=Path)
ap.add_argument("dest", type=Path)
how = ap.add_mutually_exclusive_group(required=True)
how.add_argument("--frac", type=float, help="a random share of the sequences to keep (0, 1]")
how.add_argument("--featured-in", nargs="+", type=Path, metavar="RUN",
                 help="keep the sequences whose features these runs' features.pt files hold")
ap.add_argument("--skip-featured-in", nargs="+", type=Path, metavar="RUN",
                help="with --frac: draw the share from the sequences these runs' features.pt files do not hold")
ap.add_argument("--task-frac", type=float, help="with --frac: the share of the task sequences to keep (default: --frac)")
ap.add_argument("--seed", type=int, default=0, help="with --frac")
ap.add_argument("--max-seq-len", type=int, default=1024, help="with --featured-in or --skip-featured-in: the training runs' --max-seq-len")
args = ap.parse_args()
if args.frac is not None and not 0 < args.frac <= 1:
    ap.error(f"--frac must be in (0, 1], got {args.frac}")
if args.skip_featured_in and args.frac is None:
    ap.error("--skip-featured-in goes with --frac")
if args.task_frac is not None and (args.frac is None or not 0 <= args.task_frac <= 1):
    ap.error(f"--task-frac goes with --frac and must be in [0, 1], got {args.task_frac}")
try:
    with np.load(args.source, allow_pickle=False) as f:
        n = len(f["offsets"]) - 1
        tasks = f["task"]
    if args.featured_in:
        keep = np.asarray(td.featured_sequences(args.source, args.featured_in, args.max_seq_len), dtype=np.int64)
        if keep.size == 0:
            ap.error(f"none of the {n} sequences of {args.source} has features in {', '.join(map(str, args.featured_in))}")
    else:
        pool = np.arange(n)
        if args.skip_featured_in:
            pool = np.setdiff1d(pool, td.featured_sequences(args.source, args.skip_featured_in, args.max_seq_len))
            if pool.size == 0:
                ap.error(f"every sequence of {args.source} has features in {', '.join(map(str, args.skip_featured_in))}")
        rng = np.random.default_rng(args.seed)
        if args.task_frac is None:
            keep = np.sort(rng.choice(pool, size=max(1, round(pool.size * args.frac)), replace=False))
        else:
            parts = [(pool[tasks[pool] == 0], args.frac), (pool[tasks[pool] != 0], args.task_frac)]
            keep = np.sort(np.concatenate([rng.choice(part, size=round(part.size * share), replace=False)
                                           for part, share in parts]))
            if keep.size == 0:
                ap.error(f"--frac {args.frac} and --task-frac {args.task_frac} keep none of the {pool.size} sequences")
    info = td.select_tokens(args.source, args.dest, keep)
except (OSError, ValueError, KeyError) as e:
    ap.error(f"{args.source}: {e}")
print(f"{args.dest}: {info['rows']} of {n} sequences ({int(tasks[keep].sum())} task), {info['tokens']} tokens")
