"""Train an EAGLE draft head for a target model, from data the target writes itself.

    python -m eagle2.train --out runs/smollm2-head --head-out eagle2/heads/smollm2-135m-instruct

Stages (each writes its output into --out and is skipped when that output exists, unless
--force; forcing a stage re-runs every later stage too):

1. prompts   → prompts.jsonl   Magpie-style user prompts sampled from the target (train_data.py)
2. answers   → answers.jsonl   the target's answers: mostly greedy, a sampled share for T>0
3. tasks     → tasks.jsonl     task prompts (given texts to summarise/translate/extract from/answer
                               about, code, arithmetic; train_tasks.py) and the target's answers
4. features  → features.pt     last hidden states (after the final norm), bf16, + answer offsets;
                               with --arch eagle3 also the inputs of layers 2, n/2, n-3
5. train     → head/           the draft head (official EAGLE format, bf16) + train.json
                               (--restart-minutes: in fresh processes, via train_state.pt)
6. report    → report.json, TRAINING.md and train_tokens.npz (the written data as token ids; --data
                               starts a later run from it) beside the head, copied to --head-out

Two head kinds (--arch). eagle1 (EAGLE-1/2, the default: ahead at equal CPU time, see the head's
TRAINING.md) is described first; eagle3 below.

Training objective (EAGLE): at position i the head reads (embed(t_{i+1}), f_i) and predicts
f_{i+1}; loss = SmoothL1(pred, f_{i+1}) + 0.1 · CE(lm_head(pred), q_{i+1}), on positions whose
predicted token t_{i+2} belongs to the answer, with uniform noise on the input features.
q_{i+1} = softmax(lm_head(f_{i+1})) is the target's own next-token distribution (--ce-labels
target, the default), so sampled answers teach the same thing greedy ones do; --ce-labels data
uses the written token t_{i+2} as EAGLE does. Accuracy is agreement with the target's top-1
token at that position: the token greedy verification accepts.
Cross-entropy through the 49k-vocabulary lm_head dominates the cost, so it is computed on a
random subsample of the loss positions (--ce-frac) and over the lm_head rows of the most
frequent answer tokens only (--train-vocab, 8192 by default: the step reads a sixth of SmolLM2's
lm_head; the target's distribution is renormalised over the same rows, as a reduced draft
vocabulary sees it). Accuracy is always measured on all positions and the full vocabulary.

Training-time test (EAGLE-3 style, --ttt-steps N): after step 1 the head is unrolled N more
steps on its own predictions. Step k at position i reads (embed(t_{i+1}), p_{k-1}[i-1]), i.e.
its own step k-1 prediction of f_i, and attends exactly to what it would see while drafting
when the last real feature is f_r, r = i-k+1: step-1 keys at positions ≤ r (real features) and,
for each step j in 2..k, the single step-j key at position r+j-1. The keys come from a shared
DynamicCache, so the masks are over the concatenation [step 1 | step 2 | ... | step k].
With --ttt-pilot-minutes, both variants (plain and TTT) are first trained for that long on the
same data and the one with the better held-out multi-step score is used for the full run.

EAGLE-3 (--arch eagle3): step 1 reads the fused layers instead of f_i, every later step its own
output; no feature loss: CE of its own draft-vocabulary lm_head (the --train-vocab most frequent
answer tokens; initialised from the target's rows and final norm) against the target's
distribution renormalised over that vocabulary, at every unrolled step (default 4 steps: the
official recipe unrolls 7, too dear on a CPU).

Held-out score = Σ_k Π_{j≤k} acc_j over the evaluated draft steps: the expected number of
accepted tokens of a single drafted chain, if step accuracies were independent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eagle2 import train_data as td
from eagle2.cli import int_at_least
from eagle2.models import DTYPE_CHOICES, DTYPE_HELP
from eagle2.vocab import ReducedLMHead, top_tokens

STAGES = ("prompts", "answers", "tasks", "features", "train")
OUTPUTS = {"prompts": "prompts.jsonl", "answers": "answers.jsonl", "tasks": "tasks.jsonl", "features": "features.pt",
           "train": "head/model.safetensors"}
PARTIALS = {"prompts": ["prompts.partial.jsonl"], "answers": ["answers.partial.jsonl"],
            "tasks": ["tasks.partial.jsonl"], "features": [],
            "train": ["head/config.json", "train.json", "train_state.pt"]}
STATE_FILE = PARTIALS["train"][-1]  # a training run's checkpoint between segments (--restart-minutes)
AFTER_RESTART = "--after-restart"  # added to the command line of every segment after the first
TOKENS_FILE = "train_tokens.npz"  # the run's prompts + answers as token ids, shipped beside the head
ARCH_DEFAULTS = {  # what each head kind trains with unless told otherwise
    "eagle1": {"noise": 0.2, "ce_frac": 0.25, "ttt_steps": 1},
    "eagle3": {"noise": 0.0, "ce_frac": 0.5, "ttt_steps": 3},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eagle2.train",
        description="Train an EAGLE draft head on data generated by the target itself "
                    "(prompts → answers → features → train → report).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="working folder for the stage outputs")
    g.add_argument("--model", default="default", help="target: 'default' (SmolLM2-135M-Instruct), a folder or hub id")
    g.add_argument("--head-out", default=None, help="also copy the final head + report here")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="the target's " + DTYPE_HELP)
    g.add_argument("--device", default="auto")
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = all cores, fewer while other processes compete for them)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--arch", choices=tuple(ARCH_DEFAULTS), default="eagle1",
                   help="head kind: eagle1 (the EAGLE-1/2 head: last hidden state, feature regression + CE; "
                        "ahead at CPU budgets, see the head's TRAINING.md) or eagle3 (three fused target layers, "
                        "own draft vocabulary, CE only, multi-step training-time test)")
    g.add_argument("--until", choices=STAGES, default="train", help="stop after this stage")
    g.add_argument("--data", nargs="+", default=None, metavar="FILE_OR_RUN",
                   help="start from the written data of earlier runs (train_tokens.npz files, shipped beside the "
                        "head, and/or run folders with answers.jsonl): concatenated; the prompts, answers and "
                        "tasks stages are skipped, features are recomputed (or copied: --features-from)")
    g.add_argument("--force", nargs="*", choices=STAGES, default=None,
                   help="re-run these stages (and every later one); no names = all")
    g.add_argument(AFTER_RESTART, action="store_true", help=argparse.SUPPRESS)  # set by main: --force is spent
    g = p.add_argument_group("prompts")
    g.add_argument("--n-prompts", type=int, default=1500)
    g.add_argument("--prompt-batch", type=int, default=48)
    g.add_argument("--prompt-max-tokens", type=int, default=72)
    g.add_argument("--prompt-temperature", type=float, default=1.0)
    g.add_argument("--prompt-top-p", type=float, default=0.95)
    g.add_argument("--prompt-stop-frac", type=float, default=0.95,
                   help="end a batch once this share of rows finished (the rest are dropped)")
    g.add_argument("--prompt-filter", choices=("strict", "loose"), default="strict")
    g.add_argument("--prompt-openers", choices=("none", "mixed"), default="mixed",
                   help="mixed (the shipped head's data since session 34): each user message starts with a request "
                        "opener drawn (per prompt, seeded) from a list (write, draft an email, pretend you are, "
                        "solve ...); none: the target starts it itself, mostly with 'Can' or 'I'm'")
    g.add_argument("--prompt-minutes", type=float, default=8.0, help="time budget (0 = none)")
    g = p.add_argument_group("answers")
    g.add_argument("--answer-batch", type=int, default=32)
    g.add_argument("--answer-max-tokens", type=int, default=320)
    g.add_argument("--answer-stop-frac", type=float, default=0.7,
                   help="end a batch once this share of rows finished; the rest are kept truncated")
    g.add_argument("--sampled-frac", type=float, default=0.2, help="share of sampled (T>0) answers")
    g.add_argument("--sample-temperatures", default="0.7,0.85,1.0")
    g.add_argument("--answer-minutes", type=float, default=14.0, help="time budget (0 = none)")
    g = p.add_argument_group("tasks")
    g.add_argument("--n-tasks", type=int, default=2400,
                   help="task prompts (long texts to summarise/translate/extract/answer from, code, arithmetic)")
    g.add_argument("--task-minutes", type=float, default=22.0, help="time budget for answering them (0 = none)")
    g.add_argument("--passages", nargs="+", default=None, metavar="FILE_OR_RUN",
                   help="take the passages of the text tasks from the greedy chat answers in these "
                        "train_tokens.npz files or run folders instead of this run's own; the prompts and "
                        "answers stages are skipped (new task data beside a chat run on the other core)")
    g = p.add_argument_group("features")
    g.add_argument("--max-seq-len", type=int, default=1024)
    g.add_argument("--feature-batch-tokens", type=int, default=4096)
    g.add_argument("--exclude-prompts", nargs="+", default=None, metavar="TOKENS_NPZ",
                   help="held-out token files (heldout_tokens.npz beside the shipped head): sequences whose prompt "
                        "they hold get no features, so they are neither trained on nor in the run's own split")
    g.add_argument("--features-from", nargs="+", default=None, metavar="FEATURES",
                   help="features.pt files (or run folders) of earlier runs on the same target and dtype: "
                        "sequences with the same token ids copy their rows instead of a target forward")
    g = p.add_argument_group("train")
    g.add_argument("--epochs", type=int, default=40, help="upper bound; --train-minutes usually ends it")
    g.add_argument("--train-minutes", type=float, default=55.0, help="time budget of the main run (0 = none)")
    g.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per optimizer step")
    g.add_argument("--lr", type=float, default=1.2e-3)
    g.add_argument("--min-lr-frac", type=float, default=0.05)
    g.add_argument("--warmup-steps", type=int, default=30)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=0.5)
    g.add_argument("--noise", type=float, default=None,
                   help="width of the uniform noise on input features (default: 0.2 eagle1, 0 eagle3)")
    g.add_argument("--ce-weight", type=float, default=0.1, help="eagle1: weight of CE next to the feature loss")
    g.add_argument("--ce-frac", type=float, default=None,
                   help="share of loss positions that get the CE term (default: 0.25 eagle1, 0.5 eagle3)")
    g.add_argument("--train-vocab", type=int_at_least(0), default=8192,
                   help="the this many most frequent answer tokens: eagle1 scores its CE over their lm_head "
                        "rows; eagle3 heads draft from them (their draft vocabulary). 0 = all tokens")
    g.add_argument("--ce-labels", choices=("target", "data"), default="target",
                   help="CE against the target's distribution at that position, or the token in the data")
    g.add_argument("--ttt-steps", type=int, default=None,
                   help="extra unrolled steps on own predictions (0 = off; default: 1 eagle1, 3 eagle3)")
    g.add_argument("--ttt-decay", type=float, default=0.8, help="loss weight of step k is decay**(k-1)")
    g.add_argument("--ttt-pilot-minutes", type=float, default=0.0,
                   help="train plain and TTT variants this long each and keep the better (0 = trust --ttt-steps)")
    g.add_argument("--head-intermediate", type=int_at_least(0), default=0,
                   help="MLP width of a fresh head's decoder layer (0 = the target's; --init-head keeps its own)")
    g.add_argument("--head-layers", type=int_at_least(0), default=0,
                   help="eagle1: decoder layers of the head (0 = one, or --init-head's); a continued head "
                        "grows to this many, each new layer starting as one that adds nothing")
    g.add_argument("--init-head", default=None,
                   help="start from this head folder instead of a fresh one (continue training)")
    g.add_argument("--restart-minutes", type=float, default=0.0,
                   help="every this many minutes, save the training state (train_state.pt: head, optimizer, place in "
                        "the data) and go on in a fresh process: a CPU run slows down as its heap fragments. A run "
                        "that was stopped resumes from the last state. 0 = one process, no state saved")
    g.add_argument("--keep-better", action="store_true",
                   help="copy to --head-out only if the new head's held-out chain score is at least that of the "
                        "head already there: both scored on the first --exclude-prompts file (a fixed held-out set) when given, "
                        "else each on its own run's split")
    g.add_argument("--pilot-warmup-steps", type=int, default=10, help="warmup of the short pilot runs")
    g.add_argument("--val-frac", type=float, default=0.04)
    g.add_argument("--eval-steps", type=int, default=6, help="draft steps measured on held-out data")
    g.add_argument("--eval-every", type=float, default=2.0, help="evaluate every this many epochs")
    g.add_argument("--autocast", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast for the head (auto: on GPUs and CPUs with native bf16)")
    return p


# ---- utilities ----------------------------------------------------------------------------
def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)
    sys.stderr.flush()


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def use_autocast(args, target) -> bool:
    from eagle2.precision import has_cpu_bf16

    if args.autocast != "auto":
        return args.autocast == "on"
    return target.device.type == "cuda" or has_cpu_bf16()


# ---- data for training --------------------------------------------------------------------
class FeatureData:
    """features.pt as per-sequence views: tokens (int32), features (bf16), answer start."""

    def __init__(self, path: Path):
        d = torch.load(path, weights_only=False)
        self.tokens, self.feats, self.offsets = d["tokens"], d["feats"], d["offsets"]
        self.aux = d.get("aux")  # EAGLE-3 inputs: the fused three target layers, or None
        self.answer_start, self.temperature = d["answer_start"], d["temperature"]
        self.ids = d.get("ids")  # row ids ("task-…" for task answers)
        self.lengths = (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: list[int], with_aux: bool = False):
        """Right-padded (tokens [B,T+1], feats [B,T,H] fp32, lengths [B], answer starts [B],
        and with_aux the fused layers [B,T,3H] fp32 or None)."""
        T = max(self.lengths[i] for i in idx)
        H = self.feats.shape[1]
        tok = torch.zeros((len(idx), T + 1), dtype=torch.long)
        feats = torch.zeros((len(idx), T, H), dtype=torch.float32)
        aux = torch.zeros((len(idx), T, self.aux.shape[1]), dtype=torch.float32) if with_aux else None
        for j, i in enumerate(idx):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            tok[j, : b - a] = self.tokens[a:b].long()
            feats[j, : b - a] = self.feats[a:b].float()
            if aux is not None:
                aux[j, : b - a] = self.aux[a:b].float()
        lengths = torch.tensor([self.lengths[i] for i in idx])
        starts = self.answer_start[idx]
        return tok, feats, lengths, starts, aux


def split(n: int, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    n_val = max(1, round(n * val_frac)) if n > 1 else 0
    return sorted(idx[n_val:]), sorted(idx[:n_val])


# ---- the unrolled head --------------------------------------------------------------------
def ttt_mask(L: int, k: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive (1, 1, L, k·L) mask for draft step k (1-based) over keys [step 1 | ... | step k].

    Query i (real context ends at r = i-k+1) sees step-1 keys at positions ≤ r and, for each
    step j ≥ 2, only the step-j key at position r+j-1 = i-(k-j).
    """
    q = torch.arange(L, device=device)[:, None]
    p = torch.arange(L, device=device)[None, :]
    blocks = [p <= q - (k - 1)] + [p == q - (k - j) for j in range(2, k + 1)]
    allowed = torch.cat(blocks, dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def unroll(head, embed, tok, feats, steps: int, noise: float, mask_dtype: torch.dtype) -> list[torch.Tensor]:
    """Predictions of draft steps 1..steps, each (B, L, H) with L = T-1 (see module docstring).
    feats are what step 1 reads: the last hidden states (EAGLE-1) or the fused layers (EAGLE-3)."""
    from transformers import DynamicCache

    B, T, _ = feats.shape
    L = T - 1
    e = embed(tok[:, 1:T]).float()
    f_in = feats[:, :-1]
    if noise > 0:
        f_in = f_in + (torch.rand_like(f_in) - 0.5) * noise
    pos = torch.arange(L, device=feats.device)[None].expand(B, L)
    cache = DynamicCache()
    preds = []
    for k in range(1, steps + 1):
        if k > 1:
            prev = preds[-1]
            f_in = torch.cat((torch.zeros_like(prev[:, :1]), prev[:, :-1]), dim=1)
        preds.append(head(e, f_in, pos, attention_mask=ttt_mask(L, k, mask_dtype, feats.device), cache=cache))
    return preds


def loss_positions(lengths: torch.Tensor, starts: torch.Tensor, L: int) -> torch.Tensor:
    """(B, L) bool: position i is trained/evaluated when its predicted token t_{i+2} is an answer token."""
    i = torch.arange(L, device=lengths.device)[None]
    return (i + 2 >= starts[:, None]) & (i + 2 < lengths[:, None])


def ce_logits(out_head, x: torch.Tensor) -> torch.Tensor:
    """Logits over the rows the CE term scores: the whole frozen lm_head, or (--train-vocab N) a
    ReducedLMHead's kept rows in token-id order, as the reduced draft vocabulary drafts from
    them. The lm_head matmul is most of a training step; 8k rows make it 6x cheaper."""
    x = x.to(out_head.weight.dtype)
    return out_head.rows(x) if isinstance(out_head, ReducedLMHead) else out_head(x)


def train_vocab_ids(data: "FeatureData", idx: list[int], n: int, vocab_size: int, always=()) -> torch.Tensor:
    """The n most frequent answer tokens of the training split (plus `always`, e.g. EOS)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for i in idx:
        a = int(data.offsets[i]) + int(data.answer_start[i])
        counts += torch.bincount(data.tokens[a:int(data.offsets[i + 1])].long(), minlength=vocab_size)
    nz = counts.nonzero().flatten().tolist()
    return torch.tensor(top_tokens({t: int(counts[t]) for t in nz}, n, always=always, vocab_size=vocab_size),
                        dtype=torch.long)  # sorted ids


def head_losses(preds, tok, feats, valid, out_head, ce_frac: float, decay: float,
                ce_labels: str = "target"):
    """Per draft step (k, weight, SmoothL1, CE); out_head is the lm_head or a ReducedLMHead."""
    ids = getattr(out_head, "token_ids", None)
    target_f = feats[:, 1:]
    labels = tok[:, 2:]
    wsum, parts = 0.0, []
    L = valid.shape[1]
    for k, p in enumerate(preds, start=1):
        m = valid & (torch.arange(L, device=valid.device)[None] >= k - 1)
        n = int(m.sum())
        if n == 0:
            continue
        pm = p[m]
        vloss = F.smooth_l1_loss(pm.float(), target_f[m])
        n_ce = max(1, int(round(n * ce_frac)))
        sel = torch.randperm(n, device=p.device)[:n_ce] if n_ce < n else torch.arange(n, device=p.device)
        logits = ce_logits(out_head, pm[sel]).float()
        if ce_labels == "target":
            with torch.no_grad():
                q = torch.softmax(ce_logits(out_head, target_f[m][sel]).float(), dim=-1)
            ploss = F.cross_entropy(logits, q)
        else:
            lab = labels[m][sel]
            if ids is not None:  # position of the label among the kept rows; others are skipped
                pos = torch.searchsorted(ids, lab).clamp(max=len(ids) - 1)
                keep = ids[pos] == lab
                logits, lab = logits[keep], pos[keep]
            ploss = F.cross_entropy(logits, lab) if len(lab) else logits.sum() * 0
        w = decay ** (k - 1)
        parts.append((k, w, vloss, ploss))
        wsum += w
    return parts, wsum


def eagle3_losses(preds, feats, valid, head, rows: ReducedLMHead, ce_frac: float, decay: float):
    """Per draft step (k, weight, 0, CE): EAGLE-3 drops the feature loss; its CE is against the
    target's next-token distribution over the draft vocabulary (`rows` = the target's lm_head rows
    of the draft tokens, in draft-id order: a softmax over them is that distribution renormalised)."""
    target_f = feats[:, 1:]
    wsum, parts = 0.0, []
    L = valid.shape[1]
    zero = feats.new_zeros(())
    for k, p in enumerate(preds, start=1):
        m = valid & (torch.arange(L, device=valid.device)[None] >= k - 1)
        n = int(m.sum())
        if n == 0:
            continue
        n_ce = max(1, int(round(n * ce_frac)))
        sel = torch.randperm(n, device=p.device)[:n_ce] if n_ce < n else torch.arange(n, device=p.device)
        logits = head.draft_logits(p[m][sel]).float()
        with torch.no_grad():
            q = torch.softmax(ce_logits(rows, target_f[m][sel]).float(), dim=-1)
        w = decay ** (k - 1)
        parts.append((k, w, zero, F.cross_entropy(logits, q)))
        wsum += w
    return parts, wsum


def draft_logits(head, hidden: torch.Tensor, lm_head) -> torch.Tensor:
    """The logits a predicted hidden state drafts from (fp32): the target's lm_head for an EAGLE-1
    head, the head's own draft-vocabulary lm_head for an EAGLE-3 one (columns = `head.draft_ids`)."""
    if head.kind == "eagle3":
        return head.draft_logits(hidden.to(head.lm_head.weight.dtype)).float()
    return lm_head(hidden.to(lm_head.weight.dtype)).float()


