"""Engine benchmark: where a decode cycle's time goes, forwards against everything else.

    python -m eagle2.engine_bench --out DIR [--device cpu|cuda|auto] [--cycles N] [--quick]

The target is a tiny random Llama built in code (nothing is downloaded) and the drafter an
EAGLE-1/2 head made for it, so the forwards cost little and the engine's own host work (tree
building, masks, acceptance, cache surgery, bookkeeping) shows. fp32, greedy, prompts of
random token ids (fixed seeds). Policies:

    eagle2-paper   EAGLE-2 at the paper's tree: top_k 10, depth 6, total_tokens 60
    eagle2-auto    EAGLE-2 with the tree size chosen per cycle (make_policy(total_tokens="auto");
                   its latency calibration is measured again and kept in DIR/eagle2-cache)
    chain          a chain of top-1 drafts (make_policy("chain"))
    vanilla        no drafting

Forward time is measured with hooks on the modules (the target's decoder stack and lm_head,
the head, and the embedding when the drafter calls it), with torch.cuda.synchronize() before
each clock reading on CUDA. Per decode cycle (the prefill is left out):

    cycle           wall time of the decode loop / cycles (hooked run)
    target fwd      the target's tree forward (decoder stack + lm_head)
    head fwd        the drafter's forwards (embedding + head + lm_head), in commit and in steps
    non-forward     cycle - target fwd - head fwd: the engine's host time, split by phase:
        draft host   policy.draft minus the head's step forwards (top-k, pool, masks, rerank, tree)
        commit host  drafter.commit minus its head forward (slots, features, log-softmax)
        verify host  the verify phase minus the target forward (tree mask, position ids)
        update       acceptance + emitted-token bookkeeping + KV-cache compaction
        loop         the rest of the loop (CycleStats, observers)
The decode's own CycleStats split (draft_s, which includes the commit, verify_s, update_s) is
reported beside it, and the cycle time of an unhooked run of the same work (what the hooks and
synchronisation cost is the difference). `cpu_ms` repeats cycle / forwards / non-forward in
this process's CPU time: on a core that other processes share, the wall figures grow with the
sharing and these do not (on a CPU with one torch thread; on a GPU the synchronising waits spin,
so there they are no better than the wall figures). `cpu_share_while_timing` (CPU / wall time
of the timed runs) says how much of a core the benchmark had.

Realism of the drafter: the target is made strongly predictable and the head agrees with it
where the context matters little. The target's layers write little into the residual stream
(their output projections are scaled by `mix`), so its next token depends mostly on the current
token; its lm_head is sharpened (x `sharpen`) so its distributions are peaked like a trained
LM's. The head passes the token embedding through its fc and its layer is scaled the same way,
so its proposals are the target's "bigram" part. τ (tokens per cycle) at the paper's tree comes
out between 3 and 4.5 with the default vocabulary (a random head would give about 1; the shipped
SmolLM2 head's auto tree gets 2.3 on MT-bench): partial acceptance, varied paths and commits of
several tokens, as in real use. Nothing depends on it being exact.

The vocabulary is small (1024; --vocab changes it): log-softmax, top-k and argmax over it run
outside any module, so they count as non-forward time, and at SmolLM2's 49152 they dominate it
on a CPU.

Repeats: every policy runs `--repeats` times over all prompts (order rotated per repeat), each
time hooked and unhooked; every figure is the median over repeats of the per-repeat total /
cycles. The number of new tokens per policy is set from a warm-up so that each prompt takes
about `--cycles` cycles. Every drafting policy's tokens are checked against vanilla's.
Writes DIR/summary.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

SCHEMA = "eagle2-engine-bench/1"
# The tiny target (a Llama) and how predictable it is made (module doc).
TINY = {"vocab": 1024, "hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2,
        "max_positions": 2048, "init": 0.3, "mix": 0.0075, "sharpen": 4.0, "seed": 0}
PROMPT_LENGTHS = (128, 192, 256)
PAPER_TREE = {"top_k": 10, "depth": 6, "total_tokens": 60}
POLICY_NAMES = ("eagle2-paper", "eagle2-auto", "chain", "vanilla")
PHASES = ("draft_host", "commit_host", "verify_host", "update", "loop")


# ---- the tiny target and head ---------------------------------------------------------------
def tiny_config(spec: dict | None = None):
    from transformers import LlamaConfig

    s = {**TINY, **(spec or {})}
    return LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=s["max_positions"], initializer_range=s["init"], tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=3, pad_token_id=1)


def build_tiny(spec: dict | None = None, device="cpu", dtype=torch.float32):
    """(target LlamaForCausalLM, EagleHead) made in code from `spec` (TINY's keys), seeded; the
    global RNG is left as it was."""
    from transformers import LlamaForCausalLM

    from .head import EagleHead

    s = {**TINY, **(spec or {})}
    cfg = tiny_config(s)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        target = LlamaForCausalLM(cfg).eval().requires_grad_(False)
        head = EagleHead.for_target(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for layer in list(target.model.layers) + list(head.layers):
            layer.self_attn.o_proj.weight.mul_(s["mix"])
            layer.mlp.down_proj.weight.mul_(s["mix"])
        target.lm_head.weight.mul_(s["sharpen"])
        h = cfg.hidden_size
        head.fc.weight.zero_()
        head.fc.weight[:, :h] = torch.eye(h)  # fc(concat(embedding, feature)) = embedding
        if head.fc.bias is not None:
            head.fc.bias.zero_()
    return target.to(device=device, dtype=dtype), head.to(device=device, dtype=dtype)


TOKENIZER_WORDS = (
    "the a and or of to in on is are was be it we you they this that what how why when can will "
    "not no yes hello world model token tree draft target cat dog sea sun one two three four five "
    ". , ? ! : write explain list give story poem short about number name"
).split()
SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}"
)


def tiny_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly `vocab_size` ids (specials, chat words, some English,
    then w0, w1, ...) with a ChatML-like template: enough for the CLI, the bench and training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL_TOKENS + ["system", "user", "assistant"] + TOKENIZER_WORDS
    words += [f"w{i}" for i in range(max(0, vocab_size - len(words)))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words[:vocab_size])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(folder: str | os.PathLike, spec: dict | None = None) -> dict:
    """Save the tiny target (+ tokenizer) to folder/target and its head to folder/head: a
    `--model` and a `--head` for the CLI, the bench and training, made without a download."""
    folder = Path(folder)
    target, head = build_tiny(spec)
    tok = tiny_tokenizer(target.config.vocab_size)
    target.save_pretrained(folder / "target")
    tok.save_pretrained(folder / "target")
    head.save_pretrained(folder / "head")
    return {"target": str(folder / "target"), "head": str(folder / "head")}


def random_prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]


# ---- measuring ------------------------------------------------------------------------------
class ForwardClock:
    """Times module forwards through hooks. Only the outermost watched forward is timed (the
    embedding inside the target's decoder stack is part of it); a module watched with kind
    None (a shared lm_head) counts for whoever ran the last forward. Head time is kept apart
    by phase: "commit" while drafter.commit runs, else "step"."""

    def __init__(self, sync: bool):
        self.sync = sync
        self.enabled = False
        self.phase = "step"
        self._depth, self._t0, self._c0, self._last = 0, 0.0, 0.0, "target"
        self._handles: list = []
        self.reset()

    def watch(self, module: torch.nn.Module, kind: str | None) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda *_: self._enter()))
        self._handles.append(module.register_forward_hook(lambda *_: self._exit(kind)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)  # wall time
        self.cpu: dict[str, float] = defaultdict(float)  # this process's CPU time (immune to sharing the core)
        self.calls: dict[str, int] = defaultdict(int)
        self.cpu_start = time.process_time()

    def _enter(self) -> None:
        if self._depth == 0 and self.enabled:
            if self.sync:
                torch.cuda.synchronize()
            self._t0, self._c0 = time.perf_counter(), time.process_time()
        self._depth += 1

    def _exit(self, kind: str | None) -> None:
        self._depth -= 1
        if self._depth or not self.enabled:
            return
        if self.sync:
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - self._t0, time.process_time() - self._c0
        kind = kind or self._last
        self._last = kind
        key = "target" if kind == "target" else f"head_{self.phase}"
        self.seconds[key] += dt
        self.cpu[key] += dc
        self.calls[key] += 1


def _loop_start(clock: ForwardClock):
    """An observer that zeroes the clock when the decode loop starts (after the prefill)."""
    from .trace import Observer

    class LoopStart(Observer):
        wants_records = False  # no records: the decode builds none for it

        def on_start(self, *_):
            clock.reset()

    return LoopStart()


class Instrumented:
    """Hooks on a target + EagleDrafter, and a timing wrapper around drafter.commit."""

    def __init__(self, model, drafter, sync: bool):
        self.clock = ForwardClock(sync)
        self.model, self.drafter, self.sync = model, drafter, sync
        self.commit_s = 0.0

    def __enter__(self):
        c = self.clock
        c.watch(self.model.model, "target")
        c.watch(self.model.lm_head, None)
        if self.drafter is not None:
            c.watch(self.drafter.head, "head")
            c.watch(self.drafter.embed, "head")  # when the drafter embeds (inside the target: nested)
            if self.drafter.lm_head is not self.model.lm_head:
                c.watch(self.drafter.lm_head, "head")
            commit = self.drafter.commit

            def timed_commit(*args, **kwargs):
                c.phase = "commit"
                t0 = time.perf_counter()
                try:
                    return commit(*args, **kwargs)
                finally:
                    if self.sync:
                        torch.cuda.synchronize()
                    self.commit_s += time.perf_counter() - t0
                    c.phase = "step"

            self.drafter.commit = timed_commit  # an instance attribute shadows the method
        c.enabled = True
        return self

    def __exit__(self, *exc):
        self.clock.enabled = False
        self.clock.remove()
        if self.drafter is not None:
            self.drafter.__dict__.pop("commit", None)

    def observer(self):
        return _loop_start(self.clock)


def run_prompt(model, policy, drafter, ids: list[int], max_new_tokens: int, hooked: bool, sync: bool) -> dict:
    """One greedy decode; its totals (seconds) and tokens."""
    from .decode import generate

    uses = drafter if policy.needs_drafter else None
    if hooked:
        with Instrumented(model, uses, sync) as inst:
            res = generate(model, ids, policy, uses, max_new_tokens=max_new_tokens, observers=[inst.observer()])
            loop_cpu = time.process_time() - inst.clock.cpu_start
        fwd, calls, commit_s = dict(inst.clock.seconds), dict(inst.clock.calls), inst.commit_s
        fwd_cpu = dict(inst.clock.cpu)
    else:
        res = generate(model, ids, policy, uses, max_new_tokens=max_new_tokens)
        fwd, calls, commit_s, fwd_cpu, loop_cpu = {}, {}, 0.0, {}, 0.0
    cyc = res.cycles
    return {
        "tokens": list(res.tokens), "cycles": len(cyc), "new_tokens": sum(c.new_tokens for c in cyc),
        "tree_nodes": sum(c.tree_size for c in cyc), "loop_s": res.seconds - res.prefill_s,
        "draft_s": sum(c.draft_s for c in cyc), "verify_s": sum(c.verify_s for c in cyc),
        "update_s": sum(c.update_s for c in cyc), "commit_s": commit_s,
        "target_s": fwd.get("target", 0.0), "head_commit_s": fwd.get("head_commit", 0.0),
        "head_step_s": fwd.get("head_step", 0.0), "forward_calls": calls,
        "loop_cpu_s": loop_cpu, "target_cpu_s": fwd_cpu.get("target", 0.0),
        "head_cpu_s": fwd_cpu.get("head_commit", 0.0) + fwd_cpu.get("head_step", 0.0),
    }


def per_cycle(runs: list[dict]) -> dict:
    """Totals over a repeat's prompts → per-cycle figures in ms (hooked runs)."""
    tot = defaultdict(float)
    for r in runs:
        for k in ("cycles", "new_tokens", "tree_nodes", "loop_s", "draft_s", "verify_s", "update_s", "commit_s",
                  "target_s", "head_commit_s", "head_step_s", "loop_cpu_s", "target_cpu_s", "head_cpu_s"):
            tot[k] += r[k]
    n = max(1, tot["cycles"])
    ms = {k: 1e3 * tot[k] / n for k in ("loop_s", "draft_s", "verify_s", "update_s", "commit_s", "target_s",
                                          "head_commit_s", "head_step_s")}
    head = ms["head_commit_s"] + ms["head_step_s"]
    split = {
        "draft_host": ms["draft_s"] - ms["commit_s"] - ms["head_step_s"],
        "commit_host": ms["commit_s"] - ms["head_commit_s"],
        "verify_host": ms["verify_s"] - ms["target_s"],
        "update": ms["update_s"],
        "loop": ms["loop_s"] - ms["draft_s"] - ms["verify_s"] - ms["update_s"],
    }
    return {
        "cycles": int(tot["cycles"]), "tokens": int(tot["new_tokens"]), "tau": tot["new_tokens"] / n,
        "mean_tree_size": tot["tree_nodes"] / n, "ms_per_cycle": ms["loop_s"], "ms_target_forward": ms["target_s"],
        "ms_head_forward": head, "ms_head_forward_commit": ms["head_commit_s"], "ms_head_forward_step": ms["head_step_s"],
        "ms_forward": ms["target_s"] + head, "ms_non_forward": ms["loop_s"] - ms["target_s"] - head,
        "non_forward_split_ms": split,
        "decode_split_ms": {"draft": ms["draft_s"], "verify": ms["verify_s"], "update": ms["update_s"],
                            "commit_within_draft": ms["commit_s"]},
        # the same in this process's CPU time: on a core shared with other processes the wall
        # figures grow, these do not (with one torch thread on a CPU; on a GPU, waits spin)
        "cpu_ms": {"per_cycle": 1e3 * tot["loop_cpu_s"] / n, "target_forward": 1e3 * tot["target_cpu_s"] / n,
                   "head_forward": 1e3 * tot["head_cpu_s"] / n,
                   "non_forward": 1e3 * (tot["loop_cpu_s"] - tot["target_cpu_s"] - tot["head_cpu_s"]) / n},
    }


def _median_dict(rows: list[dict]) -> dict:
    out = {}
    for k, v in rows[0].items():
        if isinstance(v, dict):
            out[k] = _median_dict([r[k] for r in rows])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in rows)
        else:
            out[k] = v
    return out


def _round(x, nd: int = 4):
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    return x


@contextlib.contextmanager
def _cache_dir(folder: Path):
    """Keep the auto policy's latency calibration with the results (EAGLE2_CACHE, restored)."""
    old = os.environ.get("EAGLE2_CACHE")
    os.environ["EAGLE2_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EAGLE2_CACHE", None)
        else:
            os.environ["EAGLE2_CACHE"] = old


def make_policies(model, names=POLICY_NAMES) -> dict:
    from . import make_policy  # the package's (its home module has moved before)
    from .policies import Eagle2

    made = {}
    for name in names:
        if name == "eagle2-paper":
            made[name] = Eagle2(**PAPER_TREE)
        elif name.startswith("eagle2@total="):  # the paper's top_k and depth, another size (--sweep)
            made[name] = Eagle2(**{**PAPER_TREE, "total_tokens": int(name.split("=")[1])})
        elif name == "eagle2-auto":
            made[name] = make_policy("eagle2", total_tokens="auto", target=model)
        else:
            made[name] = make_policy(name)
    return made


def profile_policy(model, policy, drafter, ids_list, budget: int, sync: bool, top: int = 40) -> dict:
    """cProfile over unhooked decodes: the hot spots, per decode cycle (ms), by own time and by
    cumulative time, for everything and for eagle2's own functions."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    cycles = 0
    prof.enable()
    for ids in ids_list:
        cycles += run_prompt(model, policy, drafter, ids, budget, False, sync)["cycles"]
    prof.disable()
    stats = pstats.Stats(prof)
    root = str(Path(__file__).resolve().parent.parent) + os.sep
    rows = []
    for (file, line, func), (_, calls, own, cum, _) in stats.stats.items():
        site = "site-packages" + os.sep
        where = file.rsplit(site, 1)[-1] if site in file else file[len(root):] if file.startswith(root) else file
        rows.append({"function": f"{where}:{line}({func})", "calls_per_cycle": calls / max(1, cycles),
                     "own_ms_per_cycle": 1e3 * own / max(1, cycles), "cum_ms_per_cycle": 1e3 * cum / max(1, cycles),
                     "eagle2": where.startswith("eagle2" + os.sep)})

    def best(key, only_eagle2=False):
        pool = [r for r in rows if r["eagle2"] or not only_eagle2]
        return [_round({k: v for k, v in r.items() if k != "eagle2"}) for r in sorted(pool, key=lambda r: -r[key])[:top]]

    return {"cycles": cycles, "by_own_time": best("own_ms_per_cycle"), "by_cum_time": best("cum_ms_per_cycle"),
            "eagle2_by_own_time": best("own_ms_per_cycle", True), "eagle2_by_cum_time": best("cum_ms_per_cycle", True)}


def format_profile(prof: dict, n: int = 15) -> str:
    out = [f"cProfile of the paper's tree over {prof['cycles']} cycles (ms per cycle; profiling inflates them)"]
    for key, label in (("eagle2_by_own_time", "eagle2 code by own time"), ("eagle2_by_cum_time", "eagle2 code by cumulative time"),
                       ("by_own_time", "everything by own time")):
        out.append(f"\n{label}:\n  {'own':>7} {'cum':>7} {'calls':>7}  function")
        for r in prof[key][:n]:
            out.append(f"  {r['own_ms_per_cycle']:7.3f} {r['cum_ms_per_cycle']:7.3f} {r['calls_per_cycle']:7.1f}  {r['function']}")
    return "\n".join(out)


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="engine bench", unit="run", file=sys.stderr, leave=False)


# ---- the benchmark --------------------------------------------------------------------------
def run(out: str | os.PathLike, device: str = "auto", cycles: int = 32, repeats: int = 5, prompts: int = 3,
        warmup_tokens: int = 32, quick: bool = False, quiet: bool = False, command: str | None = None,
        tiny: dict | None = None, profile: bool = False, sweep: tuple[int, ...] = ()) -> dict:
    from .bench import machine_info
    from .draft import EagleDrafter
    from .models import resolve_device

    if quick:
        cycles, repeats, prompts, warmup_tokens = min(cycles, 6), 1, 1, 8
    if min(cycles, repeats, prompts, warmup_tokens) < 1:
        raise ValueError("cycles, repeats, prompts and warm-up tokens must be >= 1")
    if prompts > len(PROMPT_LENGTHS):
        raise ValueError(f"at most {len(PROMPT_LENGTHS)} prompts")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU")
    sync = dev.type == "cuda"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    spec = {**TINY, **(tiny or {})}
    model, head = build_tiny(spec, dev)
    drafter = EagleDrafter(head, model, name="tiny-head")
    ids_list = random_prompts(spec["vocab"], PROMPT_LENGTHS[:prompts])
    with _cache_dir(out / "eagle2-cache"):
        policies = make_policies(model, POLICY_NAMES + tuple(f"eagle2@total={n}" for n in sweep))
    latency = getattr(policies["eagle2-auto"], "latency", None)
    limit = spec["max_positions"]

    bar = _progress(len(policies) * (len(ids_list) + 2 * repeats), quiet)

    # warm-up: first calls of every shape allocate; the auto policy learns; tokens per cycle
    budgets: dict[str, int] = {}
    for name, pol in policies.items():
        runs = [run_prompt(model, pol, drafter, ids, warmup_tokens, True, sync) for ids in ids_list]
        tau = sum(r["new_tokens"] for r in runs) / max(1, sum(r["cycles"] for r in runs))
        budgets[name] = max(2, min(1 + round(cycles * tau), limit - max(len(i) for i in ids_list)))
        if bar is not None:
            bar.update(len(ids_list))
    # the lossless reference: vanilla greedy, as long as the longest budget
    ref_len = max(budgets.values())
    reference = [run_prompt(model, policies["vanilla"], None, ids, ref_len, False, sync)["tokens"] for ids in ids_list]

    per_rep: dict[str, list[dict]] = {n: [] for n in policies}
    unhooked: dict[str, list[float]] = {n: [] for n in policies}
    lossless: dict[str, bool] = {n: True for n in policies}
    names = list(policies)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for rep in range(repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]  # slow spells hit every policy
        for name in order:
            pol = policies[name]
            for hooked in (True, False):
                runs = [run_prompt(model, pol, drafter, ids, budgets[name], hooked, sync) for ids in ids_list]
                for r, ref in zip(runs, reference):
                    lossless[name] &= r["tokens"] == ref[: len(r["tokens"])]
                if hooked:
                    per_rep[name].append(per_cycle(runs))
                else:
                    n = sum(r["cycles"] for r in runs)
                    unhooked[name].append(1e3 * sum(r["loop_s"] for r in runs) / max(1, n))
                if bar is not None:
                    bar.update(1)
    # CPU time / wall time of the timed runs: well under 1 (one thread) means another process
    # shared the core and every figure is inflated
    cpu_share = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
    if bar is not None:
        bar.close()

    prof = None
    if profile:  # after the timed runs, so it cannot slow them
        prof = profile_policy(model, policies["eagle2-paper"], drafter, ids_list, budgets["eagle2-paper"], sync)
        (out / "profile.txt").write_text(format_profile(prof, 40) + "\n")

    results = {}
    for name, pol in policies.items():
        med = _median_dict(per_rep[name])
        med["ms_per_cycle_unhooked"] = statistics.median(unhooked[name])
        med["ms_hook_overhead"] = med["ms_per_cycle"] - med["ms_per_cycle_unhooked"]
        results[name] = {"policy": pol.describe(), "max_new_tokens": budgets[name], **med,
                         "identical_to_vanilla": lossless[name],
                         "repeats": [_round(r) for r in per_rep[name]],
                         "repeats_unhooked_ms_per_cycle": [round(x, 4) for x in unhooked[name]]}
        if hasattr(pol, "stats"):
            results[name]["autotree"] = _round(pol.stats())
    paper, auto = results["eagle2-paper"], results["eagle2-auto"]
    machine = machine_info()
    machine.update({"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if sync else machine["cpu"],
                    "cuda": torch.version.cuda, "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None})
    summary = {
        "schema": SCHEMA,
        "command": command or "python -m eagle2.engine_bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "headline": {"non_forward_ms_per_cycle_paper_tree": paper["ms_non_forward"],
                     "non_forward_ms_per_cycle_auto": auto["ms_non_forward"],
                     "non_forward_cpu_ms_per_cycle_paper_tree": paper["cpu_ms"]["non_forward"],
                     "non_forward_cpu_ms_per_cycle_auto": auto["cpu_ms"]["non_forward"],
                     "ms_per_cycle_paper_tree": paper["ms_per_cycle"], "tau_paper_tree": paper["tau"]},
        "policies": results,
        "config": {"device": str(dev), "dtype": "float32", "greedy": True, "cycles_per_prompt": cycles,
                   "repeats": repeats, "prompts": len(ids_list), "prompt_lengths": [len(i) for i in ids_list],
                   "warmup_tokens": warmup_tokens, "quick": quick, "tiny": spec, "paper_tree": PAPER_TREE,
                   "latency": ({"sizes": latency.sizes, "ms": [1e3 * t for t in latency.seconds]}
                               if latency is not None else None),
                   "cpu_share_while_timing": cpu_share, "wall_s": time.perf_counter() - t_start},
        "machine": machine,
    }
    if prof is not None:
        summary["profile_paper_tree"] = prof
    if sweep:
        summary["sweep"] = size_sweep(results, sweep)
    summary = _round(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def format_table(summary: dict) -> str:
    head = ("| policy | cycles | τ | tree | ms/cycle | unhooked | target fwd | head fwd | non-fwd | "
            "draft host | commit host | verify host | update | loop | decode draft/verify/update | CPU: cycle / non-fwd |")
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for name, r in summary["policies"].items():
        s, d = r["non_forward_split_ms"], r["decode_split_ms"]
        lines.append(
            f"| {name} | {r['cycles']} | {r['tau']:.2f} | {r['mean_tree_size']:.1f} | {r['ms_per_cycle']:.2f} | "
            f"{r['ms_per_cycle_unhooked']:.2f} | {r['ms_target_forward']:.2f} | {r['ms_head_forward']:.2f} | "
            f"**{r['ms_non_forward']:.2f}** | {s['draft_host']:.2f} | {s['commit_host']:.2f} | "
            f"{s['verify_host']:.2f} | {s['update']:.2f} | {s['loop']:.2f} | "
            f"{d['draft']:.2f} / {d['verify']:.2f} / {d['update']:.2f} | "
            f"{r['cpu_ms']['per_cycle']:.2f} / {r['cpu_ms']['non_forward']:.2f} |")
    h = summary["headline"]
    m = summary["machine"]
    lines.append("")
    lines.append(f"non-forward ms per cycle at the paper's tree: {h['non_forward_ms_per_cycle_paper_tree']:.2f} "
                 f"(auto: {h['non_forward_ms_per_cycle_auto']:.2f}; in CPU time "
                 f"{h['non_forward_cpu_ms_per_cycle_paper_tree']:.2f} and {h['non_forward_cpu_ms_per_cycle_auto']:.2f}) "
                 f"on {m['device_name']}, torch {m['torch']}, "
                 f"{m['torch_threads']} thread(s); all figures ms per decode cycle, medians of "
                 f"{summary['config']['repeats']} repeat(s)")
    share = summary["config"].get("cpu_share_while_timing")
    if share is not None and summary["config"].get("device") == "cpu" and m.get("torch_threads") == 1 and share < 0.9:
        lines.append(f"warning: the benchmark got {share:.0%} of a core while timing (another process shared it): "
                     "the figures are inflated")
    bad = [n for n, r in summary["policies"].items() if not r["identical_to_vanilla"]]
    lines.append("lossless: every policy's tokens equal vanilla's" if not bad
                 else f"NOT LOSSLESS: {', '.join(bad)} differ from vanilla")
    return "\n".join(lines)


def size_sweep(results: dict, sizes) -> dict:
    """Tokens per second (unhooked) of the fixed sizes against the auto size: is auto within a
    few percent of the best fixed tree?"""
    rate = {n: 1e3 * r["tau"] / r["ms_per_cycle_unhooked"] for n, r in results.items()}
    fixed = {f"eagle2@total={n}": rate[f"eagle2@total={n}"] for n in sizes}
    fixed["eagle2-paper"] = rate["eagle2-paper"]
    best = max(fixed, key=fixed.get)
    return {"tokens_per_s": {**fixed, "eagle2-auto": rate["eagle2-auto"]}, "best_fixed": best,
            "auto_vs_best_fixed": rate["eagle2-auto"] / fixed[best]}


def build_parser() -> argparse.ArgumentParser:
    from .cli import OneLineParser, int_at_least, positive_int

    p = OneLineParser(prog="python -m eagle2.engine_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (summary.json); default runs/engine-bench-DATE-TIME")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cycles", type=positive_int, default=32, help="decode cycles per prompt and repeat (about)")
    p.add_argument("--repeats", type=positive_int, default=5, help="medians over this many repeats")
    p.add_argument("--prompts", type=positive_int, default=3, choices=range(1, len(PROMPT_LENGTHS) + 1),
                   metavar=f"1..{len(PROMPT_LENGTHS)}", help=f"random prompts of {PROMPT_LENGTHS} tokens")
    p.add_argument("--vocab", type=int_at_least(64), default=TINY["vocab"],
                   help="the tiny target's vocabulary (top-k and log-softmax over it are host-side work; "
                        "SmolLM2's is 49152)")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="one prompt, one repeat, a few cycles (seconds; for tests)")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile the paper's tree (after the timed runs): DIR/profile.txt and the summary")
    p.add_argument("--save-tiny", default=None, metavar="DIR",
                   help="only save the tiny target (+ tokenizer) and head as DIR/target and DIR/head, then exit")
    p.add_argument("--sweep", default="", metavar="N,N,...",
                   help="also time EAGLE-2 at these total_tokens (the paper's top_k 10, depth 6) and compare the "
                        "auto size with the best of them")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--sweep takes sizes like 4,8,16, got {text!r}") from None
    from .tree import max_candidates

    cap = max_candidates(PAPER_TREE["top_k"], PAPER_TREE["depth"])
    if any(n < 1 or n > cap for n in sizes):
        raise ValueError(f"--sweep sizes must be in 1..{cap} (what a top_k 10, depth 6 expansion holds)")
    return sizes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a one-line usage error (exit 2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    from .cli import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tiny = {"vocab": args.vocab}
        if args.save_tiny:
            print(json.dumps(save_tiny(args.save_tiny, tiny)))
            return 0
        out = args.out or f"runs/engine-bench-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run(out, args.device, args.cycles, args.repeats, args.prompts, quick=args.quick,
                      quiet=args.no_progress, command=shlex.join(["python", "-m", "eagle2.engine_bench", *argv]),
                      profile=args.profile, tiny=tiny, sweep=parse_sizes(args.sweep))
    except ValueError as e:
        print(f"engine bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary))
    if "profile_paper_tree" in summary:
        print("\n" + format_profile(summary["profile_paper_tree"], 10))
    if "sweep" in summary:
        sw = summary["sweep"]
        print("\nsize sweep, tokens/s: " + ", ".join(f"{n} {v:.0f}" for n, v in sw["tokens_per_s"].items())
              + f"; auto / best fixed ({sw['best_fixed']}) = {sw['auto_vs_best_fixed']:.3f}")
    print(f"\nwrote {Path(out) / 'summary.json'}" + (" and profile.txt" if args.profile else ""))
    return 0 if all(r["identical_to_vanilla"] for r in summary["policies"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
