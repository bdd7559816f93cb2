"""Seconds per training step of each head kind on random features of the embedded target's size
(one thread, 4 096 tokens a step: 8 sequences of 512), to compare their cost at equal compute.

    PYTHONPATH=. python scripts/head_step_timing.py [--threads 1]
"""
import argparse
import time

import torch

import eagle2.train as T
from eagle2.head import Eagle3Head, EagleHead
from eagle2.models import load_target
from eagle2.vocab import ReducedLMHead

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
t = load_target("default")
B, L = 8, 512
tok = torch.randint(0, t.config.vocab_size, (B, L + 1))
feats, aux = torch.randn(B, L, t.config.hidden_size), torch.randn(B, L, 3 * t.config.hidden_size)
valid = torch.ones(B, L - 1, dtype=torch.bool)
rows = ReducedLMHead(t.model.lm_head, torch.arange(8192))
embed = t.model.get_input_embeddings()
for kind, steps, ce_frac in (("eagle1", 2, 0.25), ("eagle3", 2, 1.0), ("eagle3", 4, 1.0), ("eagle3", 4, 0.5),
                             ("eagle3", 7, 1.0)):
    head = (Eagle3Head.for_target(t.config, torch.arange(8192), target_model=t.model) if kind == "eagle3"
            else EagleHead.for_target(t.config)).float().train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            preds = T.unroll(head, embed, tok, aux if kind == "eagle3" else feats, steps, 0.0, torch.bfloat16)
            if kind == "eagle3":
                parts, w = T.eagle3_losses(preds, feats, valid, head, rows, ce_frac, 0.8)
            else:
                parts, w = T.head_losses(preds, tok, feats, valid, rows, ce_frac, 0.8)
            loss = T.combine(parts, w, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    print(f"{kind}, {steps} unrolled steps, CE on {ce_frac:.0%} of positions: {min(times):.2f} s a step "
          f"({B * L / min(times):.0f} tokens/s)", flush=True)
