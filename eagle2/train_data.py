"""Data stages of the draft-head pipeline: prompts → answers → features.

Everything is produced by the target itself (nothing is read from a benchmark or a data set):

* prompts: Magpie-style self-synthesis. The chat template is rendered up to the start of the
  user turn (system prompt + ``<|im_start|>user\\n``) and the target samples the user message
  (T=1, top-p 0.95) until its end-of-turn token. Results are filtered and deduplicated.
* answers: the target answers each prompt with the chat template applied, mostly greedily
  (the demo runs at T=0) plus a sampled share for T>0. Batched, left padded, HF ``generate``.
* features: one forward pass of the target over prompt+answer; the last hidden states (after
  the final norm) are stored in bf16 together with the token ids and where the answer starts.

Stages append their progress to ``*.partial.jsonl`` files, so an interrupted stage resumes.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

SENTINEL = "MAGPIE_SENTINEL_7f3a"

REQUEST_WORDS = {
    "what", "how", "why", "when", "where", "who", "which", "can", "could", "would", "should", "is",
    "are", "do", "does", "did", "will", "write", "explain", "describe", "give", "list", "tell",
    "create", "help", "make", "generate", "suggest", "provide", "summarize", "compare", "translate",
    "find", "calculate", "solve", "design", "draft", "compose", "recommend", "analyze", "define",
    "i", "i'm", "im", "please", "imagine", "plan", "show", "teach", "rewrite", "identify", "discuss",
    "pretend", "act", "outline", "brainstorm", "develop", "edit", "propose", "evaluate", "classify",
}

# First words of a user message, one drawn per prompt with --prompt-openers mixed. Left to
# itself the target opens two thirds of its requests with "Can" or "I'm" (advice questions);
# people also give orders (write, draft, pretend, solve, rewrite ...). Generic request openers,
# not taken from any benchmark.
PROMPT_OPENERS = (
    "Write", "Write a short story", "Write a poem", "Write a blog post", "Write a letter",
    "Compose", "Draft an email", "Draft a", "Imagine you are", "Pretend you are", "Act as",
    "You are", "As a", "In a world where", "Describe", "Explain", "Explain why", "Create", "Design",
    "Give me", "List", "Suggest", "Summarize", "Rewrite", "Edit", "Solve", "Calculate", "If",
    "Compare", "What is the difference between", "How would you", "Why do", "Plan", "Develop",
    "Generate", "Tell me a", "Provide", "Write a Python function", "Write a program", "Outline",
    "Brainstorm", "Analyze", "Discuss", "Evaluate", "Propose", "Identify", "Classify",
)


# ---- small helpers ----------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line from an interrupted run
                    break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def stop_ids(target) -> list[int]:
    """End-of-turn ids: the model's EOS ids plus ``<|im_end|>`` when the vocabulary has it."""
    ids = set(target.eos_token_ids)
    tok = target.tokenizer
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tok.convert_tokens_to_ids(name) if name in tok.get_vocab() else None
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tok, "unk_token_id", None):
            ids.add(tid)
    return sorted(ids)


def busy_others() -> int:
    """Runnable tasks on the machine besides the caller (median of a few /proc/loadavg samples)."""
    samples = []
    for _ in range(5):
        try:
            with open("/proc/loadavg") as f:
                samples.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(0.01)
    return sorted(samples)[len(samples) // 2]


def adapt_threads(args) -> int:
    """--threads 0: use all cores when the machine is otherwise idle, fewer when other processes
    compete (OpenMP barriers over oversubscribed cores slow torch down several-fold)."""
    import os

    if args.threads:
        n = args.threads
    else:
        cores = os.cpu_count() or 1
        n = max(1, cores - busy_others())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def pad_id(target) -> int:
    tok = target.tokenizer
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(target.eos_token_ids[0])


def encode(tok, text: str) -> list[int]:
    """Token ids of already-templated text (the template carries the special tokens)."""
    return list(tok(text, add_special_tokens=False)["input_ids"])


def magpie_prefix(tok) -> str:
    """The chat template rendered up to where the user's message would start."""
    text = tok.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                   add_generation_prompt=False)
    if SENTINEL not in text:
        raise ValueError("cannot find the user turn in the chat template")
    return text[: text.index(SENTINEL)]