def combine(parts, wsum: float, ce_weight: float):
    return sum(w * (v + ce_weight * c) for _, w, v, c in parts) / wsum


@torch.no_grad()
def evaluate(head, data: FeatureData, idx: list[int], target, args, ac: bool,
             out_head=None) -> dict:
    """Held-out top-1 agreement with the target by draft step: over the full vocabulary (what the
    default drafter proposes) and, for an EAGLE-1 head trained on fewer rows, over those rows too."""
    head.eval()
    embed, lm_head = target.model.get_input_embeddings(), target.model.lm_head
    eagle3 = head.kind == "eagle3"
    ids = None if eagle3 else getattr(out_head, "token_ids", None)  # set when training scored fewer rows
    steps = args.eval_steps
    correct, count, correct_rows = [0] * steps, [0] * steps, [0] * steps
    vl, cl, nl, ncl = 0.0, 0.0, 0, 0
    mdt = torch.bfloat16 if ac else torch.float32
    dev = target.device
    for g in td.length_batches([data.lengths[i] for i in idx], args.batch_tokens * 2):
        tok, feats, lengths, starts, aux = (x.to(dev) if x is not None else None
                                            for x in data.batch([idx[j] for j in g], with_aux=eagle3))
        L = feats.shape[1] - 1
        if L < 1:
            continue
        valid = loss_positions(lengths, starts, L)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ac):
            preds = unroll(head, embed, tok, aux if eagle3 else feats, steps, 0.0, mdt)
            # the label is the target's own top-1 at that position (what greedy verification checks)
            target_f = feats[:, 1:][valid]
            labels = torch.zeros(tok[:, 2:].shape, dtype=torch.long, device=dev)
            labels[valid] = torch.cat([lm_head(c.to(lm_head.weight.dtype)).argmax(-1) for c in target_f.split(4096)])
            for k, p in enumerate(preds, start=1):
                m = valid & (torch.arange(L, device=dev)[None] >= k - 1)
                if not m.any():
                    continue
                pm, lab = p[m], labels[m]
                for c in range(0, pm.shape[0], 4096):  # one lm_head product per chunk serves every figure
                    chunk, lab_c = pm[c:c + 4096], lab[c:c + 4096]
                    logits = draft_logits(head, chunk, lm_head)
                    top1 = head.draft_ids[logits.argmax(-1)] if eagle3 else logits.argmax(-1)
                    correct[k - 1] += int((top1 == lab_c).sum())
                    if ids is not None:
                        correct_rows[k - 1] += int((ids[logits[:, ids].argmax(-1)] == lab_c).sum())
                    if k == 1:  # step-1 CE against the target's top-1
                        if eagle3:
                            lp = torch.log_softmax(logits, -1)
                            pos = torch.searchsorted(head.draft_ids, lab_c).clamp(max=head.draft_vocab_size - 1)
                            hit = head.draft_ids[pos] == lab_c
                            cl += float(-lp[hit].gather(1, pos[hit][:, None]).sum())  # labels it can draft
                            ncl += int(hit.sum())
                        else:
                            cl += float(F.cross_entropy(logits, lab_c, reduction="sum"))
                            ncl += lab_c.numel()
                count[k - 1] += int(m.sum())
                if k == 1:  # step-1 feature loss (EAGLE-1)
                    if not eagle3:
                        vl += float(F.smooth_l1_loss(pm.float(), target_f, reduction="sum")) / feats.shape[-1]
                    nl += int(m.sum())
    head.train()
    acc = [c / max(n, 1) for c, n in zip(correct, count)]
    score, run = 0.0, 1.0
    for a in acc:
        run *= a
        score += run
    out = {"acc": [round(a, 4) for a in acc], "score": round(score, 4), "positions": count[0],
           "vloss": round(vl / max(nl, 1), 5), "ce": round(cl / max(ncl, 1), 4)}
    if ids is not None:
        out["acc_train_vocab"] = [round(c / max(n, 1), 4) for c, n in zip(correct_rows, count)]
    return out


