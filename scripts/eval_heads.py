"""Held-out top-1 agreement of draft heads on one training run's held-out split (the same
sequences for every head, so heads trained on other data compare fairly).

    PYTHONPATH=. python scripts/eval_heads.py RUN_FOLDER HEAD_FOLDER [HEAD_FOLDER ...] [--threads N]

RUN_FOLDER is a `python -m eagle2 train --out` folder with features.pt and config.json; its
--val-frac and --seed give the split. Prints one JSON line per head (agreement by draft step
1..6 over the full vocabulary, the chain score, step-1 losses). `--from-sequence N` keeps only
held-out sequences N, N+1, ... of the run's data (e.g. the data this run added, which a head
trained on an earlier split has never seen: a fair comparison of an old and a continued head).
`--not-in RUN [RUN ...]` keeps only held-out sequences whose token ids none of those runs'
features.pt (or those train_tokens.npz files, e.g. the data shipped beside the previous head) holds:
the data this run added, wherever the import put it; `--kind task|chat` keeps one kind of sequence.

`--heldout FILE.npz` scores every sequence of a fixed held-out token file instead (the head folder's
heldout_tokens.npz: never trained on, so rounds compare on the same sequences); RUN_FOLDER is then
where its features go, computed once (`--arch eagle3` for EAGLE-3 heads):

    PYTHONPATH=. python scripts/eval_heads.py runs/heldout-features HEAD_FOLDER [HEAD_FOLDER ...] \
        --heldout eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz --threads 2
"""
import argparse
import json
from pathlib import Path

import torch

from eagle2 import train
from eagle2 import train_data as td
from eagle2.head import load_head_folder
from eagle2.models import load_target

ap = argparse.ArgumentParser()
ap.add_argument("run", type=Path)
ap.add_argument("heads", nargs="+")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--from-sequence", type=int, default=0)
ap.add_argument("--not-in", nargs="+", type=Path, default=[])
ap.add_argument("--kind", choices=("all", "task", "chat"), default="all")
ap.add_argument("--heldout", type=Path, help="score every sequence of this token file (RUN = where its features go)")
ap.add_argument("--arch", choices=("eagle1", "eagle3"), default="eagle1", help="with --heldout: the features to compute")
ap.add_argument("--dtype", default="bfloat16", help="with --heldout: the target's precision for its features")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
if args.heldout:
    if not args.heldout.is_file():
        ap.error(f"--heldout {args.heldout}: no such token file")
    if args.from_sequence or args.not_in:
        ap.error("--heldout scores the whole file: --from-sequence and --not-in do not apply")
    defaults = train.build_parser().parse_args(["--out", str(args.run)])  # the pipeline's target, lengths and batch sizes
    defaults.dtype, defaults.threads = args.dtype, args.threads
    try:  # the train pipeline's features stage, on that file alone, once
        train.heldout_features(args.heldout, args.run, args.arch, defaults)
    except ValueError as e:
        ap.error(str(e))
run_args = argparse.Namespace(**json.loads((args.run / "config.json").read_text())["args"])
target = load_target(run_args.model, dtype=run_args.dtype, device=run_args.device)
data = train.FeatureData(args.run / "features.pt")
val_idx = list(range(len(data))) if args.heldout else train.split(len(data), run_args.val_frac, run_args.seed)[1]
val_idx = [i for i in val_idx if i >= args.from_sequence]
try:
    seen = td.known_sequence_keys(args.not_in, run_args.max_seq_len, "--not-in")
except ValueError as e:
    ap.error(str(e))
keys = td.sequence_keys(data.tokens, data.offsets)
val_idx = [i for i in val_idx if keys[i] not in seen
           and (args.kind == "all" or str(data.ids[i]).startswith("task-") == (args.kind == "task"))]
ac = train.use_autocast(run_args, target)
for folder in args.heads:
    head = load_head_folder(folder).to(target.device)
    ev = train.evaluate(head, data, val_idx, target, run_args, ac)
    print(json.dumps({"head": folder, "val_sequences": len(val_idx), "kind": args.kind,
                      **({"heldout": str(args.heldout)} if args.heldout else {}), **ev}), flush=True)
