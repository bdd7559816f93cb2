"""Cheaper drafting: the draft head scores only the N most frequent tokens.

The EAGLE head reuses the target's `lm_head`; for SmolLM2 that is 576 x 49,152, so scoring
four tree nodes is a 113 M multiply-add matmul, about what the target's whole body costs for
one token. A model's output is dominated by a few thousand tokens, so `ReducedVocabDrafter`
keeps only the lm_head rows of the N most frequent ones (as in EAGLE-3 / FR-Spec;
draft.ReducedVocabDrafter, built by draft.reduce_drafter). Its log-
probabilities still come back over the full vocabulary (the other tokens get probability 0),
so draft token ids are ordinary ids and every policy works unchanged. Verification is
untouched, so decoding stays exact: a token the drafter cannot propose just costs acceptance.

Token frequencies come from the head's training data (the target's own answers, see
eagle2/train.py) or from the target's answers to the prompts written below, never from
evaluation sets.

    python -m eagle2.vocab --from-answers runs/smollm2-head/answers.jsonl runs/smollm2-head/tasks.jsonl --out counts.json
    python -m eagle2.vocab --generate --out counts.json          # the target answers PROMPTS
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .files import write_text_atomic
from .packed import PackedLinear


COUNTS_SCHEMA = "eagle2-token-counts/1"
COUNTS_FILE = "token_counts.json"  # looked for next to a head's config.json

# Self-made prompts for counting the target's own output tokens (varied tasks and styles).
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how vaccines train the immune system, for a ten-year-old.",
    "Give me five tips for keeping houseplants alive in winter.",
    "Write a Python function that checks whether a string is a palindrome, with comments.",
    "What were the main causes of the French Revolution?",
    "Summarise the plot of a heist film you invent, in one paragraph.",
    "How do I convert 37 degrees Celsius to Fahrenheit? Show the steps.",
    "Compose a haiku about rain on a tin roof.",
    "List the planets of the solar system with one fact about each.",
    "Write a polite email asking a landlord to fix a leaking tap.",
    "What is the difference between a list and a tuple in Python?",
    "Describe the water cycle in simple terms.",
    "Give a recipe for a quick vegetable soup.",
    "Explain what inflation is and why central banks care about it.",
    "Write a limerick about a cat who loves to code.",
    "What are the pros and cons of working from home?",
    "Solve for x: 3x + 7 = 22. Explain each step.",
    "Write a JavaScript snippet that reverses an array without using reverse().",
    "Explain photosynthesis and why it matters for life on Earth.",
    "Suggest a three-day itinerary for a first visit to Rome.",
    "Pretend you are a medieval knight and describe your morning routine.",
    "What is machine learning? Keep it under 100 words.",
    "Write a motivational speech for a team that just lost a big game.",
    "How does a bicycle stay upright while moving?",
    "Compare renewable and fossil energy sources in a short table.",
    "Write a SQL query that finds the ten customers with the highest total orders.",
    "Explain the rules of chess to a complete beginner.",
    "What is the Pythagorean theorem and where is it used in everyday life?",
    "Draft a product description for a reusable water bottle.",
    "Tell me about the history of the printing press.",
    "How can I improve my sleep? Give practical advice.",
    "Write a dialogue between a robot and a child meeting for the first time.",
    "Explain recursion with a simple example.",
    "What causes earthquakes, and how are they measured?",
    "Write a thank-you note to a teacher who made a difference.",
    "If a train travels 120 km in 1.5 hours, what is its average speed?",
    "Describe the main features of Gothic architecture.",
    "Give me a weekly workout plan for a beginner with no equipment.",
    "What is the role of mitochondria in a cell?",
    "Write a poem about autumn leaves in free verse.",
    "Explain the difference between weather and climate.",
    "How do I write a good cover letter? Outline the key parts.",
    "Create a short quiz with three questions about world geography.",
    "What is a black hole, and how do scientists detect them?",
    "Write a bash command that counts the lines in every .txt file in a folder.",
    "Argue for and against school uniforms in two short paragraphs.",
    "Explain supply and demand with an example from a farmers' market.",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
)


# ---- the drafter ---------------------------------------------------------------------------
class ReducedLMHead(nn.Module):
    """The lm_head rows of `token_ids`, scattered back into full-vocabulary logits
    (every other token gets the dtype's lowest value, i.e. probability 0 after softmax)."""

    def __init__(self, lm_head: nn.Module, token_ids):
        super().__init__()
        weight = lm_head.weight
        ids = torch.as_tensor(sorted({int(t) for t in token_ids}), dtype=torch.long)
        vocab = weight.shape[0]
        if ids.numel() == 0:
            raise ValueError("a reduced vocabulary needs at least one token")
        if int(ids[0]) < 0 or int(ids[-1]) >= vocab:
            raise ValueError(f"reduced vocabulary ids must be in [0, {vocab})")
        self.vocab_size = vocab
        self.register_buffer("token_ids", ids.to(weight.device), persistent=False)
        self.weight = nn.Parameter(weight.detach()[ids.to(weight.device)].clone(), requires_grad=False)
        bias = getattr(lm_head, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach()[ids.to(bias.device)].clone(),
                                                           requires_grad=False)
        # a target with packed weights (eagle2.packed): its kept rows are packed alike
        self.format = lm_head.format if isinstance(lm_head, PackedLinear) else None
        self.packed = self.format.prepack(self.weight, self.bias) if self.format is not None else None

    def rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the kept tokens only, in `token_ids` order (training scores these)."""
        if self.packed is not None and not hidden.requires_grad:
            return self.format.linear(hidden, self.packed)
        return nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = self.rows(hidden)
        out = small.new_full((*small.shape[:-1], self.vocab_size), torch.finfo(small.dtype).min)
        return out.index_copy_(-1, self.token_ids, small)


# ---- on by default where it pays ---------------------------------------------------------
AUTO_VOCAB_SIZE = 8192  # the training CE's rows too (eagle2/train.py --train-vocab)
PAYS_BELOW = 0.8  # reduced when its draft step costs at most this share of a full-vocabulary one
CHOICE_SCHEMA = "eagle2-draft-vocab/1"


@torch.inference_mode()
def time_draft_steps(drafters: list, width: int = 4, prefix: int = 128, repeats: int = 9) -> list[float]:
    """Fastest time of one tree step (`width` nodes, as an expansion feeds) for each drafter,
    after a `prefix`-token commit of random tokens and features; the drafters take turns."""
    from .models import clock

    d0 = drafters[0]
    gen = torch.Generator().manual_seed(0)
    vocab = int(d0.embed.weight.shape[0])
    seq = torch.randint(0, vocab, (prefix + 1,), generator=gen).to(d0.device)
    feats = torch.randn(prefix, d0.embed.weight.shape[1], generator=gen).to(d0.device, d0.dtype)  # EAGLE-1/2
    toks = torch.randint(0, vocab, (width,), generator=gen).to(d0.device)
    parents = torch.full((width,), -1, dtype=torch.long, device=d0.device)
    best = [float("inf")] * len(drafters)
    for d in drafters:
        d.reset()
        d.commit(seq, feats)
    for r in range(repeats + 1):
        for i, d in enumerate(drafters):
            d._clear_slots()
            t = clock(d.device)
            d.step(toks, parents)
            if r:  # the first round warms up
                best[i] = min(best[i], clock(d.device) - t)
    for d in drafters:
        d.reset()
    return best


def choice_key(target, folder, size: int) -> str:
    import hashlib
    import platform

    cfg = target.model.config
    p = next(target.model.parameters())
    ident = {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
             "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "device": str(p.device.type), "dtype": target.precision,
             "gpu": torch.cuda.get_device_name(p.device) if p.device.type == "cuda" else None,
             "model": getattr(cfg, "_name_or_path", ""), "vocab": cfg.vocab_size, "hidden": cfg.hidden_size,
             "head": str(Path(folder).resolve()), "size": size}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def reduced_vocab_pays(full, reduced, target, folder) -> dict:
    """Measured once per machine + model + head (cached under cache_dir()/draft-vocab/): is a
    draft step with the reduced vocabulary at most PAYS_BELOW of a full one?"""
    from .models import cache_dir

    path = cache_dir() / "draft-vocab" / f"{choice_key(target, folder, reduced.draft_vocab)}.json"
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            if raw.get("schema") == CHOICE_SCHEMA:
                return raw
        except (OSError, json.JSONDecodeError):
            pass
    t_full, t_reduced = time_draft_steps([full, reduced])
    raw = {"schema": CHOICE_SCHEMA, "full_step_s": t_full, "reduced_step_s": t_reduced,
           "size": reduced.draft_vocab, "pays": t_reduced <= PAYS_BELOW * t_full}
    write_text_atomic(path, json.dumps(raw) + "\n")
    return raw


# ---- token frequencies ---------------------------------------------------------------------
def top_tokens(counts: dict, n: int, always=(), vocab_size: int | None = None) -> list[int]:
    """The n most frequent token ids (ties by id), plus `always` (e.g. EOS) on top.

    Only tokens that were counted are taken, unless `vocab_size` is given: then slots left over
    go to uncounted ids in id order (a BPE tokenizer numbers its merges roughly by frequency in
    its own training text, so a low id is a better guess than none)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"draft vocabulary size must be an int >= 1, got {n!r}")
    ranked = sorted(((int(t), int(c)) for t, c in counts.items()), key=lambda tc: (-tc[1], tc[0]))
    keep = [t for t, c in ranked[:n] if c > 0]
    if vocab_size is not None and len(keep) < n:
        seen = set(keep)
        keep += [t for t in range(vocab_size) if t not in seen][: n - len(keep)]
    return sorted(set(keep) | {int(a) for a in always})