def heldout_features(heldout: Path, folder: Path, arch: str, args) -> Path:
    """The features of every sequence of a fixed held-out token file, computed once into `folder` by
    this pipeline's features stage (with `args`' target, precision and lengths); a folder that holds
    the features of another file, or EAGLE-1 features where EAGLE-3 ones are asked for, is refused."""
    if (folder / "features.pt").exists():
        made = json.loads((folder / "config.json").read_text())["args"]
        if [str(d) for d in made.get("data") or []] != [str(heldout)] or (arch == "eagle3" and made["arch"] != arch):
            raise ValueError(f"{folder} holds the features of {made.get('data')} ({made['arch']}), "
                             f"not of {heldout} ({arch}): give another folder")
    else:
        main(["--out", str(folder), "--data", str(heldout), "--until", "features", "--arch", arch,
              "--model", str(args.model), "--dtype", str(args.dtype), "--device", str(args.device),
              "--max-seq-len", str(args.max_seq_len), "--feature-batch-tokens", str(args.feature_batch_tokens),
              "--threads", str(args.threads or 0)])
    return folder / "features.pt"


def heldout_scores(heads: list, heldout: Path, folder: Path, args, target=None) -> list[dict]:
    """Score head folders on every sequence of a fixed held-out token file (never trained on): every
    head sees the same sequences, so a new head and the one it may replace compare fairly. `args`
    (a run's) gives the target, precision and evaluation options; a `target` already loaded is used."""
    from eagle2.head import load_head_folder
    from eagle2.models import load_target

    heads = [load_head_folder(h) for h in heads]
    arch = "eagle3" if any(h.kind == "eagle3" for h in heads) else "eagle1"  # eagle3 features hold both
    data = FeatureData(heldout_features(heldout, folder, arch, args))
    target = target or load_target(args.model, dtype=args.dtype, device=args.device)
    idx = list(range(len(data)))
    ac = use_autocast(args, target)
    return [{**evaluate(h.to(target.device), data, idx, target, args, ac), "val_sequences": len(idx)} for h in heads]


