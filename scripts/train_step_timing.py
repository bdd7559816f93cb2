"""Training steps per second of the draft head with the full lm_head vs a reduced training vocabulary.

    PYTHONPATH=. python scripts/train_step_timing.py runs/smollm2-head-v4 [MINUTES]

Trains a fresh head for MINUTES (default 1.5) per variant on the run's features.pt (TTT 1, the
default batch) and prints steps/s and the held-out step-1 top-1 reached in that time.
"""
import sys
from pathlib import Path

import torch

from eagle2 import train as T
from eagle2.models import load_target
from eagle2.vocab import ReducedLMHead

torch.set_num_threads(2)
run, minutes = Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.5
args = T.build_parser().parse_args(["--out", str(run), "--eval-steps", "1", "--eval-every", "100"])
target = load_target("default")
data = T.FeatureData(run / "features.pt")
train_idx, val_idx = T.split(len(data), args.val_frac, args.seed)
vocab = target.model.lm_head.weight.shape[0]
for n, frac in [(0, 0.25), (4096, 0.25), (8192, 0.25), (8192, 1.0), (16384, 0.25)]:
    out_head = (ReducedLMHead(target.model.lm_head, T.train_vocab_ids(data, train_idx, n, vocab, target.eos_token_ids))
                if n else target.model.lm_head)
    args.ce_frac = frac
    r = T.train_head(target, data, train_idx, val_idx[:10], args, 1, minutes, 1, f"vocab {n or vocab} ce {frac}",
                     out_head=out_head)
    print(f"train vocab {n or vocab}, ce_frac {frac}: {r['steps'] / (minutes * 60):.3f} steps/s, "
          f"held-out step-1 top-1 {r['best']['val']['acc'][0]}", flush=True)
