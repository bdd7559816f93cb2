"""The decode loop: prefill → draft a tree → verify it in one target forward → accept → compact.

    seq ── policy.draft ──> DraftTree ── target(tree mask) ──> logits ── accept ──> path + bonus
     ^                                                                                 │
     └──────────── keep only the accepted path in the target's and drafter's caches ◄──┘

Observers are told what happened and never change a token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from . import cache as kv
from .policies import Policy, Vanilla
from .trace import ExpansionStep, Observer, RerankStep, Timings, Verification, VerifiedNode
from .tree import DraftTree
from .verify import Verdict, check_sampling, greedy_accept, sample_accept, target_probs


@dataclass
class CycleStats:
    tree_size: int  # drafted nodes verified
    accepted: int  # drafted tokens accepted
    new_tokens: int  # tokens emitted (accepted + bonus, cut at EOS / the budget)
    draft_s: float
    verify_s: float
    update_s: float


@dataclass
class GenerationResult:
    prompt_tokens: list[int]
    tokens: list[int]  # new tokens, the first one from the prefill
    origins: list[str]  # per token: "target" (prefill or bonus) or "draft" (accepted draft)
    token_cycles: list[int]  # per token: the cycle that emitted it (-1 = prefill)
    cycles: list[CycleStats] = field(default_factory=list)
    prefill_s: float = 0.0
    seconds: float = 0.0
    stop_reason: str = "length"
    policy: dict = field(default_factory=dict)
    text: str = ""

    @property
    def target_forwards(self) -> int:
        return 1 + len(self.cycles)

    @property
    def tau(self) -> float:
        """New tokens per target forward (1.0 for vanilla decoding)."""
        return len(self.tokens) / self.target_forwards

    @property
    def mean_accepted(self) -> float:
        """Mean tokens per drafting cycle, EAGLE's τ (accepted drafts + the bonus token)."""
        return sum(c.new_tokens for c in self.cycles) / max(1, len(self.cycles))

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        draft = sum(c.draft_s for c in self.cycles)
        verify = sum(c.verify_s for c in self.cycles)
        update = sum(c.update_s for c in self.cycles)
        return {
            "new_tokens": len(self.tokens), "cycles": len(self.cycles), "tau": round(self.tau, 4),
            "mean_accepted": round(self.mean_accepted, 4), "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 3), "prefill_s": round(self.prefill_s, 4),
            "draft_s": round(draft, 4), "verify_s": round(verify, 4), "update_s": round(update, 4),
            "stop_reason": self.stop_reason, **self.policy,
        }


class Observers(Observer):
    """Fan-out to several observers; falsy when nobody wants records (so none are built)."""

    def __init__(self, observers):
        self.all = [o for o in observers if o is not None]
        self.recording = [o for o in self.all if o.wants_records]

    def __bool__(self) -> bool:
        return bool(self.recording)

    def on_start(self, *a):
        for o in self.all:
            o.on_start(*a)

    def on_expand(self, *a):
        for o in self.recording:
            o.on_expand(*a)

    def on_rerank(self, *a):
        for o in self.recording:
            o.on_rerank(*a)

    def on_verify(self, *a):
        for o in self.recording:
            o.on_verify(*a)

    def on_tokens(self, *a):
        for o in self.all:
            o.on_tokens(*a)

    def on_cycle_end(self, *a):
        for o in self.all:
            o.on_cycle_end(*a)

    def on_finish(self, *a):
        for o in self.all:
            o.on_finish(*a)


def target_forward(model, tokens: torch.Tensor, cache, position_ids=None, attention_mask=None,
                   feature_layers: tuple[int, ...] | None = None):
    """One forward of the unmodified HF model: returns (features, logits), both (T, ·). Features
    are the last hidden states or, with feature_layers (EAGLE-3), the concatenated
    `hidden_states[i]` (the inputs of those layers)."""
    out = model.model(input_ids=tokens[None], position_ids=position_ids, attention_mask=attention_mask,
                      cache=cache, use_cache=True, output_hidden_states=feature_layers is not None)
    hidden = out.last_hidden_state[0]
    if feature_layers is None:
        return hidden, model.lm_head(hidden)
    feats = torch.cat([out.hidden_states[i][0] for i in feature_layers], dim=-1)
    return feats, model.lm_head(hidden)