class RestartTraining(Exception):
    """Raised once a training segment has saved its state: the caller goes on in a fresh process."""


# options a resumed run must share with the run that saved the state
RESUME_KEYS = ("arch", "seed", "lr", "min_lr_frac", "epochs", "train_minutes", "batch_tokens", "warmup_steps",
               "train_vocab", "ttt_decay", "ce_frac", "ce_weight", "noise", "val_frac", "init_head",
               "head_layers")


def save_train_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed while saving keeps the previous state


def load_train_state(path: Path, args) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    parser = build_parser()  # an option newer than the saved state counts as left at its default
    saved_args = {k: state["args"].get(k, parser.get_default(k)) for k in RESUME_KEYS}
    diff = [k for k in RESUME_KEYS if saved_args[k] != getattr(args, k, None)]
    if diff:
        k = diff[0]
        raise ValueError(f"{path} was saved by a run with --{k.replace('_', '-')} {saved_args[k]} "
                         f"(this run: {getattr(args, k, None)}): give the same options, or --force train to start over")
    return state


def train_head(target, data: FeatureData, train_idx, val_idx, args, ttt_steps: int, minutes: float,
               epochs: int, desc: str, warmup: int | None = None, out_head=None,
               state_path: Path | None = None, saved: dict | None = None, extra_state: dict | None = None) -> dict:
    """Resumes from `saved` (load_train_state) when given. With state_path, saves the state there
    and raises RestartTraining every --restart-minutes (a long CPU run slows down as its heap
    fragments; a fresh process runs at full speed again)."""
    from eagle2.head import Eagle3Head, EagleHead, load_head_folder

    torch.manual_seed(args.seed)
    embed, lm_head = target.model.get_input_embeddings(), target.model.lm_head
    out_head = lm_head if out_head is None else out_head
    if args.init_head:
        head = load_head_folder(args.init_head)
        if head.kind != args.arch:
            raise ValueError(f"--init-head {args.init_head} is an {head.kind} head, --arch is {args.arch}")
    elif args.arch == "eagle3":  # draft vocabulary = the rows the CE scores; norm + lm_head start as the target's
        ids = out_head.token_ids if isinstance(out_head, ReducedLMHead) else torch.arange(lm_head.weight.shape[0])
        head = Eagle3Head.for_target(target.config, ids.cpu(), target_model=target.model)
    else:
        head = EagleHead.for_target(target.config, intermediate_size=args.head_intermediate or None,
                                    num_layers=max(1, args.head_layers))
    if args.head_layers and args.head_layers != head.num_layers:
        if head.kind == "eagle3":
            raise ValueError("--head-layers: EAGLE-3 heads have one decoder layer")
        if args.head_layers < head.num_layers:
            raise ValueError(f"--head-layers {args.head_layers}: --init-head {args.init_head} already has "
                             f"{head.num_layers} layers (a head grows, it is not cut)")
        head = head.grown(args.head_layers)
    head = head.to(target.device).float().train()
    eagle3 = head.kind == "eagle3"
    if eagle3:  # its CE is over its own draft vocabulary (a continued head keeps the one it has)
        out_head = ReducedLMHead(lm_head, head.draft_ids)
    if eagle3 and data.aux is None:
        raise ValueError("features.pt has no EAGLE-3 layer features: re-run the features stage with --arch eagle3")
    ac = use_autocast(args, target)
    mdt = torch.bfloat16 if ac else torch.float32
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    groups = td.length_batches([data.lengths[i] for i in train_idx], args.batch_tokens)
    groups = [[train_idx[j] for j in g] for g in groups]
    total_steps = max(1, epochs * len(groups))
    budget = minutes * 60 if minutes else float("inf")
    eval_every = max(1, int(round(args.eval_every * len(groups))))
    rng = random.Random(args.seed)
    steps = 1 + ttt_steps
    warmup = args.warmup_steps if warmup is None else warmup
    history, best, best_state = [], None, None
    t0 = time.perf_counter()
    eval_s = 0.0  # held-out evaluation does not count against the training budget
    step, tokens_seen, run_loss, run_n = 0, 0, {}, 0
    epoch, pos, order = 0, 0, None  # where in the data the next step starts
    processes = 1  # the training ran in this many processes (--restart-minutes)
    if saved is not None:
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        history, best, best_state = saved["history"], saved["best"], saved["best_state"]
        step, tokens_seen, run_loss, run_n = saved["step"], saved["tokens_seen"], saved["run_loss"], saved["run_n"]
        epoch, pos, order = saved["epoch"], saved["pos"], saved["order"]
        processes = saved["processes"] + 1
        t0 -= saved["train_seconds"]
        log(f"{desc}: resumed at step {step} (epoch {epoch}, {saved['train_seconds'] / 60:.1f} training minutes) "
            f"from {state_path}")
    restart_s = args.restart_minutes * 60 if state_path is not None and args.restart_minutes > 0 else None
    segment_t0, segment_step = time.perf_counter(), step
    bar = tqdm(total=total_steps, initial=step, desc=desc, unit="step")
    stop = False

    def do_eval(epoch_f):
        nonlocal best, best_state, eval_s
        t_eval = time.perf_counter()
        ev = evaluate(head, data, val_idx, target, args, ac, out_head)
        eval_s += time.perf_counter() - t_eval
        rec = {"step": step, "epoch": round(epoch_f, 3),
               "minutes": round((time.perf_counter() - t0 - eval_s) / 60, 2),
               "tokens_seen": tokens_seen, "lr": opt.param_groups[0]["lr"],
               "train": {k: round(v / max(run_n, 1), 5) for k, v in run_loss.items()}, "val": ev}
        history.append(rec)
        if best is None or ev["score"] > best["val"]["score"]:
            best = rec
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        log(f"{desc}: step {step} ep {epoch_f:.2f} train {rec['train']} | val acc {ev['acc']} "
            f"score {ev['score']} vloss {ev['vloss']} ce {ev['ce']}")

    while epoch < epochs:
        if order is None:
            order = list(range(len(groups)))
            rng.shuffle(order)
        while pos < len(order):
            elapsed = time.perf_counter() - t0 - eval_s
            if elapsed > budget:
                stop = True
                break
            if restart_s is not None and step > segment_step and time.perf_counter() - segment_t0 > restart_s:
                bar.close()
                save_train_state(state_path, {
                    "args": {k: getattr(args, k, None) for k in RESUME_KEYS}, "head": head.state_dict(),
                    "opt": opt.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                    "history": history, "best": best, "best_state": best_state, "step": step,
                    "tokens_seen": tokens_seen, "run_loss": run_loss, "run_n": run_n, "epoch": epoch, "pos": pos,
                    "order": order, "train_seconds": elapsed, "processes": processes, **(extra_state or {})})
                log(f"{desc}: state saved at step {step} to {state_path}; going on in a fresh process")
                raise RestartTraining
            gi = order[pos]
            pos += 1
            progress = max(step / total_steps, elapsed / budget if budget < float("inf") else 0.0)
            if step < warmup:
                lr_f = (step + 1) / warmup
            else:
                lr_f = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            for pg in opt.param_groups:
                pg["lr"] = args.lr * lr_f
            if step % 20 == 0:
                td.adapt_threads(args)
            tok, feats, lengths, starts, aux = (x.to(target.device) if x is not None else None
                                                for x in data.batch(groups[gi], with_aux=eagle3))
            L = feats.shape[1] - 1
            if L < 1:
                continue
            valid = loss_positions(lengths, starts, L)
            with torch.autocast(target.device.type, dtype=torch.bfloat16, enabled=ac):
                preds = unroll(head, embed, tok, aux if eagle3 else feats, steps, args.noise, mdt)
                if eagle3:
                    parts, wsum = eagle3_losses(preds, feats, valid, head, out_head, args.ce_frac, args.ttt_decay)
                else:
                    parts, wsum = head_losses(preds, tok, feats, valid, out_head, args.ce_frac, args.ttt_decay,
                                              args.ce_labels)
                if not parts:
                    continue
                loss = combine(parts, wsum, 1.0 if eagle3 else args.ce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), args.grad_clip)
            opt.step()
            step += 1
            tokens_seen += int(lengths.sum())
            for k, _, v, c in parts:
                run_loss[f"v{k}"] = run_loss.get(f"v{k}", 0.0) + float(v.detach())
                run_loss[f"ce{k}"] = run_loss.get(f"ce{k}", 0.0) + float(c.detach())
            run_n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{args.lr * lr_f:.1e}")
            if step % eval_every == 0:
                do_eval(epoch + step / max(len(groups), 1) - epoch)
                run_loss, run_n = {}, 0
        if stop:
            break
        epoch, pos, order = epoch + 1, 0, None
    bar.close()
    if not history or history[-1]["step"] != step:
        do_eval(step / max(len(groups), 1))
    head.load_state_dict(best_state)
    return {"head": head, "history": history, "best": best, "steps": step, "ttt_steps": ttt_steps,
            # training minutes, as the budget counts them: a resumed process's t0 holds only the
            # earlier processes' training time, so this process's evaluations are left out too
            "tokens_seen": tokens_seen, "minutes": round((time.perf_counter() - t0 - eval_s) / 60, 2),
            "steps_per_epoch": len(groups), "autocast_bf16": ac, "processes": processes}