def count_answers(path: str | os.PathLike, field: str = "answer_ids", every: int = 0, part: str = "all") -> Counter:
    """Token counts of the answers in a JSONL file (the head's training data: answers.jsonl).
    With every=k, part="fit" skips every k-th answer and part="held" keeps only those."""
    counts: Counter = Counter()
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    for i, line in enumerate(rows):
        if every and (part == "fit") == (i % every == 0):
            continue
        counts.update(json.loads(line).get(field) or [])
    if not counts and part == "all":  # one part of a short file may be empty
        raise ValueError(f"{path}: no {field!r} lists found")
    return counts


def count_answer_files(paths, every: int = 0, part: str = "all") -> Counter:
    """count_answers summed over several files: a training run's chat answers (answers.jsonl)
    and task answers (tasks.jsonl) together."""
    return sum((count_answers(p, every=every, part=part) for p in paths), Counter())


@torch.inference_mode()
def count_generations(target, prompts=PROMPTS, max_new_tokens: int = 160, batch: int = 8, progress=None) -> Counter:
    """Token counts of the target's own greedy answers to `prompts` (chat template, batched)."""
    tok = target.tokenizer
    eos = target.eos_token_ids
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    from . import encode_prompt

    counts: Counter = Counter()
    encoded = [encode_prompt(tok, p) for p in prompts]
    for i in range(0, len(encoded), batch):
        group = encoded[i:i + batch]
        width = max(len(g) for g in group)
        ids = torch.tensor([[pad] * (width - len(g)) + g for g in group])
        mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group])
        out = target.model.generate(ids.to(target.device), attention_mask=mask.to(target.device),
                                    max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, eos_token_id=eos or None, pad_token_id=pad)
        for row in out[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in eos), len(row) - 1)
            counts.update(row[:cut + 1])
        if progress is not None:
            progress.update(len(group))
    return counts