def chat_prompt(tok, user: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)


def cut_at_stop(ids: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """Ids up to and including the first stop id; (ids, finished)."""
    for j, t in enumerate(ids):
        if t in stops:
            return ids[: j + 1], True
    return ids, False


class StopWhenMostFinished:
    """Stopping criterion: end the whole batch once a fraction of its rows has emitted a stop id.

    The rows still running are kept as truncated answers: they are still exactly the target's
    own continuation, so they are valid training data, and the batch stops wasting compute on
    rows that finished long ago.
    """

    def __init__(self, prompt_len: int, stops: list[int], frac: float):
        self.prompt_len = prompt_len
        self.stops = torch.tensor(stops)
        self.frac = frac

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_len:]
        done = torch.isin(new, self.stops.to(new.device)).any(dim=1)
        stop = bool(done.float().mean().item() >= self.frac)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _generate(target, input_ids, attention_mask, *, max_new_tokens, do_sample, temperature=1.0,
              top_p=1.0, stops, stop_frac=1.0):
    from transformers import StoppingCriteriaList

    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id(target),
                  use_cache=True)
    if do_sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop_frac < 1.0:
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [StopWhenMostFinished(input_ids.shape[1], stops, stop_frac)])
    dev = target.device
    with torch.no_grad():
        out = target.model.generate(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev),
                                    **kwargs)
    return out[:, input_ids.shape[1]:].cpu()


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s):] = 1
    return ids, mask


# ---- stage 1: prompts ---------------------------------------------------------------------
def _norm_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()[:80]


def prompt_verdict(text: str, finished: bool, mode: str = "strict", opener: str = "") -> str | None:
    """None if the prompt is kept, else the reason it is dropped. A prompt that starts with the
    opener it was given (--prompt-openers) is a request by construction."""
    t = text.strip()
    if not t:
        return "empty"
    if mode == "loose":
        return None
    if not finished:
        return "unfinished"
    words = t.split()
    if len(t) < 15 or len(words) < 4:
        return "short"
    if len(t) > 700:
        return "long"
    if "<|" in t or "|>" in t or "http" in t.lower() or "```" in t:
        return "junk"
    ascii_frac = sum(c.isascii() for c in t) / len(t)
    if ascii_frac < 0.97:
        return "non-ascii"
    if len(set(w.lower() for w in words)) / len(words) < 0.5:
        return "repetitive"
    first = re.sub(r"[^a-z']", "", words[0].lower())
    if "?" not in t and first not in REQUEST_WORDS and not (opener and t.startswith(opener)):
        return "not-a-request"
    return None


def prompt_batch_seed(args, batch: int) -> int:
    """The seed of prompt batch `batch`: a resumed run writes the same prompts it would have."""
    return args.seed * 100003 + batch


def batch_openers(args, batch: int) -> list[str]:
    """The words each user message of a prompt batch starts with ('' = the target's own choice)."""
    if args.prompt_openers == "none":
        return [""] * args.prompt_batch
    rng = random.Random(prompt_batch_seed(args, batch))
    return [rng.choice(PROMPT_OPENERS) for _ in range(args.prompt_batch)]


