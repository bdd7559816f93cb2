"""How often the first draft step is accepted at T = 1: top-k drafts against sampled drafts.

    PYTHONPATH=. python scripts/sampled_draft_probe.py RUN_FOLDER [--head FOLDER] [--sequences 40]
        [--sampled-only | --greedy-only] [--draft-temperatures 0.7,0.8,0.9,1.0 [--steps 3]] [--threads 2]

RUN_FOLDER is a `python -m eagle2 train --out` folder with features.pt (the target's own hidden
states, so the head drafts step 1 from true features). At every answer position, with p the
target's next-token distribution and q the head's (both at T = 1, full vocabulary):

    topk_k   the chance one of the head's k most probable tokens is accepted under EAGLE-2's
             sampling rule (accept x with probability p(x), then the next with p renormalised):
             the p-mass of those k tokens
    drawn_k  the chance one of k tokens drawn from q without replacement is accepted under
             recursive rejection sampling (verify.sample_accept with sampled drafts): exact for
             k = 1 (1 - TV(p, q)), a Monte-Carlo mean over 4 draws for k > 1
    p_max    the target's own top probability (what a perfect top-1 draft would get)

`--sampled-only` keeps the sequences the target wrote at T > 0 (contexts like those of a T = 1
run), `--greedy-only` the others. Prints one JSON line of means.

`--draft-temperatures 0.7,0.8,0.9,1.0 [--steps 3]` instead measures drawn_1 = 1 - TV(p, q_t) at
draft steps 1..steps (the training-time-test unroll: later steps read the head's own features),
with q_t the head's distribution at temperature t (p stays at T = 1): what chose
verify.DRAFT_TEMPERATURE. Prints one JSON line per step.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from eagle2 import train
from eagle2 import train_data as td
from eagle2.head import load_head_folder
from eagle2.models import load_target
from eagle2.verify import draw_without_replacement

ap = argparse.ArgumentParser()
ap.add_argument("run", type=Path)
ap.add_argument("--head", default="eagle2/heads/smollm2-135m-instruct")
ap.add_argument("--sequences", type=int, default=40)
which = ap.add_mutually_exclusive_group()
which.add_argument("--sampled-only", action="store_true")
which.add_argument("--greedy-only", action="store_true")
ap.add_argument("--draft-temperatures", default=None, help="comma-separated: sweep q's temperature instead")
ap.add_argument("--steps", type=int, default=3, help="with --draft-temperatures: draft steps to unroll")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
torch.set_num_threads(args.threads)
run_args = argparse.Namespace(**json.loads((args.run / "config.json").read_text())["args"])
target = load_target(run_args.model, dtype="float32", device="cpu")
data = train.FeatureData(args.run / "features.pt")
if args.sampled_only or args.greedy_only:
    rows = [i for i in range(len(data)) if (float(data.temperature[i]) > 0) == args.sampled_only]
else:
    rows = train.split(len(data), run_args.val_frac, run_args.seed)[1]
rows = rows[: args.sequences]
head = load_head_folder(args.head).float()
embed, lm_head = target.model.get_input_embeddings(), target.model.lm_head
gen = torch.Generator().manual_seed(args.seed)


def drawn_accept(p: torch.Tensor, q: torch.Tensor, k: int, draws: int = 4) -> torch.Tensor:
    """Mean acceptance of k children drawn from q without replacement, by recursive rejection sampling."""
    total = torch.zeros(p.shape[0])
    for _ in range(draws):
        x = draw_without_replacement(q, k, gen)
        pi, qi, alive = p.clone(), q.clone(), torch.ones(p.shape[0])
        for i in range(k):
            xi = x[:, i:i + 1]
            a = (pi.gather(1, xi) / qi.gather(1, xi).clamp_min(1e-30)).clamp(max=1).squeeze(1)
            total += alive * a
            alive = alive * (1 - a)
            pi = (pi - qi).clamp_min(0)
            pi = pi / pi.sum(-1, keepdim=True).clamp_min(1e-30)
            qi = qi.scatter(1, xi, 0.0)
            qi = qi / qi.sum(-1, keepdim=True).clamp_min(1e-30)
    return total / draws


def temperature_sweep(temps: list[float], steps: int) -> None:
    """1 - TV(p, q_t) by draft step and q temperature, one JSON line per step."""
    overlap = {(s, t): [] for s in range(steps) for t in temps}
    t0 = time.time()
    with torch.no_grad():
        for group in td.length_batches([data.lengths[i] for i in rows], 4096):
            tok, feats, lengths, starts, _ = data.batch([rows[j] for j in group])
            valid = train.loss_positions(lengths, starts, feats.shape[1] - 1)
            preds = train.unroll(head, embed, tok, feats, steps, 0.0, torch.float32)
            true_f = feats[:, 1:][valid]
            for s, pred in enumerate(preds):
                pred_f = pred[valid]
                for c in range(0, true_f.shape[0], 512):
                    p = torch.softmax(lm_head(true_f[c:c + 512]).float(), -1)
                    logits = lm_head(pred_f[c:c + 512]).float()
                    for t in temps:
                        overlap[(s, t)].append(torch.minimum(p, torch.softmax(logits / t, -1)).sum(1))
    for s in range(steps):
        print(json.dumps({"run": str(args.run), "head": args.head, "sequences": len(rows), "step": s + 1,
                          "positions": int(torch.cat(overlap[(s, temps[0])]).numel()),
                          **{f"drawn_1@{t:g}": round(float(torch.cat(overlap[(s, t)]).mean()), 4) for t in temps},
                          "seconds": round(time.time() - t0)}))


if args.draft_temperatures:
    try:
        temps = [float(t) for t in args.draft_temperatures.split(",")]
    except ValueError:
        ap.error(f"--draft-temperatures takes numbers, got {args.draft_temperatures!r}")
    if not temps or min(temps) <= 0 or args.steps < 1:
        ap.error("--draft-temperatures must be > 0 and --steps >= 1")
    temperature_sweep(temps, args.steps)
    raise SystemExit(0)

stats: dict[str, list[torch.Tensor]] = {k: [] for k in
                                        ("topk_1", "topk_2", "topk_4", "drawn_1", "drawn_2", "drawn_4", "p_max")}
t0 = time.time()
with torch.no_grad():
    for group in td.length_batches([data.lengths[i] for i in rows], 4096):
        tok, feats, lengths, starts, _ = data.batch([rows[j] for j in group])
        valid = train.loss_positions(lengths, starts, feats.shape[1] - 1)
        pred = train.unroll(head, embed, tok, feats, 1, 0.0, torch.float32)[0]
        true_f, pred_f = feats[:, 1:][valid], pred[valid]
        for c in range(0, true_f.shape[0], 256):
            p = torch.softmax(lm_head(true_f[c:c + 256]).float(), -1)
            q = torch.softmax(lm_head(pred_f[c:c + 256]).float(), -1)
            mass = p.gather(1, q.topk(4, -1).indices).cumsum(1)
            stats["topk_1"].append(mass[:, 0])
            stats["topk_2"].append(mass[:, 1])
            stats["topk_4"].append(mass[:, 3])
            stats["drawn_1"].append(torch.minimum(p, q).sum(1))
            stats["drawn_2"].append(drawn_accept(p, q, 2))
            stats["drawn_4"].append(drawn_accept(p, q, 4))
            stats["p_max"].append(p.max(1).values)
out = {k: round(float(torch.cat(v).mean()), 4) for k, v in stats.items()}
print(json.dumps({"run": str(args.run), "head": args.head, "sequences": len(rows), "sampled_only": args.sampled_only,
                  "positions": int(torch.cat(stats["p_max"]).numel()), **out, "seconds": round(time.time() - t0)}))