def stage_train(target, args, out: Path) -> dict:
    data = FeatureData(out / "features.pt")
    train_idx, val_idx = split(len(data), args.val_frac, args.seed)
    if not train_idx:
        train_idx = val_idx
    tok_count = lambda ids: sum(data.lengths[i] for i in ids)  # noqa: E731
    meta = {"arch": args.arch, "init_head": args.init_head, "head_layers": args.head_layers or None,
            "train_sequences": len(train_idx), "val_sequences": len(val_idx),
            "train_tokens": tok_count(train_idx), "val_tokens": tok_count(val_idx)}
    out_head, vocab = target.model.lm_head, int(target.model.lm_head.weight.shape[0])
    if 0 < args.train_vocab < vocab:
        out_head = ReducedLMHead(out_head, train_vocab_ids(data, train_idx, args.train_vocab, vocab,
                                                           target.eos_token_ids))
        meta["train_vocab"] = len(out_head.token_ids)
    ttt = args.ttt_steps
    pilots = []
    state_path = out / STATE_FILE
    started = time.time()
    saved = load_train_state(state_path, args)
    if saved is not None:  # the pilots ran in an earlier segment
        ttt, pilots, started = saved["ttt_steps"], saved["pilots"], saved["stage_started"]
    elif args.ttt_steps > 0 and args.ttt_pilot_minutes > 0:
        for variant in (0, args.ttt_steps):
            r = train_head(target, data, train_idx, val_idx, args, variant, args.ttt_pilot_minutes,
                           args.epochs, f"pilot ttt={variant}", warmup=args.pilot_warmup_steps,
                           out_head=out_head)
            pilots.append({"ttt_steps": variant, "best": r["best"], "steps": r["steps"],
                           "tokens_seen": r["tokens_seen"], "minutes": r["minutes"]})
        ttt = max(pilots, key=lambda p: p["best"]["val"]["score"])["ttt_steps"]
        log(f"pilots: {[(p['ttt_steps'], p['best']['val']['score']) for p in pilots]} → ttt_steps={ttt}")
    r = train_head(target, data, train_idx, val_idx, args, ttt, args.train_minutes, args.epochs, f"train ttt={ttt}",
                   out_head=out_head, state_path=state_path, saved=saved,
                   extra_state={"ttt_steps": ttt, "pilots": pilots, "stage_started": started})
    head_dir = out / "head"
    r["head"].save_pretrained(head_dir, dtype=torch.bfloat16)
    meta.update({"ttt_steps_used": ttt, "pilots": pilots, "history": r["history"], "best": r["best"],
                 "steps": r["steps"], "steps_per_epoch": r["steps_per_epoch"], "tokens_seen": r["tokens_seen"],
                 "processes": r["processes"],
                 "train_minutes": r["minutes"], "autocast_bf16": r["autocast_bf16"],
                 "head_bytes": (head_dir / "model.safetensors").stat().st_size,
                 "head_params": sum(p.numel() for p in r["head"].parameters())})
    if r["head"].kind == "eagle3":
        meta["draft_vocab"] = r["head"].draft_vocab_size
    write_json(out / "train.json", meta)
    state_path.unlink(missing_ok=True)
    # seconds since the stage first started, across processes (main() times only this one)
    return {"seconds": round(time.time() - started, 1),
            **{k: v for k, v in meta.items() if k not in ("history", "pilots")}}