def stage_prompts(target, args, out: Path) -> dict:
    tok = target.tokenizer
    raw_path, final = out / "prompts.partial.jsonl", out / "prompts.jsonl"
    prefix = magpie_prefix(tok)
    prefix_ids = encode(tok, prefix)
    stops = stop_ids(target)
    stop_set = set(stops)
    raw = read_jsonl(raw_path)
    n_batches = 1 + max((r["batch"] for r in raw), default=-1)

    def kept_rows(rows):
        seen, kept, reasons = set(), [], {}
        for r in rows:
            why = prompt_verdict(r["text"], r["finished"], args.prompt_filter, r.get("opener", ""))
            key = _norm_key(r["text"])
            if why is None and key in seen:
                why = "duplicate"
            if why is None:
                seen.add(key)
                kept.append({"id": len(kept), "prompt": r["text"].strip()})
            else:
                reasons[why] = reasons.get(why, 0) + 1
        return kept, reasons

    kept, _ = kept_rows(raw)
    t0 = time.perf_counter()
    budget = args.prompt_minutes * 60 if args.prompt_minutes else float("inf")
    max_batches = max(1, -(-args.n_prompts * 6 // args.prompt_batch))
    bar = tqdm(total=args.n_prompts, initial=min(len(kept), args.n_prompts), desc="prompts", unit="prompt")
    with open(raw_path, "a") as f:
        while len(kept) < args.n_prompts and n_batches < max_batches:
            if time.perf_counter() - t0 > budget:
                tqdm.write(f"prompts: time budget of {args.prompt_minutes} min reached")
                break
            adapt_threads(args)
            torch.manual_seed(prompt_batch_seed(args, n_batches))
            openers = batch_openers(args, n_batches)
            opener_ids = [encode(tok, o) for o in openers]
            ids, mask = left_pad([prefix_ids + o for o in opener_ids], pad_id(target))
            new = _generate(target, ids, mask, max_new_tokens=args.prompt_max_tokens,
                            do_sample=True, temperature=args.prompt_temperature, top_p=args.prompt_top_p,
                            stops=stops, stop_frac=args.prompt_stop_frac)
            batch = []
            for opener, o_ids, row in zip(openers, opener_ids, new.tolist()):
                cut, finished = cut_at_stop(row, stop_set)
                text = tok.decode(o_ids + (cut[:-1] if finished else cut), skip_special_tokens=True)
                batch.append({"batch": n_batches, "text": text, "finished": finished, "opener": opener})
            for r in batch:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            raw.extend(batch)
            n_batches += 1
            kept, _ = kept_rows(raw)
            bar.update(min(len(kept), args.n_prompts) - bar.n)
    bar.close()
    kept, reasons = kept_rows(raw)
    kept = kept[: args.n_prompts]
    write_jsonl(final, kept)
    return {"raw": len(raw), "kept": len(kept), "dropped": reasons, "batches": n_batches,
            "prefix": prefix}


# ---- stage 2: answers ---------------------------------------------------------------------
def plan_answers(prompts: list[dict], args, done: set | frozenset = frozenset()) -> list[tuple[float, list[dict]]]:
    """Batches of (temperature, prompts) still to answer; temperature 0 = greedy. A prompt's mode
    is drawn in prompt order (seeded), so it stays the same when a run resumes with more prompts;
    prompts in `done` are left out before batching, so resumed batches stay full. Batch order is
    shuffled (seeded) so a time-budget cut keeps the greedy/sampled mix; within a mode, similar
    lengths share a batch."""
    rng = random.Random(args.seed)
    temps = [float(t) for t in args.sample_temperatures.split(",")]
    groups: dict[float, list[dict]] = {}
    for p in prompts:
        t = rng.choice(temps) if rng.random() < args.sampled_frac else 0.0
        if p["id"] not in done:
            groups.setdefault(t, []).append(p)
    batches = []
    for t, ps in groups.items():
        ps = sorted(ps, key=lambda p: len(p["prompt"]))
        for i in range(0, len(ps), args.answer_batch):
            batches.append((t, ps[i: i + args.answer_batch]))
    rng.shuffle(batches)
    return batches


def stage_answers(target, args, out: Path) -> dict:
    """The target answers the chat prompts."""
    return answer_prompts(target, args, read_jsonl(out / "prompts.jsonl"), out / "answers.partial.jsonl",
                          out / "answers.jsonl", args.answer_minutes)


def stage_tasks(target, args, out: Path) -> dict:
    """Task prompts (long texts to summarise, translate, extract from or answer about; code;
    arithmetic; see train_tasks.py) and the target's answers to them, in the answers format."""
    from .train_tasks import task_prompts

    rows = (read_rows([Path(p) for p in args.passages], target.tokenizer)[0] if args.passages  # others' chat answers
            else read_jsonl(out / "answers.jsonl"))
    chat = [r["answer"] for r in rows if r.get("temperature") == 0]
    prompts = task_prompts(args.n_tasks, answers=chat, seed=args.seed)
    meta = answer_prompts(target, args, prompts, out / "tasks.partial.jsonl", out / "tasks.jsonl", args.task_minutes)
    kinds: dict[str, int] = {}
    for p in prompts:
        kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    return {"planned": len(prompts), "kinds": kinds, **meta}


def answer_prompts(target, args, prompts: list[dict], part: Path, final: Path, minutes: float) -> dict:
    """Answer `prompts` ({"id", "prompt"}) in batches, appending to `part` (so a stopped run
    resumes), within `minutes`; the answered rows go to `final`."""
    tok = target.tokenizer
    done = {r["id"]: r for r in read_jsonl(part)}
    stops = stop_ids(target)
    stop_set = set(stops)
    batches = plan_answers(prompts, args, set(done))
    t0 = time.perf_counter()
    budget = minutes * 60 if minutes else float("inf")
    total = len(done) + sum(len(b) for _, b in batches)
    bar = tqdm(total=total, initial=len(done), desc=final.stem, unit="answer")
    new_tokens = 0
    with open(part, "a") as f:
        for bi, (temp, batch) in enumerate(batches):  # plan_answers left out the answered prompts
            if time.perf_counter() - t0 > budget:
                tqdm.write(f"{final.stem}: time budget of {minutes} min reached")
                break
            adapt_threads(args)
            torch.manual_seed(args.seed * 100003 + 7919 * bi)
            pids = [encode(tok, chat_prompt(tok, p["prompt"])) for p in batch]
            ids, mask = left_pad(pids, pad_id(target))
            new = _generate(target, ids, mask, max_new_tokens=args.answer_max_tokens, do_sample=temp > 0,
                            temperature=temp, top_p=1.0, stops=stops, stop_frac=args.answer_stop_frac)
            for p, prompt_ids, row in zip(batch, pids, new.tolist()):
                ans, finished = cut_at_stop(row, stop_set)
                rec = {"id": p["id"], "prompt": p["prompt"], "temperature": temp, "finished": finished,
                       "prompt_ids": prompt_ids, "answer_ids": ans,
                       "answer": tok.decode(ans, skip_special_tokens=True)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[p["id"]] = rec
                new_tokens += len(ans)
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.perf_counter() - t0, 1e-9):.0f}",
                            threads=torch.get_num_threads())
    bar.close()
    rows = sorted((r for r in done.values() if r["answer_ids"]), key=lambda r: r["id"])
    write_jsonl(final, rows)
    greedy = [r for r in rows if r["temperature"] == 0]
    return {"answers": len(rows), "greedy": len(greedy), "sampled": len(rows) - len(greedy),
            "finished": sum(r["finished"] for r in rows),
            "prompt_tokens": sum(len(r["prompt_ids"]) for r in rows),
            "answer_tokens": sum(len(r["answer_ids"]) for r in rows),
            "answer_tokens_greedy": sum(len(r["answer_ids"]) for r in greedy),
            "skipped_by_budget": total - len(done)}


