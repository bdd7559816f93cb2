"""Average the weights of two or more draft heads of one shape into a new head folder.

Why: two training runs continued from the same head land close together, and the mean of their
weights (a "soup", as in stochastic weight averaging) can beat both at no training cost. Score
the result on the fixed held-out set before shipping it, as for any head:

    PYTHONPATH=. python scripts/average_heads.py runs/s46/v27 runs/s46/v28/head --out runs/s46/v29
    PYTHONPATH=. python scripts/eval_heads.py HELDOUT_FEATURES runs/s46/v29 runs/s46/v27 \\
        --heldout eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz

The new folder gets config.json, model.safetensors, the token_counts.json of the first source that
has one (it picks the reduced draft vocabulary) and a report.json naming its sources (and holding
their own report.json files, where they have one).
"""
import argparse
import json
import sys
from pathlib import Path

from eagle2.files import write_text_atomic
from eagle2.head import average_head_folders

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("heads", nargs="+", type=Path, help="head folders (config.json + weights), at least two")
ap.add_argument("--out", type=Path, required=True, help="the folder to write the averaged head to")
args = ap.parse_args()
try:
    info = average_head_folders(args.heads, args.out)
except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)
reports = {}
for h in args.heads:
    r = h / "report.json"
    if r.exists():
        try:
            reports[str(h)] = json.loads(r.read_text())
        except json.JSONDecodeError:
            reports[str(h)] = None
report = {"command": "python scripts/average_heads.py " + " ".join(map(str, args.heads)) + f" --out {args.out}",
          "averaged": info["sources"], "source_reports": reports}
write_text_atomic(args.out / "report.json", json.dumps(report, indent=1) + "\n")
print(json.dumps(info))