# ---- report -------------------------------------------------------------------------------
def write_report(out: Path, args, target_name: str) -> dict:
    stages = {s: json.loads((out / f"stage_{s}.json").read_text()) for s in ("data",) + STAGES
              if (out / f"stage_{s}.json").exists()}
    train = json.loads((out / "train.json").read_text()) if (out / "train.json").exists() else {}
    config = json.loads((out / "config.json").read_text())
    report = {"target": target_name, "command": config.get("command"), "config": config.get("args"),
              "stages": stages, "training": train,
              "total_minutes": round(sum(s.get("seconds", 0) for s in stages.values()) / 60, 2)}
    head_dir = out / "head"
    write_json(head_dir / "report.json", report)
    (head_dir / "TRAINING.md").write_text(training_md(report))
    return report


def training_md(r: dict) -> str:
    st, tr = r["stages"], r["training"]
    best = tr.get("best") or {}
    val = best.get("val", {})
    p, a, f, tk = st.get("prompts", {}), st.get("answers", {}), st.get("features", {}), st.get("tasks", {})
    lines = [
        f"# EAGLE draft head for {r['target']}",
        "",
        "Trained by `eagle2/train.py` on data written by the target itself (Magpie-style chat prompts and "
        "task prompts over text shipped with CPython, the target's own answers); no external data set or "
        "benchmark was used." + (f" The written data came from `{st['data']['source']}` (--data)." if st.get("data") else ""),
        "",
        f"Command: `{r.get('command')}`",
        "",
        "| stage | minutes | output |",
        "|---|---|---|",
        f"| prompts | {p.get('seconds', 0) / 60:.1f} | {p.get('kept', '?')} kept of {p.get('raw', '?')} sampled |",
        f"| answers | {a.get('seconds', 0) / 60:.1f} | {a.get('answers', '?')} answers ({a.get('greedy', '?')} greedy, "
        f"{a.get('sampled', '?')} sampled), {a.get('answer_tokens', '?')} answer tokens |",
        f"| tasks | {tk.get('seconds', 0) / 60:.1f} | {tk.get('answers', '?')} task answers ({tk.get('answer_tokens', '?')} "
        f"answer tokens; planned {tk.get('kinds', '?')}) |",
        f"| features | {f.get('seconds', 0) / 60:.1f} | {f.get('tokens', '?')} tokens (bf16 hidden states"
        f"{', layers ' + str(f.get('eagle3_layers')) if f.get('eagle3_layers') else ''}) |",
        f"| train | {st.get('train', {}).get('seconds', 0) / 60:.1f} | {tr.get('steps', '?')} steps, "
        f"{tr.get('tokens_seen', '?')} tokens seen, TTT steps {tr.get('ttt_steps_used', '?')} |",
        "",
        f"Total: {r['total_minutes']:.1f} min. Held-out: {tr.get('val_sequences', '?')} sequences, "
        f"{val.get('positions', '?')} answer positions.",
        "",
        "Held-out top-1 accuracy by draft step: the share of positions where the head's top token is "
        "the target's top token (step 1 reads real target features; step k is rolled out on the "
        "head's own features for k-1 steps, tokens teacher-forced):",
        "",
        "| step | " + " | ".join(str(i + 1) for i in range(len(val.get("acc", [])))) + " |",
        "|---|" + "---|" * len(val.get("acc", [])),
        "| top-1 | " + " | ".join(f"{x:.3f}" for x in val.get("acc", [])) + " |",
        "",
        f"Chain score Σ_k Π_j≤k acc_j = {val.get('score', '?')} (best checkpoint, epoch {best.get('epoch', '?')}); "
        f"step-1 SmoothL1 {val.get('vloss', '?')}, CE {val.get('ce', '?')}.",
    ]
    if tr.get("pilots"):
        lines += ["", "Training-time-test pilots (same data, same wall time each):", ""]
        for pl in tr["pilots"]:
            v = pl["best"]["val"]
            lines.append(f"- ttt_steps={pl['ttt_steps']}: {pl['steps']} steps, acc {v['acc']}, score {v['score']}")
    ce_to = {"target": "the target's next-token distribution", "data": "the token in the data"}[
        r["config"].get("ce_labels", "data")]
    rows = (f"the lm_head rows of the {tr['train_vocab']} most frequent answer tokens" if tr.get("train_vocab")
            else "the frozen lm_head")
    cfg = r["config"]
    if cfg.get("arch") == "eagle3":
        lines += ["", f"Objective (EAGLE-3): CE of the head's own draft-vocabulary logits ({tr.get('draft_vocab', 'all')} "
                  f"tokens) against the target's next-token distribution renormalised over them, at every unrolled "
                  f"step (training-time test, {1 + int(tr.get('ttt_steps_used') or 0)} steps, step k weighted "
                  f"{cfg.get('ttt_decay')}^(k-1), on a {cfg.get('ce_frac')} random share of positions); inputs: the "
                  f"target's hidden_states {f.get('eagle3_layers')} (the inputs of those layers) fused by fc; "
                  f"AdamW lr {cfg.get('lr')} cosine, bf16 autocast; best checkpoint by held-out chain score. "
                  "See report.json for everything.", ""]
    else:
        lines += ["", f"Objective: SmoothL1 on the next feature + 0.1 × CE through {rows} against "
                  f"{ce_to} (on a {cfg.get('ce_frac')} random share of positions), uniform input-feature noise "
                  f"{cfg.get('noise')}, AdamW lr {cfg.get('lr')} cosine, bf16 autocast; best "
                  "checkpoint by held-out chain score. See report.json for everything.", ""]
    return "\n".join(lines)