def context_limit(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


def check_request(model, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len < 1:
        raise ValueError("prompt is empty")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    limit = context_limit(model)
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {limit} tokens")


@torch.inference_mode()
def generate(
    model,
    input_ids,
    policy: Policy | None = None,
    drafter=None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    sample_top_k: int = 0,
    seed: int | None = None,
    eos_token_ids=(),
    observers=(),
    meta: dict | None = None,
) -> GenerationResult:
    """Speculative decoding with a draft tree. `policy=Vanilla()` gives plain decoding."""
    policy = policy or Vanilla()
    check_sampling(temperature, top_p, sample_top_k)
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    check_request(model, ids.numel(), max_new_tokens)
    if policy.needs_drafter and drafter is None:
        raise ValueError(f"policy {policy.name!r} needs a drafter (an EAGLE head or a draft model)")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = ids.to(device)
    eos = set(int(e) for e in eos_token_ids)
    # a policy that is also an Observer (e.g. autotree.AutoEagle2) learns the cycle timings
    obs = Observers([*observers, policy] if isinstance(policy, Observer) and policy not in observers else observers)
    sampling = temperature > 0
    gen = None
    if sampling:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))

    def choose(logits_row: torch.Tensor) -> int:
        if not sampling:
            return int(logits_row.argmax())
        return int(torch.multinomial(target_probs(logits_row, temperature, top_p, sample_top_k), 1, generator=gen))

    t_start = time.perf_counter()
    cache = DynamicCache()
    layers = drafter.feature_layers if drafter is not None and policy.needs_drafter else None
    hidden, logits = target_forward(model, ids, cache, feature_layers=layers)
    first = choose(logits[-1])
    prefill_s = time.perf_counter() - t_start
    result = GenerationResult(ids.tolist(), [first], ["target"], [-1], prefill_s=prefill_s,
                              policy=policy.describe())
    obs.on_start(dict(meta or {}, **policy.describe()), result.prompt_tokens, first)
    obs.on_tokens(-1, [first], ["target"])
    seq = torch.cat([ids, torch.tensor([first], device=device)])
    done = first in eos or max_new_tokens == 1
    result.stop_reason = "eos" if first in eos else "length"

    commit_s = 0.0
    root_logprobs = None
    if not done and policy.needs_drafter:
        drafter.reset()
        t = time.perf_counter()
        root_logprobs = drafter.commit(seq, hidden if drafter.needs_features else None)
        commit_s = time.perf_counter() - t

    cycle = 0
    while not done:
        prefix = seq.numel() - 1  # the root (newest token) is not in the target's cache yet
        root = int(seq[-1])
        t0 = time.perf_counter()
        tree = policy.draft(root, root_logprobs, drafter, obs or None, cycle)
        t1 = time.perf_counter()
        mask = tree.attention_mask(prefix, dtype, device) if len(tree) > 1 else None
        hidden, logits = target_forward(model, tree.tokens.to(device), cache,
                                        tree.position_ids(prefix, device), mask, layers)
        t2 = time.perf_counter()
        if sampling:
            probs = target_probs(logits, temperature, top_p, sample_top_k)
            verdict = sample_accept(tree, probs, gen)
        else:
            probs = None
            verdict = greedy_accept(tree, logits)
        if obs:
            obs.on_verify(cycle, _verification_record(tree, logits, probs, verdict))

        tokens = tree.tokens[verdict.path[1:]].tolist() + [verdict.bonus]
        origins = ["draft"] * (len(tokens) - 1) + ["target"]
        for i, tok in enumerate(tokens):  # never emit past EOS or the budget
            if tok in eos or len(result.tokens) + i + 1 >= max_new_tokens:
                result.stop_reason = "eos" if tok in eos else "length"
                tokens, origins, done = tokens[: i + 1], origins[: i + 1], True
                break
        result.tokens += tokens
        result.origins += origins
        result.token_cycles += [cycle] * len(tokens)
        obs.on_tokens(cycle, tokens, origins)
        seq = torch.cat([seq, torch.tensor(tokens, device=device)])
        if not done:
            kv.keep_prefix_and(cache, prefix, verdict.path)
        t3 = time.perf_counter()
        stats = CycleStats(len(tree) - 1, len(verdict.path) - 1, len(tokens), commit_s + (t1 - t0), t2 - t1, t3 - t2)
        result.cycles.append(stats)
        obs.on_cycle_end(cycle, root, Timings(stats.draft_s, stats.verify_s, stats.update_s))
        cycle += 1
        if not done and policy.needs_drafter:
            t = time.perf_counter()
            feats = hidden[verdict.path] if drafter.needs_features else None
            root_logprobs = drafter.commit(seq, feats)
            commit_s = time.perf_counter() - t

    result.seconds = time.perf_counter() - t_start
    obs.on_finish(result.summary())
    return result


def _verification_record(tree: DraftTree, logits: torch.Tensor, probs, verdict: Verdict) -> Verification:
    """What the target thought of every node (only built when someone records)."""
    p = probs if probs is not None else torch.softmax(logits.float(), dim=-1)
    top_p, top_tok = p.max(dim=-1)
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    par_idx = tree.parents.clamp_min(0)
    tok_p = p[par_idx, tree.tokens].tolist()
    on_path, rejected = set(verdict.path), set(verdict.rejected)
    values = tree.log_values.exp().tolist()
    depths = tree.depths.tolist()
    top_p_l, top_tok_l = top_p.tolist(), top_tok.tolist()
    nodes = []
    for i in range(len(tree)):
        status = "root" if i == 0 else "accepted" if i in on_path else "rejected" if i in rejected else "unreached"
        par = parents[i]
        nodes.append(VerifiedNode(
            node=i, candidate=tree.candidate_ids[i], token=tokens[i], parent=par, depth=depths[i],
            draft_value=values[i], target_prob=tok_p[i] if i else 1.0,
            target_top_token=top_tok_l[par] if i else top_tok_l[0],
            target_top_prob=top_p_l[par] if i else top_p_l[0], status=status))
    return Verification(nodes, list(verdict.path), int(verdict.bonus))


@torch.inference_mode()
def hf_generate(model, input_ids, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                sample_top_k: int = 0, seed: int | None = None, eos_token_ids=(),
                prompt_lookup: int | None = None) -> GenerationResult:
    """HF `generate()` as a baseline (prompt_lookup=N turns on prompt lookup decoding)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
    check_request(model, ids.shape[1], max_new_tokens)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, eos_token_id=list(eos_token_ids) or None,
                  pad_token_id=(list(eos_token_ids) or [0])[0])
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=sample_top_k)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    eos = set(eos_token_ids)
    stop = "eos" if new and new[-1] in eos else "length"
    return GenerationResult(ids[0].tolist(), new, ["target"] * len(new), [-1] * len(new), seconds=seconds,
                            stop_reason=stop, policy={"policy": "pld" if prompt_lookup else "hf"})