def save_counts(counts: dict, path: str | os.PathLike, meta: dict | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": COUNTS_SCHEMA, "meta": dict(meta or {}), "total": int(sum(counts.values())),
            "counts": {str(t): int(c) for t, c in sorted(counts.items(), key=lambda tc: (-tc[1], int(tc[0])))}}
    Path(path).write_text(json.dumps(data) + "\n")


def load_counts(path: str | os.PathLike) -> Counter:
    """A counts file written by save_counts, or an answers JSONL (see count_answers)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"token counts file {path} does not exist")
    if p.suffix == ".jsonl":
        return count_answers(p)
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict) or raw.get("schema") != COUNTS_SCHEMA:
        raise ValueError(f"{path}: not a token counts file (schema {COUNTS_SCHEMA!r})")
    return Counter({int(t): int(c) for t, c in raw["counts"].items()})


def counts_for(target, head_dir: str | os.PathLike | None = None, source: str | None = None,
               progress=None) -> tuple[Counter, str]:
    """Token counts for a target, from (in order) `source` (counts JSON or answers JSONL),
    `token_counts.json` beside the head, or the target's cached / fresh answers to PROMPTS.
    Returns (counts, where they came from)."""
    if source:
        return load_counts(source), str(source)
    if head_dir is not None and (Path(head_dir) / COUNTS_FILE).exists():
        return load_counts(Path(head_dir) / COUNTS_FILE), str(Path(head_dir) / COUNTS_FILE)
    from .models import cache_dir

    cfg = target.model.config
    key = f"{target.name}-{cfg.vocab_size}-{cfg.hidden_size}".replace("/", "_").replace(os.sep, "_")
    cached = cache_dir() / "vocab" / f"{key}.json"
    if cached.exists():
        try:
            return load_counts(cached), str(cached)
        except (ValueError, KeyError):
            pass
    counts = count_generations(target, progress=progress)
    save_counts(counts, cached, {"model": target.name, "source": "target answers to eagle2.vocab.PROMPTS",
                                 "prompts": len(PROMPTS)})
    return counts, str(cached)


def coverage(counts: dict, token_ids) -> float:
    """Share of the counted tokens that the reduced vocabulary can propose."""
    keep = {int(t) for t in token_ids}
    total = sum(counts.values())
    return sum(c for t, c in counts.items() if int(t) in keep) / total if total else 0.0


# ---- command line ----------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eagle2.vocab",
                                description="Count the target's output tokens for a reduced draft vocabulary.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-answers", metavar="JSONL", nargs="+",
                     help="the head's training answers (a run's answers.jsonl and tasks.jsonl)")
    src.add_argument("--generate", action="store_true", help="let the target answer eagle2.vocab.PROMPTS")
    p.add_argument("--model", default="default")
    p.add_argument("--out", required=True, help="where to write the counts JSON")
    p.add_argument("--sizes", default="2048,4096,8192,16384", help="print the coverage of these sizes")
    p.add_argument("--vocab-size", type=int, default=0, help="full vocabulary size for the fill-up (0 = guess)")
    p.add_argument("--holdout", type=int, default=5,
                   help="with --from-answers: also report coverage on every N-th answer, counted without it")
    try:
        args = p.parse_args(argv)
        held = fit = None
        if args.from_answers and args.holdout > 1:  # the two parts add up to all answers
            fit = count_answer_files(args.from_answers, every=args.holdout, part="fit")
            held = count_answer_files(args.from_answers, every=args.holdout, part="held")
            counts, meta = fit + held, {"source": ", ".join(args.from_answers)}
            if not counts:
                raise ValueError(f"{', '.join(args.from_answers)}: no 'answer_ids' lists found")
        elif args.from_answers:
            counts, meta = count_answer_files(args.from_answers), {"source": ", ".join(args.from_answers)}
        else:
            from .models import load_target

            target = load_target(args.model)
            counts = count_generations(target)
            meta = {"source": "target answers to eagle2.vocab.PROMPTS", "model": target.name}
        save_counts(counts, args.out, meta)
        vocab = max(counts) + 1 if args.from_answers else target.model.config.vocab_size
        if args.vocab_size:
            vocab = args.vocab_size
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            line = (f"top {n:>6}: covers {100 * coverage(counts, top_tokens(counts, n)):.2f}% of the "
                    f"{sum(counts.values())} counted tokens")
            if held:
                line += (f"; counted without every {args.holdout}th answer: "
                         f"{100 * coverage(held, top_tokens(fit, n)):.2f}% of those answers' "
                         f"{sum(held.values())} tokens ({100 * coverage(held, top_tokens(fit, n, vocab_size=vocab)):.2f}%"
                         f" filled up by id)")
            print(line)
    except (ValueError, OSError) as e:
        print(f"eagle2 vocab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