# ---- driver -------------------------------------------------------------------------------
def resolve_arch_defaults(args) -> argparse.Namespace:
    """Options left unset take the head kind's defaults (ARCH_DEFAULTS)."""
    for k, v in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None, restart_by_exec: bool = False) -> int:
    """Run the stages. A training segment that saved its state (--restart-minutes) goes on in a
    fresh process when restart_by_exec (the command line), else in this one (a library call). The
    segments after the first get AFTER_RESTART, which voids --force (however it was spelled): a
    resumed run must not redo the stages it forced."""
    argv = list(sys.argv[1:] if argv is None else argv)
    while True:
        try:
            return run_stages(argv)
        except RestartTraining:
            if AFTER_RESTART not in argv:
                argv.append(AFTER_RESTART)
            if restart_by_exec:
                sys.stdout.flush()
                sys.stderr.flush()
                os.execv(sys.executable, [sys.executable, "-m", "eagle2.train", *argv])


def run_stages(argv: list[str]) -> int:
    parser = build_parser()
    args = resolve_arch_defaults(parser.parse_args(argv))
    if args.passages and args.data:
        parser.error("--passages feeds the tasks stage, which --data skips: give one of them")
    if args.passages and STAGES.index(args.until) < STAGES.index("tasks"):
        parser.error("--passages feeds the tasks stage: --until must be tasks or later")
    if args.exclude_prompts:  # read now, not after an hour of writing data
        try:
            td.prompt_keys(args.exclude_prompts)
        except ValueError as e:
            parser.error(f"--exclude-prompts: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    forced: set[str] = set()
    if args.force is not None and not args.after_restart:
        names = args.force or list(STAGES)
        first = min(STAGES.index(n) for n in names)
        forced = set(STAGES[first:])
    import transformers

    if "train" in forced or not (out / STATE_FILE).exists():  # a resumed run keeps the config it goes on with
        write_json(out / "config.json", {
            "args": vars(args), "command": "python -m eagle2.train " + " ".join(argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()})
    todo = [s for s in STAGES[: STAGES.index(args.until) + 1]]
    if args.data:  # the written data comes from the file: only features and training run
        todo = [s for s in todo if s in ("features", "train")]
    if args.passages:  # the passages come from elsewhere: no chat prompts or answers of its own
        todo = [s for s in todo if s not in ("prompts", "answers")]
    run = [s for s in todo if s in forced or not (out / OUTPUTS[s]).exists()]
    target = None
    if run or (args.data and not (out / "answers.jsonl").exists()):
        from eagle2.models import load_target

        target = load_target(args.model, dtype=args.dtype, device=args.device)
        log(f"target {target.name}: {target.precision} on {target.device}, loaded in {target.load_seconds:.1f}s")
    if args.data and not (out / "answers.jsonl").exists():
        meta = td.import_tokens([Path(d) for d in args.data], out, target.tokenizer)
        write_json(out / "stage_data.json", meta)
        log(f"data: {meta}")
    funcs = {"prompts": td.stage_prompts, "answers": td.stage_answers, "tasks": td.stage_tasks,
             "features": td.stage_features,
             "train": stage_train}
    for s in todo:
        if s not in run:
            log(f"{s}: {OUTPUTS[s]} exists, skipped (use --force {s} to redo)")
            continue
        if s in forced:
            for name in [OUTPUTS[s]] + PARTIALS[s]:
                (out / name).unlink(missing_ok=True)
        log(f"{s}: start")
        t0 = time.perf_counter()
        meta = funcs[s](target, args, out)
        meta = {"seconds": round(time.perf_counter() - t0, 1), **meta}
        write_json(out / f"stage_{s}.json", meta)
        log(f"{s}: done in {meta['seconds'] / 60:.1f} min: " + json.dumps({k: v for k, v in meta.items() if k != "best"})[:600])
    if args.until == "train":
        name = target.name if target is not None else str(args.model)
        report = write_report(out, args, "SmolLM2-135M-Instruct" if name == "default" else name)
        td.export_tokens(out, out / "head" / TOKENS_FILE)  # what a later run resumes from (--data)
        files = ["config.json", "model.safetensors", "report.json", "TRAINING.md", TOKENS_FILE]
        sources = [out / f for f in ("answers.jsonl", "tasks.jsonl") if (out / f).exists() and (out / f).stat().st_size]
        if sources:  # token frequencies of every answer (chat and task): the reduced draft vocabulary
            from eagle2.vocab import COUNTS_FILE, count_answer_files, save_counts

            save_counts(count_answer_files(sources), out / "head" / COUNTS_FILE,
                        {"source": ", ".join(map(str, sources))})
            files.append(COUNTS_FILE)
        new_score = ((report["training"].get("best") or {}).get("val") or {}).get("score", 0.0)
        old = Path(args.head_out) / "report.json" if args.head_out else None
        old_score = None
        if args.keep_better and old is not None and old.exists():
            if args.exclude_prompts:  # the fixed held-out set: both heads scored on the same sequences
                held = Path(args.exclude_prompts[0])
                log(f"--keep-better: scoring the new head and the one in {args.head_out} on {held}")
                new_ev, old_ev = heldout_scores([out / "head", Path(args.head_out)], held, out / "heldout", args, target)
                write_json(out / "keep_better.json", {"heldout": str(held), "new": new_ev, "old": old_ev})
                new_score, old_score = new_ev["score"], old_ev["score"]
                log(f"held-out top-1 by step: new {new_ev['acc']}, old {old_ev['acc']}")
            else:  # each head's score on its own run's split: a rough guide only
                old_best = json.loads(old.read_text()).get("training", {}).get("best") or {}
                old_score = (old_best.get("val") or {}).get("score")
        if args.head_out and old_score is not None and new_score < old_score:
            log(f"held-out score {new_score} is below {old_score} of the head in {args.head_out}: not copied")
        elif args.head_out:
            dst = Path(args.head_out)
            dst.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(out / "head" / f, dst / f)
                os.chmod(dst / f, 0o644)
            log(f"head copied to {dst}")
        best = report["training"].get("best") or {}
        log(f"done: held-out top-1 by step {best.get('val', {}).get('acc')}, total {report['total_minutes']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(restart_by_exec=True))