# ---- stage 3: features --------------------------------------------------------------------
def length_batches(lengths: list[int], max_tokens: int, max_rows: int = 64) -> list[list[int]]:
    """Index groups of similar length whose padded size stays within max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and (m * (len(cur) + 1) > max_tokens or len(cur) >= max_rows):
            groups.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        groups.append(cur)
    return groups


def stage_features(target, args, out: Path) -> dict:
    """One target forward over every prompt + answer (chat answers and task answers): the last
    hidden states (EAGLE-1/2 heads regress them; the target's next-token distribution is
    lm_head of them) and, for EAGLE-3 heads, the inputs of layers 2, n/2 and n-3. Sequences
    found in --features-from files are copied, not recomputed."""
    from .head import eagle3_feature_layers

    rows = read_jsonl(out / "answers.jsonl") + [dict(r, id=f"task-{r['id']}") for r in read_jsonl(out / "tasks.jsonl")]
    held = prompt_keys(getattr(args, "exclude_prompts", None) or [])
    kept = [r for r in rows if tuple(r["prompt_ids"]) not in held]  # a held-out set's prompts: never trained on
    excluded, rows = len(rows) - len(kept), kept
    if excluded:
        tqdm.write(f"features: {excluded} sequences left out, their prompt is in --exclude-prompts")
    seqs, starts = [], []
    for r in rows:
        ids = (r["prompt_ids"] + r["answer_ids"])[: args.max_seq_len]
        seqs.append(ids)
        starts.append(min(len(r["prompt_ids"]), len(ids)))
    lengths = [len(s) for s in seqs]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    hidden = target.config.hidden_size
    layers = eagle3_feature_layers(target.config.num_hidden_layers) if args.arch == "eagle3" else None
    feats = torch.empty((offsets[-1], hidden), dtype=torch.bfloat16)
    aux = torch.empty((offsets[-1], 3 * hidden), dtype=torch.bfloat16) if layers else None
    pad = pad_id(target)
    reused = copy_known_features(getattr(args, "features_from", None) or [], seqs, offsets, feats, aux, layers,
                                 getattr(target, "name", None))
    todo = [i for i in range(len(seqs)) if i not in reused]
    groups = [[todo[j] for j in g] for g in length_batches([lengths[i] for i in todo], args.feature_batch_tokens)]
    bar = tqdm(total=sum(lengths[i] for i in todo), desc="features", unit="tok", unit_scale=True)
    base = target.model.model  # the decoder stack; its last_hidden_state is after the final norm
    with torch.no_grad():
        for gi, g in enumerate(groups):
            if gi % 8 == 0:
                adapt_threads(args)
            n = max(lengths[i] for i in g)
            ids = torch.full((len(g), n), pad, dtype=torch.long)
            mask = torch.zeros((len(g), n), dtype=torch.long)
            for j, i in enumerate(g):
                ids[j, : lengths[i]] = torch.tensor(seqs[i])
                mask[j, : lengths[i]] = 1
            o = base(input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                     output_hidden_states=layers is not None)
            h = o.last_hidden_state.to("cpu", torch.bfloat16)
            a = torch.cat([o.hidden_states[k] for k in layers], -1).to("cpu", torch.bfloat16) if layers else None
            for j, i in enumerate(g):
                feats[offsets[i]: offsets[i + 1]] = h[j, : lengths[i]]
                if a is not None:
                    aux[offsets[i]: offsets[i + 1]] = a[j, : lengths[i]]
            bar.update(sum(lengths[i] for i in g))
    bar.close()
    data = {"tokens": torch.tensor([t for s in seqs for t in s], dtype=torch.int32),
            "feats": feats, "offsets": torch.tensor(offsets, dtype=torch.int64),
            "answer_start": torch.tensor(starts, dtype=torch.int64),
            "temperature": torch.tensor([r["temperature"] for r in rows], dtype=torch.float32),
            "ids": [r["id"] for r in rows], "hidden_size": hidden, "aux": aux, "aux_layers": layers,
            "target": getattr(target, "name", None)}
    tmp = out / "features.pt.tmp"
    torch.save(data, tmp)
    tmp.replace(out / "features.pt")
    return {"sequences": len(seqs), "tokens": offsets[-1], "task_sequences": sum(str(r["id"]).startswith("task-") for r in rows),
            "eagle3_layers": layers, "reused_sequences": len(reused), "excluded_sequences": excluded,
            "answer_tokens": sum(n - s for n, s in zip(lengths, starts)),
            "bytes": (out / "features.pt").stat().st_size}


def sequence_keys(tokens: torch.Tensor, offsets) -> list[bytes]:
    """One key per sequence of a features.pt (tokens int32, offsets): its token ids as bytes, so
    the same sequence matches across runs wherever an import put it."""
    offs = [int(o) for o in offsets]
    return [tokens[a:b].numpy().tobytes() for a, b in zip(offs[:-1], offs[1:])]


def token_file_keys(src: Path, max_seq_len: int) -> list[bytes]:
    """sequence_keys of an export_tokens file's sequences, each cut at max_seq_len as
    stage_features cuts them, so they match the keys of the features.pt files runs made of it."""
    import numpy as np

    try:
        with np.load(src, allow_pickle=False) as f:
            ids, offsets = f["ids"].astype(np.int32), f["offsets"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{src}: not a token file ({e})") from None
    cut = [ids[a: min(b, a + max_seq_len)] for a, b in zip(offsets[:-1], offsets[1:])]
    return sequence_keys(torch.from_numpy(np.concatenate(cut)), np.cumsum([0] + [len(c) for c in cut]))


def load_features_file(item, option: str = "") -> tuple[Path, dict]:
    """An earlier run's features.pt (a run folder or the file itself) and its path, memory-mapped:
    the callers read its token ids and copy rows, never the whole file. `option` names the flag
    in errors."""
    path = Path(item) / "features.pt" if Path(item).is_dir() else Path(item)
    if not path.exists():
        raise ValueError(f"{option + ': ' if option else ''}{path} does not exist")
    return path, torch.load(path, weights_only=False, mmap=True)


def copy_known_features(sources: list, seqs: list[list[int]], offsets: list[int], feats: torch.Tensor,
                        aux: torch.Tensor | None, layers: list[int] | None, target_name: str | None = None) -> set[int]:
    """Fill the rows of sequences that an earlier run's features.pt already holds (same token
    ids), so a run that adds data to an old one recomputes only the new sequences. Returns the
    indices filled. Files that name their target must name this one (older files name none: the
    caller vouches for the same target and dtype)."""
    want: dict[bytes, list[int]] = {}
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    for i, key in enumerate(sequence_keys(flat, offsets)):
        want.setdefault(key, []).append(i)
    filled: set[int] = set()
    for src in sources:
        path, old = load_features_file(src, "--features-from")
        if target_name and old.get("target") and old["target"] != target_name:
            raise ValueError(f"--features-from: {path} holds features of {old['target']}, not {target_name}")
        if old["feats"].shape[1] != feats.shape[1]:
            raise ValueError(f"--features-from: {path} has hidden size {old['feats'].shape[1]}, "
                             f"this target {feats.shape[1]}")
        if aux is not None and (old.get("aux") is None or old.get("aux_layers") != layers):
            continue  # EAGLE-3 runs need the same fused layers; this file has none or others
        offs = old["offsets"].tolist()
        for j, key in enumerate(sequence_keys(old["tokens"], offs)):
            a, b = offs[j], offs[j + 1]
            for i in want.get(key, ()):
                if i not in filled:
                    feats[offsets[i]: offsets[i + 1]] = old["feats"][a:b]
                    if aux is not None:
                        aux[offsets[i]: offsets[i + 1]] = old["aux"][a:b]
                    filled.add(i)
    if sources:
        tqdm.write(f"features: {len(filled)} of {len(seqs)} sequences copied from {', '.join(map(str, sources))}")
    return filled


# ---- the data as token ids: what a later run resumes from ------------------------------------
TOKENS_SCHEMA = "eagle2-train-tokens/1"


def _write_token_rows(rows: list[tuple[dict, int]], dest: Path) -> dict:
    """Write (row, is_task) pairs as an export_tokens file."""
    import numpy as np

    seqs = [r["prompt_ids"] + r["answer_ids"] for r, _ in rows]
    ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    dtype = np.uint16 if ids.max() < 2 ** 16 else np.int32
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        dest, schema=np.array(TOKENS_SCHEMA), ids=ids.astype(dtype),
        offsets=np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64),
        answer_start=np.array([len(r["prompt_ids"]) for r, _ in rows], dtype=np.int64),
        temperature=np.array([r["temperature"] for r, _ in rows], dtype=np.float32),
        finished=np.array([bool(r.get("finished")) for r, _ in rows]),
        task=np.array([src for _, src in rows], dtype=np.int8))
    return {"rows": len(rows), "tokens": int(ids.size), "bytes": dest.stat().st_size, "path": str(dest)}


def export_tokens(out: Path, dest: Path) -> dict:
    """Write the answered chat and task prompts of a run as token ids (compressed npz, a few MB):
    enough to recompute features and train again without writing the data anew."""
    rows = [(r, 0) for r in read_jsonl(out / "answers.jsonl")] + [(r, 1) for r in read_jsonl(out / "tasks.jsonl")]
    if not rows:
        raise ValueError(f"{out}: no answers.jsonl / tasks.jsonl rows to export")
    return _write_token_rows(rows, dest)


def select_tokens(src: Path, dest: Path, keep) -> dict:
    """Write the sequences `keep` (indices, in that order) of an export_tokens file to a new one:
    a share of old data to train beside new data without recomputing every old feature.
    Every per-sequence array goes along, whatever fields the file has."""
    import numpy as np

    try:
        d = dict(np.load(src, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ValueError(f"{src}: not a token file ({e})") from None
    offsets = d.pop("offsets")
    ids = d.pop("ids")
    n = len(offsets) - 1
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size == 0 or keep.min() < 0 or keep.max() >= n:
        raise ValueError(f"{src}: indices must lie in [0, {n}) and be at least one")
    lengths = offsets[1:] - offsets[:-1]
    out = {k: (v[keep] if v.ndim and len(v) == n else v) for k, v in d.items()}
    out["ids"] = np.concatenate([ids[offsets[i]:offsets[i + 1]] for i in keep])
    out["offsets"] = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest, **out)
    return {"rows": int(keep.size), "of": n, "tokens": int(out["ids"].size), "path": str(dest)}


def featured_sequences(src: Path, feature_files: list, max_seq_len: int = 1024) -> list[int]:
    """Indices of the sequences of an export_tokens file whose features the given features.pt
    files (or run folders) already hold, matched by token ids cut at max_seq_len as
    stage_features cuts them. Why: a round that trains on exactly those (plus new data) copies
    every old feature and spends its minutes training instead of recomputing."""
    known = known_sequence_keys(feature_files, max_seq_len)
    return [i for i, key in enumerate(token_file_keys(src, max_seq_len)) if key in known]


def known_sequence_keys(items: list, max_seq_len: int, option: str = "") -> set[bytes]:
    """The sequence keys that earlier runs' features.pt files (or run folders) hold, and those of
    export_tokens files (.npz) cut at max_seq_len, as stage_features cuts them. `option` names
    the flag in errors."""
    known: set[bytes] = set()
    for item in items:
        if Path(item).suffix == ".npz":
            known.update(token_file_keys(item, max_seq_len))
        else:
            _, old = load_features_file(item, option)
            known.update(sequence_keys(old["tokens"], old["offsets"]))
    return known


def _token_rows(src: Path) -> tuple[list[dict], list[dict]]:
    """Chat and task rows of one export_tokens file as token ids (prompt_ids, answer_ids,
    temperature, finished), without decoding them."""
    import numpy as np

    try:
        d = np.load(src, allow_pickle=False)
        if str(d["schema"]) != TOKENS_SCHEMA:
            raise ValueError(f"schema {d['schema']!r}")
        ids, offsets, starts = d["ids"].astype(np.int64), d["offsets"], d["answer_start"]
        temps, finished, task = d["temperature"], d["finished"], d["task"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{src}: not a training-token file ({e})") from None
    chat, tasks = [], []
    for i in range(len(starts)):
        seq = ids[offsets[i]:offsets[i + 1]].tolist()
        (tasks if task[i] else chat).append({
            "prompt_ids": seq[: starts[i]], "answer_ids": seq[starts[i]:],
            "temperature": float(temps[i]), "finished": bool(finished[i])})
    return chat, tasks


def _rows_from_tokens(src: Path, tokenizer) -> tuple[list[dict], list[dict]]:
    """Chat and task rows of one export_tokens file, with their texts decoded."""
    chat, tasks = _token_rows(src)
    for r in chat + tasks:
        r["prompt"] = tokenizer.decode(r["prompt_ids"])
        r["answer"] = tokenizer.decode(r["answer_ids"], skip_special_tokens=True)
    return chat, tasks


def _folder_rows(src: Path) -> tuple[list[dict], list[dict]]:
    """Chat and task rows of a run folder (its answers.jsonl / tasks.jsonl)."""
    if not ((src / "answers.jsonl").exists() or (src / "tasks.jsonl").exists()):
        raise ValueError(f"{src}: a run folder needs answers.jsonl or tasks.jsonl")
    c = read_jsonl(src / "answers.jsonl") if (src / "answers.jsonl").exists() else []
    t = read_jsonl(src / "tasks.jsonl") if (src / "tasks.jsonl").exists() else []
    return c, t


def prompt_keys(files: list[Path]) -> set[tuple[int, ...]]:
    """The prompts (token ids) of export_tokens files: what a held-out set keeps out of training."""
    keys = set()
    for src in map(Path, files):
        chat, tasks = _token_rows(src)
        keys.update(tuple(r["prompt_ids"]) for r in chat + tasks)
    return keys


def merge_tokens(sources: list[Path], dest: Path, exclude: list[Path] = ()) -> dict:
    """Concatenate the sequences of export_tokens files and/or run folders into one token file
    (chat rows first, then task rows, each in source order: what import_tokens then export_tokens
    give), leaving out any sequence whose prompt (its token ids) one of the `exclude` files holds:
    a held-out set must share no prompt with the data trained on, in either direction. Works on ids
    alone: no tokenizer, no model."""
    held = prompt_keys(exclude)
    chat, tasks, dropped = [], [], 0
    for src in map(Path, sources):
        c, t = _folder_rows(src) if src.is_dir() else _token_rows(src)
        for rows, into in ((c, chat), (t, tasks)):
            keep = [r for r in rows if tuple(r["prompt_ids"]) not in held]
            dropped += len(rows) - len(keep)
            into += keep
    if not chat + tasks:
        raise ValueError("no sequences to merge")
    info = _write_token_rows([(r, 0) for r in chat] + [(r, 1) for r in tasks], dest)
    distinct = len({tuple(r["prompt_ids"] + r["answer_ids"]) for r in chat + tasks})
    return {**info, "chat": len(chat), "tasks": len(tasks), "excluded": dropped,
            "duplicates": len(chat) + len(tasks) - distinct,
            "answer_tokens": sum(len(r["answer_ids"]) for r in chat + tasks)}


def answer_counts(path: Path) -> Counter:
    """Token counts of every answer in an export_tokens file (what token_counts.json holds)."""
    chat, tasks = _token_rows(Path(path))
    counts: Counter = Counter()
    for r in chat + tasks:
        counts.update(r["answer_ids"])
    return counts


def read_rows(sources: list[Path], tokenizer) -> tuple[list[dict], list[dict]]:
    """The chat and task rows of export_tokens files and/or run folders (their answers.jsonl /
    tasks.jsonl), concatenated in order."""
    chat, tasks = [], []
    for src in map(Path, sources):
        c, t = _folder_rows(src) if src.is_dir() else _rows_from_tokens(src, tokenizer)
        chat += c
        tasks += t
    return chat, tasks


def import_tokens(sources: list[Path], out: Path, tokenizer) -> dict:
    """Recreate answers.jsonl and tasks.jsonl of a run from export_tokens files and/or earlier
    run folders, concatenated: data accumulates over runs."""
    chat, tasks = read_rows(sources, tokenizer)
    for rows in (chat, tasks):
        for i, r in enumerate(rows):
            r["id"] = i
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "answers.jsonl", chat)
    write_jsonl(out / "tasks.jsonl", tasks)
    tokens = sum(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in chat + tasks)
    return {"chat": len(chat), "tasks": len(tasks), "tokens": tokens, "source": ", ".join(map(str, sources))}
