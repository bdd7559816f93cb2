"""Merge training-token files and run folders into one token file, and count its answer tokens.

Why: the head ships with all the data written for it so far (train_tokens.npz) and the answer
token counts its draft vocabulary is chosen from (token_counts.json). After a round of new data,
both are rebuilt from the old file and the new run folders; this does it in one command, on token
ids alone (no model), and never lets a held-out sequence in:

    PYTHONPATH=. python scripts/merge_tokens.py eagle2/heads/smollm2-135m-instruct/train_tokens.npz \\
        runs/s39/chat runs/s39/tasks --dest runs/s39/all_tokens.npz --counts runs/s39/all_token_counts.json \\
        --exclude eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz

Chat rows come first, then task rows, each in source order. Every sequence of every source is
kept (exact duplicates too), except those whose prompt an --exclude file holds.
"""
import argparse
from pathlib import Path

from eagle2 import train_data as td
from eagle2 import vocab

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("sources", nargs="+", type=Path, help="token files (.npz) and/or run folders (answers.jsonl, tasks.jsonl)")
ap.add_argument("--dest", type=Path, required=True, help="the merged token file to write")
ap.add_argument("--counts", type=Path, help="also write the answer token counts here (token_counts.json format)")
ap.add_argument("--exclude", nargs="+", type=Path, default=[], help="token files whose prompts must not go in (a held-out set)")
args = ap.parse_args()
try:
    info = td.merge_tokens(args.sources, args.dest, exclude=args.exclude)
    if args.counts:
        counts = td.answer_counts(args.dest)
        vocab.save_counts(counts, args.counts, meta={"source": str(args.dest)})
except (OSError, ValueError) as e:
    ap.error(str(e))
print(f"{args.dest}: {info['rows']} sequences ({info['chat']} chat, {info['tasks']} task), {info['tokens']} tokens, "
      f"{info['answer_tokens']} answer tokens, {info['bytes'] / 1e6:.2f} MB; {info['duplicates']} exact duplicates; "
      f"{info['excluded']} sequences left out (their prompt is in --exclude)")
if args.counts:
    print(f"{args.counts}: {sum(counts.values())} answer tokens, {len(counts)} distinct")
